#!/usr/bin/env bash
# parity_squad.py's runs in the paired order (seed s: qajax, then pytorch), one process each, so that a study cut
# short is still paired. From the repository root:
#   nohup nice -n 10 scripts/experiments/parity_squad_runs.sh 0 1 2 > runs/parity_squad.log 2>&1 &
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
for seed in "$@"; do
  for arm in qajax pytorch; do
    echo "=== $(date -u +%FT%TZ) seed $seed $arm"
    "$PY" scripts/experiments/parity_squad.py --workdir "runs/parity_s$seed" --variants "$arm" --set "seed=$seed" \
      || echo "=== $(date -u +%FT%TZ) FAILED: seed $seed $arm"
  done
done
echo "=== $(date -u +%FT%TZ) done"
