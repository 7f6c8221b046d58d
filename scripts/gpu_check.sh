#!/usr/bin/env bash
# Every GPU check of genlab in one run (about 8 minutes on one H200), summarised in one JSON.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default runs/gpu_check; PY=python3 by default
#
# 1. the CUDA tests (GENLAB_TEST_CUDA=1 pytest -m cuda)
# 2. genlab bench dcgan --device cuda: eager, torch.compile, CUDA graphs
# 3. the full 50-epoch DCGAN of SPEC §1 on the GPU (CUDA graphs), timed, FID at the end
# 4. every experiment's smoke profile on --device cuda (genlab reproduce all --profile smoke)
#
# Writes OUT_DIR/gpu_check.json ({step: {rc, seconds, result}}), one log per step and the runs.
# Refuses to start without a CUDA GPU. Each step has its own time limit; a failed step is
# recorded and the others still run. Data: as genlab finds it (make data, or XDG_CACHE_HOME /
# --data-dir), the shared data folder beside the repository for summarize and t5-finetune.
set -uo pipefail
OUT=${1:-runs/gpu_check}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: scripts/gpu_check.sh needs a CUDA GPU, and torch.cuda.is_available() is False here;" \
       "run it on a GPU host (the CPU suite is make test)" >&2
  exit 3
fi
mkdir -p "$OUT"

summary="$OUT/steps.jsonl"
: >"$summary"
step() {  # step NAME LIMIT_S CMD...: run CMD under a time limit, log it, record rc and seconds
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >>"$summary"
  echo "   rc $rc in $((SECONDS - t0)) s"
  tail -n 3 "$OUT/$name.log"
}

step cuda_tests 120 env GENLAB_TEST_CUDA=1 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_dcgan_run.py \
  --junitxml="$OUT/cuda_tests.xml"
step bench_eager 40 "$PY" -m genlab bench dcgan --device cuda --steps 200 --rounds 3 --json
step bench_compile 80 "$PY" -m genlab bench dcgan --device cuda --steps 200 --rounds 3 --compile --json
step bench_graph 40 "$PY" -m genlab bench dcgan --device cuda --steps 200 --rounds 3 --cuda-graph --json
step dcgan_full 130 "$PY" -m genlab run dcgan --device cuda --cuda-graph --out "$OUT/dcgan_full"
step smoke_all 90 "$PY" -m genlab reproduce all --profile smoke --device cuda --out "$OUT/smoke"

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
result = {"gpu": None, "torch": None}
try:
    import torch
    result.update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
except Exception as err:  # noqa: BLE001 - the summary must still be written
    result["gpu_error"] = repr(err)
for line in (out / "steps.jsonl").read_text().splitlines():
    row = json.loads(line)
    log = (out / f"{row['step']}.log").read_text(errors="replace").strip().splitlines()
    entry = {"rc": row["rc"], "seconds": row["seconds"], "tail": log[-5:]}
    if row["step"].startswith("bench") and row["rc"] == 0:
        entry["result"] = json.loads(log[-1])
    result[row["step"]] = entry
metrics = out / "dcgan_full" / "metrics.json"
if metrics.exists():
    result["dcgan_full"]["metrics"] = json.loads(metrics.read_text())
epochs = out / "dcgan_full" / "metrics" / "epochs.csv"
if epochs.exists():
    result["dcgan_full"]["epochs_csv"] = epochs.read_text().splitlines()[-3:]
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
print(json.dumps({k: (v["rc"], v["seconds"]) if isinstance(v, dict) and "rc" in v else v for k, v in result.items()}))
PYEOF
