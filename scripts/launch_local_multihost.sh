#!/usr/bin/env bash
# A multi-host run in miniature: N `qajax train` processes on this machine, talking over 127.0.0.1 with gloo
# CPU collectives, each started through scripts/launch_multihost.sh as one host of a cluster would be.
#
#   scripts/launch_local_multihost.sh N CONFIG --workdir DIR [--set key=value ...]
#   e.g. DEVICES_PER_PROCESS=2 scripts/launch_local_multihost.sh 2 configs/tiny.py --workdir runs/tiny-2x2
#
#   DEVICES_PER_PROCESS  simulated CPU devices per process (default 1); train.batch_size must divide by N x this
#   LOG_DIR              where process I writes process_I.log, stdout and stderr (default: a new temporary folder)
#   PORT                 the coordinator's port (default: a free one)
#   PYTHON               the interpreter (default: python)
#   JAX_PLATFORMS        default cpu
# All processes share the workdir, as hosts share one filesystem. Waits for all of them; when one fails, stops
# the others and exits with its status. Needs bash >= 5.1 (wait -n -p).
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N CONFIG --workdir DIR [--set key=value ...]" >&2
  exit 2
fi
num_processes=$1
shift
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
log_dir=${LOG_DIR:-$(mktemp -d -t qajax-multihost.XXXXXX)}
mkdir -p "$log_dir"
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

declare -A running=()  # pid -> process index
stop_running() {
  if ((${#running[@]})); then
    kill "${!running[@]}" 2>/dev/null || true
    wait "${!running[@]}" 2>/dev/null || true
    running=()
  fi
}
trap stop_running EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((index = 0; index < num_processes; index++)); do
  COORDINATOR="127.0.0.1:$port" NUM_PROCESSES=$num_processes PROCESS_ID=$index PYTHON=$python \
    JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo \
    XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" \
    "$here/launch_multihost.sh" "$@" >"$log_dir/process_$index.log" 2>&1 &
  running[$!]=$index
  echo "process $index (pid $!): $log_dir/process_$index.log"
done

status=0
while ((${#running[@]})); do
  code=0
  wait -n -p finished "${!running[@]}" || code=$?
  index=${running[$finished]}
  unset "running[$finished]"
  echo "process $index exited with status $code"
  if ((code != 0)); then
    echo "process $index failed; the end of its log:" >&2
    tail -n 20 "$log_dir/process_$index.log" >&2
    status=$code
    stop_running
  fi
done
exit "$status"
