#!/usr/bin/env bash
# One process of a multi-host run: sets qajax's coordinator variables and runs `python -m qajax train "$@"`.
# Start one copy per host (each uses all of its host's accelerators), with the same arguments everywhere.
#
#   Explicit:  COORDINATOR=host0:12355 NUM_PROCESSES=4 PROCESS_ID=<0..3> \
#                scripts/launch_multihost.sh configs/tiny.py --workdir /shared/runs/tiny
#   SLURM:     srun --nodes=4 --ntasks-per-node=1 scripts/launch_multihost.sh configs/tiny.py --workdir /shared/runs/tiny
#              (process SLURM_PROCID of SLURM_NTASKS; coordinator: the first host of SLURM_JOB_NODELIST,
#              port COORDINATOR_PORT, default 12355)
#   TPU pods:  QAJAX_AUTO_DISTRIBUTED=1 scripts/launch_multihost.sh configs/tiny.py --workdir /shared/runs/tiny
#              (jax finds the coordinator, process count and index itself; run it on every worker, e.g.
#              gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd qajax && QAJAX_AUTO_DISTRIBUTED=1 ...")
#
# The workdir must be one directory that every host sees: all processes write their shards into the same orbax
# checkpoint, and process 0 alone writes metrics.jsonl, TensorBoard events, the config and spec.json.
# train.batch_size is the global batch; each process feeds its slice of it. PYTHON picks the interpreter (default python).
set -euo pipefail

if [[ -z "${COORDINATOR:-}" && -n "${SLURM_PROCID:-}" ]]; then
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  COORDINATOR="${hosts%%$'\n'*}:${COORDINATOR_PORT:-12355}"
  NUM_PROCESSES=$SLURM_NTASKS
  PROCESS_ID=$SLURM_PROCID
fi

if [[ -n "${COORDINATOR:-}" ]]; then
  export QAJAX_COORDINATOR="$COORDINATOR"
  export QAJAX_NUM_PROCESSES="${NUM_PROCESSES:?COORDINATOR is set: set NUM_PROCESSES too}"
  export QAJAX_PROCESS_ID="${PROCESS_ID:?COORDINATOR is set: set PROCESS_ID (0 .. NUM_PROCESSES-1) too}"
elif [[ -z "${QAJAX_COORDINATOR:-}" && "${QAJAX_AUTO_DISTRIBUTED:-}" != 1 ]]; then
  echo "launch_multihost.sh: set COORDINATOR=host:port NUM_PROCESSES=N PROCESS_ID=i, run under SLURM (srun)," \
    "or set QAJAX_AUTO_DISTRIBUTED=1 on a TPU pod" >&2
  exit 2
fi

exec "${PYTHON:-python}" -m qajax train "$@"
