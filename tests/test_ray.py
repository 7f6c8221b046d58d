"""genlab reproduce through a real Ray cluster: a head started here, runs submitted by --address.

Network rule: every Ray process runs inside a private network namespace that holds only loopback
(``unshare -n``, then ``ip link set lo up``), and a private PID namespace so that nothing outlives
the test; the head is stopped by its process id, never by name (``ray stop`` would stop every
Ray on the machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# one Ray cluster at a time: under pytest-xdist (make test) these run on one worker, in turn
pytestmark = pytest.mark.xdist_group("ray")

NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _namespace_or_skip() -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed: pip install 'genlab[ray]'")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare or ip (util-linux, iproute2) missing: Ray may only run in a loopback-only namespace here")
    probe = subprocess.run([*NAMESPACE, "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n / -p not permitted here ({probe.stderr.strip()}); Ray may only run in a "
                    f"loopback-only network namespace on these machines (run the tests as root)")


def _in_namespace(script: str, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    # no usage reports; no token authentication (Ray >= 2.5x turns it on for `ray start --head`, and a
    # client then needs the head's token): the cluster is reachable only on this namespace's loopback
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*NAMESPACE, "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tmp_path)


@pytest.mark.slow
def test_reproduce_on_a_ray_cluster_by_address(tmp_path):
    _namespace_or_skip()
    ray_bin = Path(sys.executable).parent / "ray"
    out = tmp_path / "course"
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    port = 6399  # the namespace has its own ports: nothing else listens there
    script = f"""
ip link set lo up
{ray_bin} start --head --block --port {port} --node-ip-address 127.0.0.1 --num-cpus 2 --num-gpus 0 \\
    --include-dashboard=false --disable-usage-stats --temp-dir {temp} > {tmp_path}/head.log 2>&1 &
HEAD=$!
up=0
deadline=$(( $(date +%s) + 300 ))  # generous: a loaded 2-core machine starts Ray slowly
# first the head's own word (cheap to poll; each client probe below imports Ray, seconds of CPU)
quiet=$(( $(date +%s) + 120 ))
while [ "$(date +%s)" -lt "$quiet" ] && ! grep -q "Ray runtime started" {tmp_path}/head.log 2>/dev/null; do
  kill -0 $HEAD 2>/dev/null || break
  sleep 1
done
while [ "$(date +%s)" -lt "$deadline" ]; do
  if timeout 60 {sys.executable} -c "import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False); ray.shutdown()" \\
      >/dev/null 2>&1; then up=1; break; fi
  kill -0 $HEAD 2>/dev/null || break
  sleep 1
done
echo "head-up=$up"
[ "$up" = 1 ] && timeout 300 {sys.executable} -m genlab reproduce bandit optimizers --profile smoke --jobs 2 \\
    --threads 1 --address 127.0.0.1:{port} --out {out}
echo "reproduce-rc=$?"
kill -TERM $HEAD
( sleep 30; kill -KILL $HEAD 2>/dev/null ) &
wait $HEAD
echo "head-stopped"
"""
    try:
        proc = _in_namespace(script, tmp_path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    log = proc.stdout + proc.stderr + (tmp_path / "head.log").read_text(errors="replace")[-3000:]
    assert "head-up=1" in proc.stdout, log
    assert "head-stopped" in proc.stdout, log
    rc = int(proc.stdout.split("reproduce-rc=")[1].split()[0])
    state = json.loads((out / "reproduce.json").read_text())["runs"]
    assert sorted(state) == ["bandit", "optimizers"]
    for name, run in state.items():
        assert run["status"] in ("done", "no record"), (name, run["message"])
        assert run["returncode"] == 0
        assert len(run["ray_task"]) > 8, run  # ran as a Ray task ...
        assert run["resources"] == {"CPU": 1.0}, run  # ... declaring its one thread
        assert (out / name / "config.json").is_file()
    assert rc == (0 if all(r["status"] == "done" for r in state.values()) else 1)
    html = (out / "report.html").read_text()
    assert 'data-experiment="bandit"' in html and 'data-experiment="optimizers"' in html


@pytest.mark.slow
def test_jobs_start_a_local_ray(tmp_path):
    _namespace_or_skip()
    out = tmp_path / "course"
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    script = f"""
ip link set lo up
RAY_TMPDIR={temp} timeout 300 {sys.executable} -m genlab reproduce bandit reinforce --profile smoke --jobs 2 --threads 1 --out {out}
echo "reproduce-rc=$?"
"""
    try:
        proc = _in_namespace(script, tmp_path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert "reproduce-rc=" in proc.stdout, proc.stdout + proc.stderr
    state = json.loads((out / "reproduce.json").read_text())["runs"]
    assert sorted(state) == ["bandit", "reinforce"]
    for run in state.values():
        assert run["returncode"] == 0 and run["status"] in ("done", "no record"), run
        assert len(run["ray_task"]) > 8 and run["resources"] == {"CPU": 1.0}, run
    assert (out / "report.html").is_file()
