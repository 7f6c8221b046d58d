"""Shared test helpers.

CPU tests run on the CPU even on a GPU host: unless ``GENLAB_TEST_CUDA=1``, the GPUs are hidden
from this process and from every ``genlab`` subprocess it starts (``CUDA_VISIBLE_DEVICES=""``,
set before torch initialises CUDA), so ``--device auto`` resolves to the CPU. Tests marked
``cuda`` need a GPU and are skipped without one: run them with
``GENLAB_TEST_CUDA=1 pytest -m cuda`` (``scripts/gpu_check.sh`` does).
"""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

if os.environ.get("GENLAB_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Under pytest-xdist each worker has one core's share: one intra-op thread per worker (and per
# `genlab` subprocess, which inherits the variable), since two 2-thread processes on 2 cores
# oversubscribe them and run each step at less than half speed (docs/benchmarks.md, "the suite").
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
os.environ["OMP_NUM_THREADS"] = str(THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


def pytest_itemcollected(item):
    # a module-scoped fixture (a smoke run, a course) is built once per worker that needs it: the
    # tests that share one go to one worker (--dist loadgroup reads the group), so it is built once
    info = getattr(item, "_fixtureinfo", None)
    if info and any(d[-1].scope == "module" for d in info.name2fixturedefs.values()):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_collection_modifyitems(config, items):
    # Longest first: the slow tests, and the groups (a shared module fixture, one worker) that hold
    # one, start before the quick ones, so that the last minute of a 2-worker run is not one worker
    # finishing a slow test alone. The sort is stable: a group's tests keep their order.
    def group(item):
        marker = item.get_closest_marker("xdist_group")
        return marker.args[0] if marker else None

    slow_groups = {group(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or group(item) in slow_groups - {None}))
    if torch.cuda.is_available():
        return
    reason = ("needs a CUDA GPU; run with GENLAB_TEST_CUDA=1 on a GPU host" if os.environ.get("GENLAB_TEST_CUDA") == "1"
              else "CUDA test: GPUs are hidden from the CPU suite; run GENLAB_TEST_CUDA=1 pytest -m cuda")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    """200 real XSum pairs as a JSONL file (the summarisers' smoke data)."""
    from genlab.summaries import shared_data_dir

    xsum = shared_data_dir() / "xsum" / "xsum_subset.jsonl"
    if not xsum.exists():
        pytest.skip(f"{xsum} is not installed")
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(xsum.read_text().splitlines(keepends=True)[:200]))
    return path


def genlab(*args: str, check: bool = True, env_extra: dict[str, str] | None = None,
           **kwargs) -> subprocess.CompletedProcess:
    """Run the real `genlab` CLI in a subprocess (``env_extra``: more environment variables)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "genlab", *args], capture_output=True, text=True, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"genlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def genlab_here(*args: str, check: bool = True, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the `genlab` CLI in this process: :func:`genlab.cli.main` on ``args``, with its exit status
    (a ``SystemExit``'s code, as the test hook's 130) and its stdout and stderr captured, ``env_extra``
    set for the call. The same code path as :func:`genlab` without a new interpreter's start-up
    (torch alone imports in 3-4 s on a 2-core machine, a FID run's torchmetrics in 5 s more). For tests
    of what a command writes; the process boundary itself (signals, torchrun, the console script,
    an interpreter's first import of an experiment) is tested through :func:`genlab`."""
    from genlab import cli

    env_extra = env_extra or {}
    saved = {key: os.environ.get(key) for key in env_extra}
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env_extra)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(threads)
    proc = subprocess.CompletedProcess(["genlab", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"genlab {' '.join(args)} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_steps(run: Path) -> list[dict]:
    """A run's per-step metric rows (metrics/steps.jsonl)."""
    import json

    return [json.loads(line) for line in (run / "metrics" / "steps.jsonl").read_text().splitlines()]


def read_epochs(run: Path) -> list[dict]:
    """A run's per-epoch rows (metrics/epochs.csv) as strings, without the wall-clock column."""
    import csv

    with (run / "metrics" / "epochs.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
