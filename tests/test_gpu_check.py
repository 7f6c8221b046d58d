"""scripts/gpu_check.sh on a machine without a GPU: valid bash, and a refusal that names the fix."""

import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_refuses_without_a_gpu_and_writes_nothing(tmp_path):
    env = {**os.environ, "PY": sys.executable}  # conftest hides the GPUs: CUDA_VISIBLE_DEVICES=""
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    assert proc.returncode == 3
    assert "needs a CUDA GPU" in proc.stderr and "make test" in proc.stderr
    assert not (tmp_path / "out").exists()
