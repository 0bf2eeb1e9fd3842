"""`qajax compile`, `plot` and `demo`."""

from __future__ import annotations

import json
import sys


def _compile(args) -> int:
    from qajax.compile.targets import quiet_host_for_compiles, resolve

    quiet_host_for_compiles()
    from qajax import config as config_lib
    from qajax.compile import report as compile_report

    target = resolve(args.target)  # an unknown target fails before the config is read
    config = config_lib.load(args.config, args.set)
    if args.max_batch:
        result = compile_report.max_batch(config, target, limit=args.max_batch_limit)
        print(json.dumps(result) if args.json else compile_report.max_batch_text(result, target))
        return 0
    result = compile_report.compile_config(config, target)
    print(json.dumps(result) if args.json else compile_report.text(result))
    if not result["fits"]:
        over = result["per_device_memory_bytes"]["total"] - result["hbm_bytes_per_device"]
        print(
            f"qajax compile: error: {args.config} does not fit {target.name}: {over / 2**30:.2f} GiB per device over "
            f"its {result['hbm_bytes_per_device'] / 2**30:.1f} GiB (try --max-batch, parallel.fsdp, "
            "model.recompute_activation, model.remat)",
            file=sys.stderr,
        )
        return 3
    return 0


def _plot(args) -> int:
    from qajax.plots import plot_metrics

    keys = tuple(k for k in args.keys.split(",") if k)
    print(plot_metrics(args.workdir, args.out, keys))
    return 0


def _demo(args) -> int:
    from qajax.demo import run_demo

    print(json.dumps(run_demo(args.workdir, overrides=args.set), indent=2, ensure_ascii=False))
    return 0


def add_commands(command) -> None:
    """compile, plot, demo."""
    p = command("compile", "compile a config's train and eval steps ahead of time for an absent TPU or GPU", _compile)
    p.description = (
        "Compiles the real train step (and eval step) of CONFIG for TARGET on this machine, without the hardware, "
        "data or weights, and reports memory per device, whether it fits, XLA's FLOPs and bytes, the roofline bound "
        "on MFU, the attention kernel and the collectives."
    )
    p.add_argument("config", help="configs/NAME.py, optionally with :arg")
    p.add_argument(
        "--target",
        required=True,
        help="a TPU topology (v4:2x2x1, v5e:2x2, v5p:2x2x1, v6e:2x2, v5p:4x4x4, v5e:16x16, ...; needs qajax[tpu]), "
        "h100 or a100 (needs qajax[cuda]), or a target .json file",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeat)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-batch", action="store_true", help="find the largest examples per device that fit")
    p.add_argument("--max-batch-limit", type=int, default=4096, help="upper bound of the --max-batch search")

    p = command("plot", "training curves of a workdir's metrics.jsonl as a PNG", _plot)
    p.add_argument("workdir", help="a training workdir (with metrics.jsonl)")
    p.add_argument("--out", default=None, help="the PNG (None: WORKDIR/metrics.png)")
    p.add_argument("--keys", default="", help="comma-separated metric names (empty: loss, lr, grad norm, evals)")

    p = command("demo", "the embedded default job (see README)", _demo)
    p.add_argument("--workdir", default="runs/demo", help="where the demo trains and exports")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo config key")
