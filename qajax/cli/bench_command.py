"""`qajax bench`: the step benchmark (`qajax.bench`), or with --workload an epoch's whole path
(`qajax.bench.workload`)."""

from __future__ import annotations

import json
import sys

from qajax.errors import QajaxError

# qajax.bench.TECHNIQUE_ENTRIES and the multitask step
TECHNIQUE_NAMES = ("sda", "sdv-k3", "sdv-k5", "smart-t1", "lora-r8", "prompt", "freeze-top2", "multitask-pcgrad")
PRESETS = {
    "minilm": dict(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536, seq_len=128, batch_size=16),
    "bert-base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, seq_len=384, batch_size=32),
}
# qajax.models.attention.IMPLEMENTATIONS (a test keeps them equal), written out so that --help and a bad value
# answer without loading JAX.
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas", "explicit")


def _bench(args) -> int:
    if args.workload:
        if args.attention_implementation is not None:
            raise QajaxError("--attention-implementation goes with the step bench, not with --workload")
        return _bench_workload(args)
    from qajax import bench

    values = dict(PRESETS[args.preset], dtype=args.dtype, attention_implementation=args.attention_implementation)
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "seq_len", "batch_size"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    shape = bench.Shape(**values)
    names = [n for n in (args.entries or "qajax,qajax-eval,hf-flax,hf-pytorch").split(",") if n]
    report = bench.run(
        shape,
        names,
        steps=args.steps,
        warmup=args.warmup,
        peak_flops=args.peak_flops,
        mode=args.mode,
        rounds=args.rounds,
    )
    if args.png:
        bench.plot(report, args.png)
    print(json.dumps(report) if args.json else bench.markdown(report))
    return 0


def _bench_workload(args) -> int:
    from qajax.bench import workload as bench_workload

    sizes = {"batch_size": args.batch_size} if args.batch_size else {}  # windows per step (packed: half in rows)
    workload = bench_workload.Workload(data=args.data, epochs_fraction=args.epochs_fraction, **sizes)
    names = tuple(n for n in args.entries.split(",") if n) if args.entries else bench_workload.DEFAULT_ENTRIES
    try:
        report = bench_workload.run(workload, names)
    except bench_workload.DataAbsent as e:
        print(f"qajax bench --workload squad: skipped, {e}", file=sys.stderr)
        return 0
    print(json.dumps(report) if args.json else bench_workload.markdown(report))
    return 0


def add_commands(command) -> None:
    p = command("bench", "train-step throughput, compile time, memory and MFU, side by side", _bench)
    p.add_argument("--preset", default="minilm", choices=sorted(PRESETS), help="model and batch shape")
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "seq_len", "batch_size"):
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None, help="(None: the preset's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="compute dtype")
    p.add_argument("--mode", default="mesh", choices=("mesh", "pmap"), help="parallel mode of the qajax steps")
    p.add_argument(
        "--attention-implementation",
        default=None,
        choices=ATTENTION_IMPLEMENTATIONS,
        help="model.attention_implementation of the qajax entries (None: the model's default, auto: xla on a CPU, "
        "cudnn on a GPU in bf16/fp16, pallas on a TPU); the report names the attention each entry ran with",
    )
    p.add_argument(
        "--entries",
        default=None,
        help="comma-separated: qajax, qajax-eval, hf-flax, hf-pytorch, and techniques: "
        + ", ".join(TECHNIQUE_NAMES)
        + " (default: qajax,qajax-eval,hf-flax,hf-pytorch); with --workload: qajax, qajax-padded, qajax-bucketed, "
        "qajax-packed, hf-flax, hf-pytorch (default all but qajax-bucketed)",
    )
    p.add_argument("--workload", default=None, choices=("squad",), help="an epoch's whole path instead of one step")
    p.add_argument("--data", default="../shared/data/squad2/dev-part.json", help="--workload: the SQuAD .json")
    p.add_argument("--epochs-fraction", type=float, default=0.2, help="--workload: the part of an epoch run")
    p.add_argument("--steps", type=int, default=10, help="timed steps per entry")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the compile among them)")
    p.add_argument(
        "--rounds", type=int, default=1, help="time every entry this many times in alternating order, keep the best"
    )
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (None: detected)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the markdown table")
    p.add_argument("--png", default=None, help="also write a bar chart here")
