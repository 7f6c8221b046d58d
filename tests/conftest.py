import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def genlab(*args: str, check: bool = True, env_extra: dict[str, str] | None = None,
           **kwargs) -> subprocess.CompletedProcess:
    """Run the real `genlab` CLI in a subprocess (``env_extra``: more environment variables)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "genlab", *args], capture_output=True, text=True, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"genlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
