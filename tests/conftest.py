"""Shared test helpers.

CPU tests run on the CPU even on a GPU host: unless ``GENLAB_TEST_CUDA=1``, the GPUs are hidden
from this process and from every ``genlab`` subprocess it starts (``CUDA_VISIBLE_DEVICES=""``,
set before torch initialises CUDA), so ``--device auto`` resolves to the CPU. Tests marked
``cuda`` need a GPU and are skipped without one: run them with
``GENLAB_TEST_CUDA=1 pytest -m cuda`` (``scripts/gpu_check.sh`` does).
"""

import os
import subprocess
import sys
from pathlib import Path

if os.environ.get("GENLAB_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
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


def read_steps(run: Path) -> list[dict]:
    """A run's per-step metric rows (metrics/steps.jsonl)."""
    import json

    return [json.loads(line) for line in (run / "metrics" / "steps.jsonl").read_text().splitlines()]


def read_epochs(run: Path) -> list[dict]:
    """A run's per-epoch rows (metrics/epochs.csv) as strings, without the wall-clock column."""
    import csv

    with (run / "metrics" / "epochs.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
