#!/usr/bin/env bash
# SPEC §8 (issue #19, item 4): which setting lands near the reference's ~75 % on mnist-gt5?
# The plain estimator alone, 3 seeds (42-44), 2,000 steps, under each setting below; each run's
# summary.md has the final test accuracy per seed and mean ± std. Usage:
#   scripts/reinforce_settings.sh OUT_DIR [SETTING ...]     (default: every setting)
# Runs one training at a time with one thread, at the lowest priority (NICE=0 for the normal one).
set -euo pipefail
out=${1:?usage: scripts/reinforce_settings.sh OUT_DIR [SETTING ...]}
shift
declare -A SETTINGS=(
  [adam-mlp]="--optimizer adam --lr 1e-3 --hidden 64"        # genlab's default
  [sgd-mlp-lr1e-3]="--optimizer sgd --lr 1e-3 --hidden 64"   # plain SGD at Adam's learning rate
  [sgd-mlp-lr3e-3]="--optimizer sgd --lr 3e-3 --hidden 64"
  [sgd-mlp-lr1e-2]="--optimizer sgd --lr 1e-2 --hidden 64"
  [sgd-mlp-lr1e-1]="--optimizer sgd --lr 1e-1 --hidden 64"
  [adam-logistic]="--optimizer adam --lr 1e-3 --hidden 0"    # logistic regression
  [sgd-logistic-lr1e-3]="--optimizer sgd --lr 1e-3 --hidden 0"
  [sgd-logistic-lr1e-2]="--optimizer sgd --lr 1e-2 --hidden 0"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(adam-mlp sgd-mlp-lr1e-3 sgd-mlp-lr3e-3 sgd-mlp-lr1e-2 sgd-mlp-lr1e-1 adam-logistic sgd-logistic-lr1e-3
  sgd-logistic-lr1e-2)
for name in "${names[@]}"; do
  [ -f "$out/$name/metrics.json" ] && continue
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 nice -n "${NICE:-19}" python -m genlab run reinforce --task mnist-gt5 --estimator plain --no-supervised \
    --variance-every 0 ${SETTINGS[$name]} --out "$out/$name" --resume
done
