"""The machinery every experiment shares: config, seeding, run directory, metrics,
checkpoints and RNG state.

A run directory looks like::

    runs/dcgan__42__20261122-101500/
        config.json         resolved config
        env.json            versions, device, seed, git commit, host
        metrics/steps.jsonl per-step scalars   metrics/epochs.csv per-epoch scalars
        tb/                 TensorBoard events
        checkpoints/last.pt whole training state (see :func:`save_checkpoint`)
        figures/            plots and image grids
        summary.md          what the run produced, written at the end
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import functools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "RunConfig",
    "RunDir",
    "TrainingDiverged",
    "resolve_device",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "config_to_dict",
]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunConfig:
    """Options every training experiment takes."""

    seed: int = 42
    """Random seed; the same seed on the same device gives the same losses."""
    out: Path | None = None
    """Run directory (default: runs/{experiment}__{seed}__{time})."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    epochs: int = 1
    """Passes over the training set."""
    data_dir: Path | None = None
    """Folder holding the official IDX files (overrides GENLAB_DATA_DIR and the defaults)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (for smoke runs)."""
    deterministic: bool = False
    """On CUDA, use only deterministic kernels (cuDNN, cuBLAS), so a seed repeats bit for bit; slower.
    CPU runs repeat without it."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out RUN_DIR: the run directory to continue")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-able primitives (Paths become strings)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        out[field.name] = str(value) if isinstance(value, Path) else value
    return out


def config_from_dict(config_cls: type, saved: dict[str, Any], path_keys: tuple[str, ...] = ("data_dir",),
                     tuple_keys: tuple[str, ...] = (), **overrides: Any) -> Any:
    """Rebuild a ``config_cls`` dataclass from ``saved`` (a checkpoint's :func:`config_to_dict`).

    Keys ``config_cls`` no longer has are dropped; the non-empty ``path_keys`` become Paths
    again and the ``tuple_keys`` present become tuples; then ``overrides`` (e.g. ``out=run_path,
    resume=True``) are applied before the dataclass is built (and validated).
    """
    fields = {k: v for k, v in saved.items() if k in config_cls.__dataclass_fields__}
    for key in path_keys:
        if fields.get(key):
            fields[key] = Path(fields[key])
    for key in tuple_keys:
        if key in fields:
            fields[key] = tuple(fields[key])
    fields.update(overrides)
    return config_cls(**fields)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu. Raises ValueError for cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def use_deterministic_algorithms(enabled: bool) -> None:
    """Deterministic CUDA kernels or not (PyTorch docs, "Reproducibility"): sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read when cuBLAS starts), turns off cuDNN's benchmark
    autotuning and makes ``torch.use_deterministic_algorithms`` raise on an op that has no
    deterministic implementation. A no-op on results on the CPU, whose kernels are deterministic."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and primitives only (``weights_only`` loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`. The states may come back on any device (a checkpoint loaded
    with ``map_location="cuda"``): torch takes RNG states as CPU byte tensors only."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: to a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous checkpoint intact. ``state`` must hold only
    tensors, containers and primitives so that :func:`load_checkpoint` can use
    ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from pickles).

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (the message says how to start fresh).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; drop --resume to start a new run")
    return torch.load(path, map_location=map_location, weights_only=True)


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    """Versions, device, seed and commit, for env.json and the report."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("genlab", "torch", "numpy", "torchmetrics", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_isa": cpu_isa(),
        "device": str(device),
        "seed": seed,
        "git_commit": _git_commit(),
        "versions": versions,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if device.type == "cuda" or cpu_isa() != "none":
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        env["bf16_over_fp32_gemm"] = round(bf16_speedup(device), 2)  # what --precision auto went by
    return env


def _number(text: str) -> int | float:
    """A CSV cell back to the int or float it was written from."""
    try:
        return int(text)
    except ValueError:
        return float(text)


class RunDir:
    """A run directory: config, environment, metrics (JSONL, CSV, TensorBoard), checkpoints.

    Args:
        experiment: registry name, used in the default directory name.
        config: the experiment's config dataclass (a :class:`RunConfig` subclass).
        device: the resolved device, recorded in env.json.
    """

    def __init__(self, experiment: str, config: RunConfig, device: torch.device):
        if config.out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            config.out = Path("runs") / f"{experiment}__{config.seed}__{stamp}"
        self.path = Path(config.out)
        if not config.resume and (self.path / "checkpoints" / "last.pt").exists():
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        self.experiment = experiment
        use_deterministic_algorithms(getattr(config, "deterministic", False))
        for sub in ("metrics", "checkpoints", "figures"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(json.dumps({"experiment": experiment, **config_to_dict(config)}, indent=2))
        (self.path / "env.json").write_text(json.dumps(environment(device, config.seed), indent=2))
        self.checkpoint = self.path / "checkpoints" / "last.pt"
        self._tb = None

    @property
    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def truncate_metrics(self, step: int, epoch: int) -> None:
        """On resume: drop metric rows written after the checkpoint (step, epoch)."""
        steps = self.path / "metrics" / "steps.jsonl"
        if steps.exists():
            rows = [line for line in steps.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            steps.write_text("".join(r + "\n" for r in rows))
        epochs = self.path / "metrics" / "epochs.csv"
        if epochs.exists():
            with epochs.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epoch]
            epochs.unlink()
            for r in rows:
                self.log_epoch({k: _number(v) for k, v in r.items()}, tensorboard=False)

    def log_steps(self, rows: list[dict[str, float]]) -> None:
        """Append per-step scalars (each row has ``step``) to steps.jsonl and TensorBoard."""
        with (self.path / "metrics" / "steps.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for row in rows:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"steps/{key}", value, row["step"])

    def log_epoch(self, row: dict[str, float], tensorboard: bool = True) -> None:
        """Append one per-epoch row (with ``epoch``) to epochs.csv and TensorBoard."""
        path = self.path / "metrics" / "epochs.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if tensorboard:
            for key, value in row.items():
                if key != "epoch":
                    self.tensorboard.add_scalar(f"epochs/{key}", value, row["epoch"])
            self.tensorboard.flush()

    def read_epochs(self) -> list[dict[str, float]]:
        path = self.path / "metrics" / "epochs.csv"
        if not path.exists():
            return []
        with path.open() as f:
            return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        path = self.path / name
        path.write_text(json.dumps(data, indent=2))
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def cpu_isa() -> str:
    """The CPU's bf16 matrix ISA as torch sees it: ``"amx_bf16"``, ``"avx512_bf16"`` or ``"none"``.

    A flag probe only: it says what the CPU has, not what the kernels use (``ONEDNN_MAX_CPU_ISA``
    and ``ATEN_CPU_CAPABILITY`` can cap them); :func:`bf16_speedup` measures that.
    """
    try:
        if torch.cpu._is_amx_tile_supported():
            return "amx_bf16"
        if torch.cpu._is_avx512_bf16_supported():
            return "avx512_bf16"
    except AttributeError:  # older torch
        pass
    return "none"


def gemm_flops(dtype: torch.dtype, device: torch.device, n: int = 1024, repeats: int = 5,
               give_up_after_s: float = float("inf")) -> float:
    """Measured FLOP/s of an (n x n) @ (n x n) product in ``dtype`` on ``device``: the best of
    ``repeats`` timed products after one warm-up (2 n^3 FLOPs each). A warm-up product slower
    than ``give_up_after_s`` seconds is returned as the measurement (emulated kernels)."""
    import time

    rng = torch.Generator(device).manual_seed(0)  # its own stream: timing must not move a run's draws
    a = torch.randn(n, n, device=device, generator=rng).to(dtype)
    b = torch.randn(n, n, device=device, generator=rng).to(dtype)
    if device.type == "cuda":  # the first product of a dtype starts cuBLAS and picks its kernel
        torch.mm(a, b)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if i == 0 and seconds > give_up_after_s:
            return 2 * n**3 / seconds
        if i:  # the first product is a warm-up (kernel selection, page faults)
            best = min(best, seconds)
    return 2 * n**3 / best


#: bf16 is chosen by ``--precision auto`` only where its measured GEMM rate is at least this
#: many times the float32 rate. Native bf16 measures 2.8x (AVX512-BF16, Zen 4) to 8.5x (AMX);
#: emulated bf16 (ISA capped to AVX2, CPUs without bf16) measures below 1x. A threshold far
#: from both keeps the choice the same from run to run on one machine.
BF16_MIN_SPEEDUP = 1.5


@functools.lru_cache(maxsize=None)
def bf16_speedup(device: torch.device) -> float:
    """Measured bf16 / float32 GEMM throughput ratio on ``device`` (cached per process).

    On CUDA: 0 below compute capability 8.0 (no bf16 tensor cores; ``torch.cuda.is_bf16_supported``
    counts emulated bf16 on a T4 or V100 as supported), else the measured ratio.
    """
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return 0.0
    n = 768 if device.type == "cpu" else 4096
    with torch.no_grad():
        fp32 = gemm_flops(torch.float32, device, n, repeats=10)
        # an emulated bf16 product runs at a few % of float32: stop after one such product
        return gemm_flops(torch.bfloat16, device, n, repeats=10, give_up_after_s=20 * 2 * n**3 / fp32) / fp32


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matrix work is native and fast: :func:`bf16_speedup` >= :data:`BF16_MIN_SPEEDUP`.

    Measured rather than read off CPU flags, so a CPU whose kernels run bf16 emulated (no
    AVX512-BF16/AMX, or the ISA capped by ``ONEDNN_MAX_CPU_ISA``) trains in float32. The flag probe
    comes first so that CPUs without bf16 instructions pay no measurement.
    """
    if device.type == "cpu" and cpu_isa() == "none":
        return False
    if device.type == "cuda" and device.index is None:  # one cache entry per GPU: "cuda" is "cuda:0"
        device = torch.device("cuda", torch.cuda.current_device())
    return bf16_speedup(device) >= BF16_MIN_SPEEDUP


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """torch.bfloat16 for ``precision`` "bf16", or "auto" where :func:`bf16_supported`; else torch.float32."""
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    return torch.bfloat16 if use_bf16 else torch.float32


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` where :func:`compute_dtype` says bf16; else a no-op."""
    enabled = compute_dtype(device, precision) == torch.bfloat16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
