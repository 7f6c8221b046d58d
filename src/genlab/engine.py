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
import fcntl
import functools
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from genlab import distributed
from genlab.errors import ConfigError, GenlabError
from genlab.record import Figure, Record, run_figures

__all__ = [
    "RunConfig",
    "DataConfig",
    "EpochsConfig",
    "RunDir",
    "Run",
    "CHECKPOINT_SCHEMA",
    "TrainingDiverged",
    "resolve_device",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "config_to_dict",
    "config_from_dict",
    "read_checkpoint",
    "reopen",
    "run_once",
]


class TrainingDiverged(GenlabError, RuntimeError):
    """A loss became NaN or infinite (exit status 1); the message says whether a checkpoint is kept."""

    exit_code = 1


@dataclass
class RunConfig:
    """Options every experiment takes."""

    seed: int = 42
    """Random seed; the same seed on the same device gives the same losses."""
    out: Path | None = None
    """Run directory (default: runs/{experiment}__{seed}__{time})."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    max_steps: int | None = None
    """Stop after this many optimiser steps in total (for smoke runs)."""
    deterministic: bool = False
    """On CUDA, use only deterministic kernels (cuDNN, cuBLAS), so a seed repeats bit for bit; slower.
    CPU runs repeat without it."""

    CONTINUABLE: ClassVar[tuple[str, ...]] = ("out", "resume", "epochs", "max_steps", "device", "data_dir")
    """Options that may change when a run is continued with --resume (extend a run, move it to
    another device, find the data elsewhere); every other option defines the run and must keep
    its saved value."""

    def require(self, minimum: float, *names: str, above: bool = False) -> None:
        """Raise ConfigError naming the first option of ``names`` (field names) whose value is below
        ``minimum`` (with ``above``: not above it) and the value given; None (unset) passes."""
        for name in names:
            value = getattr(self, name)
            if value is not None and (value <= minimum if above else value < minimum):
                raise ConfigError(f"--{name.replace('_', '-')} must be {'>' if above else '>='} {minimum:g}, "
                                  f"got {value}")

    def __post_init__(self) -> None:
        self.require(1, "max_steps")
        if self.resume and self.out is None:
            raise ConfigError("--resume needs --out RUN_DIR: the run directory to continue")


@dataclass
class DataConfig(RunConfig):
    """Options of an experiment that reads a dataset from files."""

    data_dir: Path | None = None
    """Folder holding the dataset files (overrides GENLAB_DATA_DIR and the defaults)."""


@dataclass
class EpochsConfig(DataConfig):
    """Options of an experiment that trains in passes over its dataset."""

    epochs: int = 1
    """Passes over the training set."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-able primitives (Paths become strings)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        out[field.name] = str(value) if isinstance(value, Path) else value
    return out


def config_from_dict(config_cls: type, saved: dict[str, Any], **overrides: Any) -> Any:
    """Rebuild a ``config_cls`` dataclass from ``saved`` (a checkpoint's :func:`config_to_dict`).

    Keys ``config_cls`` no longer has are dropped; by the field's type, a list becomes a tuple
    again (``tuple[...]`` fields) and a non-empty string a Path (``Path`` and ``Path | None``
    fields); then ``overrides`` (e.g. ``out=run_path, resume=True``) are applied before the
    dataclass is built (and validated).
    """
    hints = typing.get_type_hints(config_cls)
    fields = {k: v for k, v in saved.items() if k in config_cls.__dataclass_fields__}
    for key, value in fields.items():
        if isinstance(value, list) and _admits(hints[key], tuple):
            fields[key] = tuple(value)
        elif isinstance(value, str) and value and _admits(hints[key], Path):
            fields[key] = Path(value)
    fields.update(overrides)
    return config_cls(**fields)


def _admits(hint: Any, kind: type) -> bool:
    """Whether the type ``hint`` is ``kind`` (or ``kind[...]``), alone or in a union such as ``kind | None``."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return any(h is kind or typing.get_origin(h) is kind for h in (typing.get_args(hint) if union else (hint,)))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu. Raises ValueError for cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def use_deterministic_algorithms(enabled: bool) -> None:
    """Deterministic CUDA kernels or not (PyTorch docs, "Reproducibility"): sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read when cuBLAS starts), turns off cuDNN's benchmark
    autotuning and makes ``torch.use_deterministic_algorithms`` raise on an op that has no
    deterministic implementation. A no-op on results on the CPU, whose kernels are deterministic.
    torch's switch is flipped only when it changes: it imports ``torch._inductor`` (seconds)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = enabled
    if torch.are_deterministic_algorithms_enabled() != enabled:
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
        GenlabError: no checkpoint at ``path`` (the message says how to start fresh).
    """
    path = Path(path)
    if not path.exists():
        raise GenlabError(f"{path}: no checkpoint to resume from; drop --resume to start a new run")
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
        **distributed_environment(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if device.type == "cuda" or cpu_isa() != "none":
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        env["bf16_over_fp32_gemm"] = round(bf16_speedup(device), 2)  # what --precision auto went by
    return env


def distributed_environment() -> dict[str, Any]:
    """``world_size`` (processes training the one model; 1 without torchrun) and ``backend``
    (gloo, nccl; None in one process), for env.json."""
    world = distributed.World.current()
    return {"world_size": world.size, "backend": world.backend}


def _number(text: str) -> int | float:
    """A CSV cell back to the int or float it was written from."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV file ``path``; a new file gets the first row's keys as its header."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of the CSV file ``path``, each cell a string; [] when there is no such file."""
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def check_resume(experiment: str, config: RunConfig, path: Path) -> bool:
    """Validate ``--resume`` into ``path`` before anything there changes; True if there is a run to continue.

    Returns False (after saying so) when ``path`` holds no run yet, or a run that has written no
    checkpoint: the run then starts from the beginning.

    Raises:
        GenlabError: ``path`` holds a run of another experiment (both are named), or options that
            define the run differ from the saved ones (each named with its saved and given value;
            ``config.CONTINUABLE`` lists those that may change), or ``path`` is a folder that is
            not a genlab run.
    """
    saved_file = path / "config.json"
    if not saved_file.exists():
        if path.exists() and any(path.iterdir()):
            raise GenlabError(f"{path} is not a genlab run directory (no config.json); choose another --out")
        print(f"{path}: no run to resume yet; starting it from the beginning")
        return False
    saved = json.loads(saved_file.read_text())
    if saved.get("experiment") != experiment:
        raise GenlabError(f"{path} holds a {saved.get('experiment')} run, not a {experiment} run; resume it with "
                          f"`genlab run {saved.get('experiment')} --resume --out {path}` or choose another --out")
    given = json.loads(json.dumps(config_to_dict(config)))
    changed = [(key, saved[key], value) for key, value in given.items()
               if key in saved and saved[key] != value and key not in config.CONTINUABLE]
    if changed:
        raise GenlabError(
            f"{path}: --resume would change options that define the run: "
            + "; ".join(f"--{key.replace('_', '-')} saved {old!r}, given {new!r}" for key, old, new in changed)
            + f". Drop them to continue the run (only {', '.join('--' + k.replace('_', '-') for k in config.CONTINUABLE)}"
              f" may change), or start a new run in another --out")
    checkpoints = path / "checkpoints"
    if not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))):
        print(f"{path}: no checkpoint yet; starting the run from the beginning")
        return False
    return True


class RunDir:
    """A run directory: config, environment, metrics (JSONL, CSV, TensorBoard), checkpoints.

    With ``config.resume`` the directory is validated first (:func:`check_resume`) and left
    untouched if that refuses; ``config.resume`` becomes False when there is nothing to resume.

    Args:
        experiment: registry name, used in the default directory name.
        config: the experiment's config dataclass (a :class:`RunConfig` subclass).
        device: the resolved device, recorded in env.json.
        writes: False on the data-parallel ranks other than 0 (:class:`Run`): the directory
            ``config.out`` (already validated and written by rank 0) is neither checked nor
            written, and the logging and record methods do nothing.
    """

    def __init__(self, experiment: str, config: RunConfig, device: torch.device, writes: bool = True):
        self.writes = writes
        if not writes:
            self.path, self.experiment = Path(config.out), experiment
            use_deterministic_algorithms(getattr(config, "deterministic", False))
            self.checkpoint = self.path / "checkpoints" / "last.pt"
            self._tb = None
            return
        if config.out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            config.out = Path("runs") / f"{experiment}__{config.seed}__{stamp}"
        self.path = Path(config.out)
        if config.resume:
            config.resume = check_resume(experiment, config, self.path)
        elif (self.path / "checkpoints" / "last.pt").exists():
            raise GenlabError(
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
        if not self.writes:
            return
        steps = self.path / "metrics" / "steps.jsonl"
        if steps.exists():
            rows = [line for line in steps.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            steps.write_text("".join(r + "\n" for r in rows))
        epochs = self.path / "metrics" / "epochs.csv"
        if epochs.exists():
            rows = [r for r in read_csv(epochs) if int(r["epoch"]) <= epoch]
            epochs.unlink()
            for r in rows:
                self.log_epoch({k: _number(v) for k, v in r.items()}, tensorboard=False)

    def truncate_rows(self, counts: dict[str, int]) -> None:
        """On resume: cut each metrics file ``name`` of ``counts`` (JSONL, or CSV below its header) to
        its first ``counts[name]`` rows, those written before the checkpoint. For files whose rows
        are not numbered by the run's step or epoch (:meth:`truncate_metrics`)."""
        if not self.writes:
            return
        for name, n in counts.items():
            path = self.path / "metrics" / name
            if path.exists():
                path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:n + name.endswith(".csv")]))

    def log_steps(self, rows: list[dict[str, float]]) -> None:
        """Append per-step scalars (each row has ``step``) to steps.jsonl and TensorBoard."""
        if not self.writes:
            return
        with (self.path / "metrics" / "steps.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for row in rows:
            for key, value in row.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"steps/{key}", value, row["step"])

    def log_epoch(self, row: dict[str, float], tensorboard: bool = True) -> None:
        """Append one per-epoch row (with ``epoch``) to epochs.csv and TensorBoard."""
        if not self.writes:
            return
        append_csv(self.path / "metrics" / "epochs.csv", [row])
        if tensorboard:
            for key, value in row.items():
                if key != "epoch":
                    self.tensorboard.add_scalar(f"epochs/{key}", value, row["epoch"])
            self.tensorboard.flush()

    def read_rows(self, name: str) -> list[dict[str, Any]]:
        """The rows of metrics/``name``: a ``.jsonl`` file's objects, a ``.csv`` file's rows (cells as
        strings); [] when there is no such file."""
        path = self.path / "metrics" / name
        if name.endswith(".csv"):
            return read_csv(path)
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def read_epochs(self) -> list[dict[str, float]]:
        return [{k: float(v) for k, v in r.items()} for r in read_csv(self.path / "metrics" / "epochs.csv")]

    def figures(self, captions: dict[str, str]) -> list[Figure]:
        """Every ``figures/*.png`` of the run, sorted by name, each captioned by the first entry of
        ``captions`` (file-name prefix -> caption) whose prefix its name starts with ("" if none)."""
        return run_figures(self.path, captions)

    def write_record(self, record: Record) -> Path:
        """Complete ``record`` with this run's config.json and env.json, then validate and write
        ``metrics.json`` and ``summary.md`` (:meth:`genlab.record.Record.write`)."""
        if not self.writes:
            return self.path / "metrics.json"
        record.config = json.loads((self.path / "config.json").read_text())
        record.environment = json.loads((self.path / "env.json").read_text())
        return record.write(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


CHECKPOINT_SCHEMA = "genlab.checkpoint/1"
"""The checkpoint layout :class:`Run` writes and reads (see :meth:`Run.checkpoint`)."""
CHECKPOINT_EVERY_S = 300.0
"""Default seconds between time-interval checkpoints: a kill -9 loses at most this much work."""
STOP_AFTER_STEPS_ENV = "GENLAB_STOP_AFTER_STEPS"
"""Test hook: with this set to k, a run stops at step k as on Ctrl-C (checkpoint, exit 130)."""


def _genlab_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("genlab")
    except md.PackageNotFoundError:
        return "unknown"


def _stateful(obj: Any) -> bool:
    return hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")


class Run:
    """The lifecycle of one training run: create or reopen the run directory, checkpoint, resume,
    log with a non-finite check, stop cleanly on SIGINT/SIGTERM, close.

        with Run("dcgan", config, device, generator=g, discriminator=d, opt_g=og, opt_d=od) as run:
            progress = run.resume() or {"step": 0, ...}      # restores every object in place
            ...
            run.log_steps(rows, check=("loss_d", "loss_g"))  # raises TrainingDiverged on NaN/inf
            run.step_done(step, progress)                    # interval checkpoint, Ctrl-C, test hook

    Args:
        experiment: the registry name, written into every checkpoint.
        config: the run's :class:`RunConfig`; ``--resume`` is validated by :class:`RunDir`
            before anything in the directory changes.
        device: where the run trains (recorded in env.json; checkpoints load there).
        **objects: everything with ``state_dict``/``load_state_dict`` that the run's state is made
            of (models, optimisers, data streams, ``torch.Generator`` s are wrapped).

    A checkpoint (:data:`CHECKPOINT_SCHEMA`) is one dict: ``schema``, ``experiment``,
    ``genlab_version``, ``config``, ``step``, ``epoch``, ``elapsed_s`` (training seconds over
    every session), ``states`` (name -> state_dict), ``progress`` (the loop's own counters and
    tensors) and ``rng`` (:func:`rng_state`). It is written atomically to checkpoints/last.pt;
    the one before is kept as checkpoints/previous.pt, and :meth:`resume` falls back to it,
    saying so, when last.pt cannot be read.

    Data-parallel runs (``torchrun``, :mod:`genlab.distributed`): every rank builds its ``Run``
    and makes the same calls. Rank 0 alone validates and writes the run directory, the metrics,
    the record and the checkpoints (``run.dir`` is a non-writing :class:`RunDir` elsewhere;
    ``run.is_main`` guards an experiment's own files); a checkpoint also holds ``world_size`` and
    ``rng_ranks``, every rank's RNG state in rank order, which :meth:`resume` hands back to each
    rank, so a resumed run continues exactly. It refuses a checkpoint of another world size.
    :meth:`step_done` takes the stop and interval-checkpoint decisions jointly (any rank's
    signal stops all ranks at the same step).
    """

    def __init__(self, experiment: str, config: RunConfig, device: torch.device, **objects: Any):
        self.experiment, self.config, self.device, self.objects = experiment, config, device, {}
        self.hold(**objects)
        self.world = distributed.World.current()
        self.dir = self._open_dir()
        self.path = self.dir.path
        self.previous = self.path / "checkpoints" / "previous.pt"
        self.every_s = getattr(config, "checkpoint_every_s", CHECKPOINT_EVERY_S)
        stop_after = os.environ.get(STOP_AFTER_STEPS_ENV)
        self.stop_after_steps = int(stop_after) if stop_after else None
        self.elapsed_before = 0.0
        self._start = time.time()
        self._last_checkpoint = time.monotonic()
        self._signal: int | None = None
        self._handlers: dict[int, Any] = {}
        self._rows: dict[str, int] = {}  # metrics file -> rows written by log_rows, kept in every checkpoint

    def hold(self, **objects: Any) -> None:
        """Add objects with ``state_dict``/``load_state_dict`` to the run's state (for those built
        after the run directory was validated, e.g. from the loaded data)."""
        for name, obj in objects.items():
            if not _stateful(obj):
                raise TypeError(f"{name}: a Run holds objects with state_dict and load_state_dict, got {type(obj)}")
        self.objects.update(objects)

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run directory (rank 0; the only one without torchrun)."""
        return self.world.is_main

    def _open_dir(self) -> RunDir:
        """The run directory: opened (validated, created) by rank 0, whose outcome, the path and
        whether there is a run to resume, or its refusal, every other rank takes over."""
        if self.world.size == 1:
            return RunDir(self.experiment, self.config, self.device)

        def open_main() -> tuple[str, bool]:
            self._main_dir = RunDir(self.experiment, self.config, self.device)
            return str(self.config.out), self.config.resume

        out, resume = distributed.main_decides(open_main, self.world)
        if self.is_main:
            return self._main_dir
        self.config.out, self.config.resume = Path(out), resume
        return RunDir(self.experiment, self.config, self.device, writes=False)

    # -- context ------------------------------------------------------------------------
    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()
        self.dir.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._signal = signum

    # -- time ---------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        """Training seconds so far, over every session of the run."""
        return self.elapsed_before + time.time() - self._start

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint(self, step: int, epoch: int, progress: dict[str, Any] | None = None) -> None:
        """Write the whole state atomically to last.pt, keeping the one before as previous.pt."""
        rng_ranks = distributed.all_gather_object(rng_state(), self.world)  # a collective: every rank calls it
        if not self.is_main:
            self._last_checkpoint = time.monotonic()
            return
        state = {
            "schema": CHECKPOINT_SCHEMA, "experiment": self.experiment, "genlab_version": _genlab_version(),
            "config": config_to_dict(self.config), "step": step, "epoch": epoch, "elapsed_s": self.elapsed_s,
            "states": {name: obj.state_dict() for name, obj in self.objects.items()},
            "progress": progress or {}, "rng": rng_ranks[0], "rows": dict(self._rows),
        }
        if self.world.size > 1:
            state.update(world_size=self.world.size, rng_ranks=rng_ranks)
        if self.dir.checkpoint.exists():
            os.replace(self.dir.checkpoint, self.previous)
        save_checkpoint(self.dir.checkpoint, state)
        self._last_checkpoint = time.monotonic()

    def resume(self) -> dict[str, Any] | None:
        """With ``--resume``: load the last checkpoint (the previous one if the last is unreadable),
        restore every object, the RNG states and the elapsed time, cut the metrics files back to
        the checkpoint (:meth:`RunDir.truncate_metrics`, and the files of :meth:`log_rows` to the
        rows they had); return ``{"step", "epoch", **progress}``. Without ``--resume`` (or with
        nothing to resume from): None, the metrics cut back to step 0.

        Raises GenlabError for a checkpoint of another experiment or another schema, naming both,
        or one written by another number of processes (naming both and the launch to use).
        """
        if not self.config.resume:
            self.dir.truncate_metrics(0, 0)
            return None
        ckpt = distributed.main_decides(self._load_checkpoint, self.world)  # read by rank 0, sent to all
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.world.size:
            raise GenlabError(f"{self.path}: the checkpoint was written by {saved_world} process(es) and this launch "
                              f"has {self.world.size}; continue it with the same number "
                              + (f"(`torchrun --nproc-per-node {saved_world} -m genlab run {self.experiment} ...`)"
                                 if saved_world > 1 else f"(`genlab run {self.experiment} --resume ...` without torchrun)"))
        for name, obj in self.objects.items():
            obj.load_state_dict(ckpt["states"][name])
        set_rng_state(ckpt["rng_ranks"][self.world.rank] if saved_world > 1 else ckpt["rng"])
        self.elapsed_before = float(ckpt["elapsed_s"])
        self._start = time.time()
        self._rows = dict(ckpt.get("rows", {}))
        self.dir.truncate_metrics(ckpt["step"], ckpt["epoch"])
        self.dir.truncate_rows(self._rows)
        if self.is_main:
            print(f"resuming {self.path} at step {ckpt['step']} (epoch {ckpt['epoch']})")
        return {"step": ckpt["step"], "epoch": ckpt["epoch"], **ckpt["progress"]}

    def _load_checkpoint(self) -> dict[str, Any]:
        return read_checkpoint(self.path, self.experiment, self.device if self.world.size == 1 else "cpu",
                               "drop --resume and start the run again in a new --out")

    def step_done(self, step: int, epoch: int, progress: Callable[[], dict[str, Any]]) -> None:
        """Call after every optimiser step: checkpoints when the interval has passed, and on
        SIGINT/SIGTERM (or the test hook's step) checkpoints and exits (status 130 or 143).
        ``progress`` builds the checkpoint's progress dict (called only when one is written)."""
        if self.stop_after_steps is not None and step >= self.stop_after_steps and self._signal is None:
            self._signal = signal.SIGINT
        due = time.monotonic() - self._last_checkpoint >= self.every_s
        if self.world.size > 1:  # every rank stops, or checkpoints, at the same step
            stop, due = distributed.all_max([float(self._signal or 0), float(due)], self.world)
            self._signal = int(stop) or None
        if self._signal is not None:
            self.checkpoint(step, epoch, progress())
            self.dir.close()
            if self.is_main:
                print(f"\ninterrupted at step {step}; checkpoint written. Resume with "
                      f"`genlab run {self.experiment} --out {self.path} --resume`", flush=True)
            raise SystemExit(128 + int(self._signal))
        if due:
            self.checkpoint(step, epoch, progress())

    # -- logging ------------------------------------------------------------------------
    def log_steps(self, rows: list[dict[str, float]], check: tuple[str, ...] = ()) -> None:
        """Append per-step rows (:meth:`RunDir.log_steps`) after :meth:`check_finite`. Every
        checkpoint also keeps how many rows steps.jsonl has, and :meth:`resume` cuts it back to
        them as well as to the checkpoint's step, so rows numbered otherwise than by the run's step
        (a unit's own iteration) written after the checkpoint are dropped too."""
        self.check_finite(rows, check)
        self._rows["steps.jsonl"] = self._rows.get("steps.jsonl", 0) + len(rows)
        self.dir.log_steps(rows)

    def log_rows(self, name: str, rows: list[dict[str, Any]], check: tuple[str, ...] = ()) -> None:
        """Append ``rows`` to metrics/``name`` (``.csv``: :func:`append_csv`; ``.jsonl``: one JSON
        object a line) after :meth:`check_finite`. Every checkpoint keeps how many rows each such
        file has, and :meth:`resume` cuts the file back to them; a file this session had not
        written yet and the checkpoint does not count is started afresh."""
        self.check_finite(rows, check)
        path = self.path / "metrics" / name
        if name not in self._rows:
            self._rows[name] = 0
            if self.dir.writes:
                path.unlink(missing_ok=True)
        self._rows[name] += len(rows)
        if not self.dir.writes or not rows:
            return
        if name.endswith(".csv"):
            append_csv(path, rows)
        else:
            with path.open("a") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)

    def check_finite(self, rows: list[dict[str, Any]], check: tuple[str, ...]) -> None:
        """Raise TrainingDiverged at the first row whose ``check`` columns are not all finite,
        naming its step and what a ``--resume`` continues from: the last checkpoint, or, when none
        was written yet, the beginning."""
        for row in rows:
            bad = next((k for k in check if k in row and not math.isfinite(row[k])), None)
            if bad is None:
                continue
            kept = (f"the last good checkpoint {self.dir.checkpoint} is kept" if self.dir.checkpoint.exists()
                    else f"no checkpoint was written yet, so `--resume` would start {self.path} from the beginning")
            raise TrainingDiverged(f"non-finite loss at step {row.get('step', '?')} ({bad} = {row[bad]}); {kept}. Lower --lr"
                                   + (" or use --precision fp32." if hasattr(self.config, "precision") else "."))


class GeneratorStates:
    """``torch.Generator`` s as one object with a ``state_dict`` (for :class:`Run`).

    Raises GenlabError on load when the saved states are of another device's kind (CPU
    generators are Mersenne Twisters, CUDA ones Philox): such a run continues only on the
    device it was trained on.
    """

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)

    def state_dict(self) -> dict[str, Any]:
        return {"states": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, s in zip(self.generators, state["states"]):
            try:
                g.set_state(s.cpu())
            except RuntimeError:
                raise GenlabError(f"the checkpoint's random generators are not {g.device.type} generators, so the "
                                  f"run cannot continue on {g.device.type}; resume it with --device set to the "
                                  f"device it was trained on (env.json)") from None


def check_checkpoint(ckpt: dict[str, Any], experiment: str, path: Path) -> None:
    """Refuse, naming both, a checkpoint of another schema or of another experiment."""
    schema = ckpt.get("schema") if isinstance(ckpt, dict) else None
    if schema != CHECKPOINT_SCHEMA:
        raise GenlabError(f"{path} is a checkpoint of schema {schema or 'none (an older genlab)'}; this genlab "
                          f"reads {CHECKPOINT_SCHEMA}; start the run again in a new --out")
    if ckpt["experiment"] != experiment:
        raise GenlabError(f"{path} is a checkpoint of a {ckpt['experiment']} run, not of {experiment}; "
                          f"resume it with `genlab run {ckpt['experiment']} --resume` or choose another --out")


def run_once(experiment: str, config: RunConfig, compute: Callable[[Any, Path], Record],
             captions: dict[str, str] | Callable[[Any], dict[str, str]]) -> Path:
    """The lifecycle of a run computed in one go on the CPU, without checkpoints
    (:func:`genlab.experiments.one_shot`): ``compute(config, run_path)`` writes ``run_path/metrics``
    and ``run_path/figures`` and returns the run's :class:`genlab.record.Record`, whose
    ``train_seconds`` (``compute``'s wall seconds) and ``figures`` (every PNG, captioned as
    :meth:`RunDir.figures` does with ``captions``, or with ``captions(config)``) are filled in here
    before it is written. Returns the run directory."""
    run_dir = RunDir(experiment, config, torch.device("cpu"))
    start = time.time()
    record = compute(config, run_dir.path)
    record.train_seconds = time.time() - start
    record.figures = run_dir.figures(captions(config) if callable(captions) else captions)
    run_dir.write_record(record)
    run_dir.close()
    return run_dir.path


def read_checkpoint(run_path: str | Path, experiment: str, map_location: str | torch.device = "cpu",
                    fix: str = "is it the directory of a finished `genlab run`?") -> dict[str, Any]:
    """The last readable checkpoint of a run directory: ``checkpoints/last.pt``, else
    ``checkpoints/previous.pt`` (saying so on stderr when the last is unreadable), checked to be of
    this genlab's schema and of ``experiment`` (:func:`check_checkpoint`).

    Raises:
        GenlabError: neither file is readable (the message ends with ``fix``), or the checkpoint
            is of another schema or experiment (naming both).
    """
    last, previous = (Path(run_path) / "checkpoints" / name for name in ("last.pt", "previous.pt"))
    for path in (last, previous):
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path, map_location)
        except Exception as err:  # a truncated or corrupt file: say which, try the one before
            print(f"{path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                  f"falling back to {previous.name}", file=sys.stderr)
            continue
        check_checkpoint(ckpt, experiment, path)
        return ckpt
    raise GenlabError(f"{last}: no readable checkpoint (nor {previous.name}); {fix}")


def reopen(run_path: str | Path, experiment: str, config_cls: type, map_location: torch.device,
           **overrides: Any) -> tuple[dict[str, Any], Any]:
    """A finished run of ``experiment``, for ``genlab eval`` and ``genlab sample``: its last
    readable checkpoint (:func:`read_checkpoint`, tensors on ``map_location``) and its config rebuilt
    as ``config_cls`` (:func:`config_from_dict`, with ``out=run_path, resume=True`` and ``overrides``,
    e.g. ``device="cpu"``). Raises GenlabError as :func:`read_checkpoint` does."""
    ckpt = read_checkpoint(run_path, experiment, map_location)
    return ckpt, config_from_dict(config_cls, ckpt["config"], out=Path(run_path), resume=True, **overrides)


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
#: many times the float32 rate. Native bf16 measures 2.3x to 4.4x (AVX512-BF16, Zen 4, 1.9x at the
#: worst under heavy load), 2.2x to 8.5x (AMX) and 14.5x (H200); emulated bf16 (ISA capped to AVX2,
#: CPUs without bf16) measures 0.02x to 0.2x. A threshold far from both keeps the choice the same
#: from run to run on one machine, loaded or not.
BF16_MIN_SPEEDUP = 1.2


def machine_key(device: torch.device) -> str:
    """What a kernel's speed and its floating-point summation order depend on: the device model, the
    ISA, torch and the kernel caps (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``); the key of
    genlab's per-machine caches (:func:`cache_dir`)."""
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                     platform.processor())
    caps = ",".join(f"{k}={os.environ.get(k, '')}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))
    return f"{device.type}|{model}|{cpu_isa()}|torch {torch.__version__}|{caps}"


def _measure_bf16_speedup(device: torch.device) -> float:
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return 0.0
    n = 768 if device.type == "cpu" else 4096
    with torch.no_grad():
        fp32 = gemm_flops(torch.float32, device, n, repeats=10)
        # an emulated bf16 product runs at a few % of float32: stop after one such product
        return gemm_flops(torch.bfloat16, device, n, repeats=10, give_up_after_s=20 * 2 * n**3 / fp32) / fp32


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/genlab`` (default ``~/.cache/genlab``): what genlab computes once per machine
    (:func:`machine_key`) and reads back in every later process; safe to delete."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genlab"


def speedup_cache_file() -> Path:
    """``<cache_dir>/bf16_speedup.json``: one measured ratio per machine key; delete it to measure again."""
    return cache_dir() / "bf16_speedup.json"


@functools.lru_cache(maxsize=None)
def bf16_speedup(device: torch.device) -> float:
    """Measured bf16 / float32 GEMM throughput ratio on ``device``, measured once per machine.

    The first measurement on a machine (key: device model, ISA, torch version, ``ATEN_CPU_CAPABILITY``
    and ``ONEDNN_MAX_CPU_ISA``) is stored in :func:`speedup_cache_file`, written once under a file
    lock, and every later run and process reads it: a timing taken while other work loads the
    machine cannot switch ``--precision auto`` between two runs, so a run stays reproducible from
    its seed. On CUDA: 0 below compute capability 8.0 (no bf16 tensor cores;
    ``torch.cuda.is_bf16_supported`` counts emulated bf16 on a T4 or V100 as supported), else the
    measured ratio.
    """
    key, path = machine_key(device), speedup_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = json.loads(path.read_text()) if path.exists() else {}
            if key not in table:
                table[key] = _measure_bf16_speedup(device)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
                os.replace(tmp, path)
            return float(table[key])
    except (OSError, ValueError):  # no writable cache (read-only home, a corrupt file): measure in-process
        return _measure_bf16_speedup(device)


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


class CurrentUnit:
    """The unit in progress of a run that trains several units in turn (one training per method,
    per seed, ...), held by a :class:`Run` as one object: the unit's objects with ``state_dict``,
    its loop state (a dict of counters, tensors and primitives, updated in place) and, in a
    checkpoint, the global RNG states.

        unit = CurrentUnit()
        with Run("wgan", config, device, unit=unit) as run:
            done = (run.resume() or {}).get("done", {})        # the finished units' results
            for key in keys:
                if key not in done:                            # done units are skipped
                    model, opt = build(key)                    # may draw from the global RNG
                    state = unit.start(key, {"step": 0}, model=model, opt=opt)
                    ...                                        # run.step_done(...) checkpoints mid-unit
                    done[key] = ...; unit.end(); run.checkpoint(...)

    On resume the saved unit waits until the unit of the same ``key`` starts; :meth:`start` then
    loads the saved states into the new objects, sets the global RNG states back to their values
    at the checkpoint (building the objects drew from them) and returns the saved loop state. One
    process only: the RNG states saved are the writing process's.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.objects: dict[str, Any] = {}
        self.progress: dict[str, Any] = {}
        self._saved: dict[str, Any] | None = None

    def start(self, key: str, progress: dict[str, Any], **objects: Any) -> dict[str, Any]:
        """Hold ``objects`` and the loop state ``progress`` as unit ``key``'s; returns the loop state
        to continue from: the saved one (objects and RNG states restored) when the run resumed
        inside this unit, else ``progress``."""
        saved, self._saved = self._saved, None
        if saved and saved["key"] == key:
            for name, obj in objects.items():
                obj.load_state_dict(saved["states"][name])
            set_rng_state(saved["rng"])
            progress = saved["progress"]
        self.key, self.objects, self.progress = key, objects, progress
        return progress

    def end(self) -> None:
        """The unit is finished: a checkpoint written from now on holds no unit in progress."""
        self.key, self.objects, self.progress = None, {}, {}

    def state_dict(self) -> dict[str, Any]:
        if self.key is None:
            return {}
        return {"key": self.key, "states": {name: obj.state_dict() for name, obj in self.objects.items()},
                "progress": self.progress, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved = state or None
