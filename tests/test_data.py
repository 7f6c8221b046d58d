"""The IDX reader and the data sources, on the real files and on broken copies of them."""

import gzip
import hashlib
import io
import urllib.request

import numpy as np
import pytest
import torch

from genlab import data
from genlab.data import DATASETS, DataError, IdxFile, load_split, read_idx


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
def test_real_files_read_and_verify(dataset):
    x, y = load_split(dataset, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64
    xt, yt = load_split(dataset, "test")
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert set(np.unique(y)) == set(range(10))
    if dataset == "fashion-mnist":  # 6,000 / 1,000 per class (SPEC Data)
        assert (np.bincount(y) == 6000).all() and (np.bincount(yt) == 1000).all()


def test_known_pixels_of_first_training_image():
    """First FashionMNIST training image is an ankle boot (label 9); first MNIST one a 5."""
    x, y = load_split("fashion-mnist", "train")
    assert y[0] == 9 and x[0].max() == 255
    xm, ym = load_split("mnist", "train")
    assert ym[:5].tolist() == [5, 0, 4, 1, 9]


def test_roundtrip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx(array)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    expected = IdxFile("a", (2, 3, 4), hashlib.sha256(raw).hexdigest())
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte", expected), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz", expected), array)


def test_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))  # dtype 0x0d (float) is not uint8
    with pytest.raises(DataError, match="wrong magic number.*x-idx3-ubyte|x-idx3-ubyte.*wrong magic number"):
        read_idx(path)


def test_truncated_file_is_refused(tmp_path):
    raw = _idx(np.zeros((5, 28, 28), np.uint8))
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_truncated_gzip_is_refused(tmp_path):
    buf = io.BytesIO()
    with gzip.open(buf, "wb") as f:
        f.write(_idx(np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "t-idx3-ubyte.gz"
    path.write_bytes(buf.getvalue()[:-20])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(path)


def test_wrong_count_is_refused(tmp_path):
    raw = _idx(np.zeros((5, 28, 28), np.uint8))
    path = tmp_path / "c-idx3-ubyte"
    path.write_bytes(raw)
    expected = IdxFile("c", (60000, 28, 28), hashlib.sha256(raw).hexdigest())
    with pytest.raises(DataError, match=r"shape \(5, 28, 28\), expected \(60000, 28, 28\)"):
        read_idx(path, expected)


def test_checksum_mismatch_is_refused(tmp_path):
    """A real file with one pixel changed keeps its shape but fails the SHA-256 check."""
    spec = DATASETS["fashion-mnist"].files["test-labels"]
    raw = bytearray(gzip.open(data.find_file("fashion-mnist", "test-labels")).read())
    raw[-1] = (raw[-1] + 1) % 10
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="SHA-256"):
        read_idx(path, spec)


def test_data_dir_is_used_and_checked(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_split("fashion-mnist", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match="not found in --data-dir"):
        load_split("mnist", "test", data_dir=tmp_path / "empty")


def test_failed_download_leaves_no_partial_file(tmp_path, monkeypatch):
    """A download that breaks off mid-stream leaves nothing in the cache and names the fix."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    class Broken(io.BytesIO):
        def read(self, *args):
            raise OSError("connection reset")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Broken())
    with pytest.raises(DataError, match="download failed.*make data"):
        data.find_file("mnist", "test-labels")
    cache = tmp_path / "genlab" / "mnist"
    assert list(cache.iterdir()) == []


def test_bad_download_is_not_cached(tmp_path, monkeypatch):
    """A download with the wrong content fails verification and is removed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    payload = gzip.compress(_idx(np.zeros((10000,), np.uint8)))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    with pytest.raises(DataError, match="SHA-256"):
        data.find_file("mnist", "test-labels")
    assert list((tmp_path / "genlab" / "mnist").iterdir()) == []


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("cifar10")
    with pytest.raises(DataError, match="unknown split"):
        load_split("mnist", "validation")


def test_tensor_loaders_scale_flatten_and_take_prefixes():
    """The experiments' loaders against the stored bytes: the first MNIST training digits, scaled."""
    images, _ = load_split("mnist", "train")
    stored = torch.from_numpy(images[:5].reshape(5, 784).copy())  # uint8
    x, y = data.load_flat("mnist", "train", limit=5)
    assert x.shape == (5, 784) and x.dtype == torch.float32 and y.tolist() == [5, 0, 4, 1, 9]
    assert torch.equal(torch.round(x * 255).to(torch.uint8), stored) and x.max() == 1.0
    standardised, _ = data.load_flat("mnist", "train", limit=5, mean=0.5, std=0.25)
    torch.testing.assert_close(standardised, (x - 0.5) / 0.25)
    assert torch.equal(data.load_pixels("mnist", "train", limit=5), stored)
    signed = data.load_images("mnist", "train")  # (60000, 1, 28, 28)
    assert signed.shape == (60000, 1, 28, 28) and signed.min() == -1.0 and signed.max() == 1.0
    torch.testing.assert_close(signed[:5].flatten(1), stored.float() / 127.5 - 1)


def test_binarised_split_is_one_fixed_draw_whose_prefix_is_the_limit():
    full = data.load_binarised("mnist", "test", seed=0)  # (10000, 784)
    probs = torch.from_numpy(load_split("mnist", "test")[0].reshape(-1, 784).copy()).float() / 255
    assert full.shape == (10000, 784) and set(full.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(data.load_binarised("mnist", "test", seed=0, limit=7), full[:7])
    assert not torch.equal(data.load_binarised("mnist", "test", seed=1), full)
    assert full[probs == 0].max() == 0 and full[probs == 1].min() == 1  # Bernoulli(0) and Bernoulli(1)
    grey = (probs > 0.2) & (probs < 0.4)  # 152,672 pixels: a draw, not a threshold, turns ~30 % of them on
    assert abs(full[grey].mean().item() - probs[grey].mean().item()) < 0.01
