#!/usr/bin/env bash
# Publish a `genlab reproduce` folder as docs/report/: each run's record (metrics.json, summary.md,
# config.json, env.json, figures/) without its checkpoints, TensorBoard logs and per-step metrics,
# then the report rebuilt from those copies (`genlab report`), so that the committed HTML, the
# Markdown twin and its figure links all live in the repository.
#   bash scripts/publish_report.sh runs/full [docs/report]
set -euo pipefail
src=${1:?usage: publish_report.sh REPRODUCE_DIR [OUT_DIR]}
out=${2:-docs/report}
genlab=${GENLAB:-$(dirname "$0")/../.venv/bin/genlab}
mkdir -p "$out"
cp "$src/reproduce.json" "$out/"
for run in "$src"/*/; do
  name=$(basename "$run")
  [ -f "$run/config.json" ] || continue
  rm -rf "${out:?}/$name"
  mkdir -p "$out/$name"
  for f in metrics.json summary.md config.json env.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$out/$name/"
  done
  if [ -d "$run/figures" ]; then mkdir -p "$out/$name/figures"; cp "$run"/figures/*.png "$out/$name/figures/" 2>/dev/null || true; fi
  [ -d "$src/logs" ] && [ -f "$src/logs/$name.log" ] && mkdir -p "$out/logs" && tail -n 40 "$src/logs/$name.log" > "$out/logs/$name.log"
done
"$genlab" report "$out" --out "$out/report.html" --md "$out/report.md"
