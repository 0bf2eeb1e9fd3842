#!/usr/bin/env bash
# The GPU check of issue 20, prepared for a lent CUDA machine (never run in CI): BERT-base (seq 384, bf16,
# 32 examples) measured by `qajax bench` for each attention path, beside the roofline MFU that `qajax
# compile --target h100` gives the same shape without a GPU.
#
#   scripts/gpu_bench.sh [OUT_DIR]     OUT_DIR default: $OUT (the folder a device machine sends back)
#
#   PYTHON        the interpreter with qajax and its [cuda] extra installed (default: python)
#   STEP_TIMEOUT  seconds each command may take (default: 240)
# Writes compile_h100.json, bench_cudnn.json, bench_xla.json, bench_explicit.json (each command's stderr
# beside it as NAME.log) and summary.md. A command that fails or times out is named in the summary and the
# others still run; the script then exits 1.
set -euo pipefail

out=${1:-${OUT:?usage: $0 OUT_DIR (or set OUT)}}
python=${PYTHON:-python}
limit=${STEP_TIMEOUT:-240}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."  # configs/ is read relative to the repository

"$python" -c 'import jax; assert jax.default_backend() == "gpu", f"no GPU: {jax.devices()}"'

failed=()
step() {  # step NAME ARG...: `qajax ARG...` > OUT/NAME.json, its stderr in OUT/NAME.log
  local name=$1 status=0  # qajax compile's exit 3 ("does not fit") still writes its JSON: not a failure
  shift
  timeout "$limit" "$python" -m qajax "$@" >"$out/$name.json" 2>"$out/$name.log" || status=$?
  if [[ $status == 124 ]]; then
    failed+=("$name (timed out after $limit s)")
  elif [[ $status != 0 && ! ($status == 3 && $name == compile_h100) ]]; then
    failed+=("$name (exit $status)")
  fi
}

step compile_h100 compile configs/squad_bert_base.py --target h100 --json
for implementation in cudnn xla explicit; do
  step "bench_$implementation" bench --preset bert-base --seq-len 384 --dtype bfloat16 --entries qajax \
    --attention-implementation "$implementation" --json
done

"$python" - "$out" "${failed[@]}" >"$out/summary.md" <<'PY'
import json, sys
from pathlib import Path

out, failed, notes = Path(sys.argv[1]), sys.argv[2:], []


def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


compiled = load("compile_h100") or {}
roofline = compiled.get("roofline_mfu")
print(f"roofline (qajax compile --target h100, attention {compiled.get('attention_kernel', '?')}): "
      f"MFU {'?' if roofline is None else f'{100 * roofline:.1f}%'}, {compiled.get('roofline_bound', '?')}-bound")
print()
print("| --attention-implementation | ran (HLO kernel) | step ms | examples/s | measured MFU | roofline MFU |")
print("|---|---|---|---|---|---|")
for implementation in ("cudnn", "xla", "explicit"):
    report = load(f"bench_{implementation}")
    if not report:
        print(f"| {implementation} | failed: see bench_{implementation}.log | | | | |")
        continue
    r = report["results"][0]
    print(f"| {implementation} | {r['attention']} ({r['attention_kernel']}) | {r['step_ms']:.1f} | "
          f"{r['examples_per_sec']:.1f} | {100 * r['mfu']:.1f}% | "
          f"{'?' if roofline is None else f'{100 * roofline:.1f}%'} |")
    if r["attention"] != implementation:  # the model's plan (qajax.models.attention) took another path
        notes.append(f"{implementation} asked, {r['attention']} ran: the model's plan (qajax.models.attention; "
                     "xla has no attention dropout, so a train step falls back to explicit)")
for note in notes:
    print(f"\n{note}")
if report := load("bench_cudnn"):
    print(f"\ndevice: {report['device']}; peak {report['config']['peak_flops'] / 1e12:.0f} TFLOP/s "
          f"({report['config']['peak_flops_source']})")
for name in failed:
    print(f"\nfailed: {name}")
PY
cat "$out/summary.md"
((${#failed[@]} == 0))
