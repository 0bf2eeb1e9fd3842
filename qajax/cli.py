"""The `qajax` command. Each subcommand parses its arguments and calls one library function; this is the
only module that prints to the user or exits with a status."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from qajax.errors import QajaxError


def _import_hf(args) -> int:
    from qajax.hub import resolve

    src = resolve(args.src, what="import-hf SRC")  # first: a missing name fails before JAX loads
    import qajax.hf
    from qajax.checkpoints.saved import save_model

    _model, params, spec = qajax.hf.from_pretrained(src, head=args.head, num_labels=args.num_labels)
    if args.adapter:
        from qajax.checkpoints.peft import merge_adapter

        params = merge_adapter(params, spec, resolve(args.adapter, what="--adapter"))
    out = save_model(args.out, spec, params, overwrite=args.overwrite)
    adapter = f" with the LoRA adapter {args.adapter} merged" if args.adapter else ""
    print(f"imported {spec.encoder.family} ({spec.head} head) from {args.src}{adapter} into {out}")
    return 0


def _export_hf(args) -> int:
    import qajax.hf

    formats = tuple(f for f in args.formats.split(",") if f)
    if args.adapter_only and args.base_only:
        raise QajaxError("--adapter-only and --base-only exclude each other: export each in its own folder")
    if args.adapter_only:
        from qajax.checkpoints.peft import save_adapter

        out = save_adapter(args.ckpt, args.out, overwrite=args.overwrite)
        what = "the LoRA adapter (PEFT: adapter_config.json, adapter_model.safetensors)"
    else:
        if args.base_only:
            from qajax.checkpoints.peft import load_base

            model, params, spec = load_base(args.ckpt)
        else:
            from qajax.checkpoints.saved import load_model

            model, params, spec = load_model(args.ckpt)
        out = qajax.hf.save_pretrained(model, params, spec, args.out, formats=formats, overwrite=args.overwrite)
        left_out = ", adapters left out" if args.base_only else ""
        what = f"{spec.encoder.family} ({spec.head} head{left_out}) as {', '.join(formats)}"
    print(f"exported {what} from {args.ckpt} to {out}")
    if args.push_to_hub:
        from qajax.hub import push

        print(f"pushed {out} to {push(out, args.push_to_hub, private=args.private)}")
    return 0


def _train(args) -> int:
    from qajax import config as config_lib
    from qajax.run import train

    config = config_lib.load(args.config, args.set)
    summary = train(config, args.workdir, allow_config_change=args.allow_config_change)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _null_threshold(args) -> float:
    """--null-threshold, else the threshold the run chose on its dev articles for this checkpoint, else 0."""
    if args.null_threshold is not None:
        return args.null_threshold
    from qajax.tasks.squad.inference import dev_null_threshold

    chosen = dev_null_threshold(args.ckpt)
    if chosen is None:
        return 0.0
    threshold, step = chosen
    print(
        f"{args.ckpt}: null threshold {threshold:.4f}, chosen on the run's dev articles at step {step}", file=sys.stderr
    )
    return threshold


def _predictor(args):
    """The SpanPredictor of CKPT (a hub name becomes its cached folder), saying which step and windows it uses."""
    from qajax import api
    from qajax.checkpoints.saved import training_step
    from qajax.hub import resolve

    args.ckpt = str(resolve(args.ckpt, what="CKPT"))
    args.checkpoint_step = training_step(args.ckpt)
    windows = {k: getattr(args, k) for k in api.WINDOW_KEYS}
    predictor = api.predictor(args.ckpt, batch_size=args.batch_size, **windows)
    if args.checkpoint_step is not None:
        print(f"{args.ckpt}: loaded the checkpoint of step {args.checkpoint_step}", file=sys.stderr)
    shown = ", ".join(f"{k}={getattr(predictor.feature_config, k)}" for k in api.WINDOW_KEYS)
    source = "the run's config.json" if api.run_windows(args.ckpt) else "defaults"
    print(f"{args.ckpt}: windows {shown} (options, else {source})", file=sys.stderr)
    return predictor


def _eval(args) -> int:
    from qajax.files import atomic_write_text
    from qajax.tasks.squad import data
    from qajax.tasks.squad.inference import evaluate

    examples, skipped = data.load(args.data, args.split, skip_invalid=args.skip_invalid)
    if len(skipped):
        print(f"{args.data}: {skipped.summary()}", file=sys.stderr)
    version_2 = args.version == "v2.0"
    if not version_2:
        examples = [e for e in examples if not e.is_impossible]
    predictor, bertscore = _predictor(args), _bertscore(args)
    threshold = _null_threshold(args)
    scores = evaluate(
        predictor,
        examples,
        out_dir=args.out,
        version_2=version_2,
        n_best=args.n_best,
        max_answer_length=args.max_answer_length,
        null_threshold=threshold,
        bertscore=bertscore,
    )
    if args.out is not None:
        results = {
            "metrics": scores,
            "checkpoint": args.ckpt,
            "checkpoint_step": args.checkpoint_step,
            "null_threshold": threshold,
            "data": str(args.data),
            "version": args.version,
            **dataclasses.asdict(predictor.feature_config),
        }
        atomic_write_text(Path(args.out) / "eval_results.json", json.dumps(results, indent=2) + "\n")
    print(json.dumps(scores))
    return 0


def _predict(args) -> int:
    from qajax.tasks.squad import data
    from qajax.tasks.squad.inference import answer

    if args.file is None and (args.out or args.skip_invalid):
        raise QajaxError("--out and --skip-invalid go with --file")
    if args.file is None and not (args.question and args.context):
        raise QajaxError("give --question and --context (repeat --context for several passages), or --file")
    predictor = _predictor(args)
    options = dict(n_best=args.n_best, max_answer_length=args.max_answer_length, null_threshold=_null_threshold(args))
    if args.file:
        examples, skipped = data.load(args.file, skip_invalid=args.skip_invalid)
        if len(skipped):
            print(f"{args.file}: {skipped.summary()}", file=sys.stderr)
        predictions, nbest, null_odds = predictor(examples, **options)
        if args.out:
            from qajax.tasks.squad.postprocess import write_predictions

            write_predictions(args.out, predictions, nbest, null_odds)
            print(
                f"{len(predictions)} answers in {Path(args.out) / 'predictions.json'} (and nbest_predictions.json, "
                "null_odds.json)"
            )
            return 0
        print(json.dumps({"predictions": predictions, "null_odds": null_odds}, ensure_ascii=False, indent=2))
        return 0
    result = answer(predictor, args.question, args.context, **options)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _squad_eval(args) -> int:
    from qajax.tasks.squad.metric import evaluate_files

    scores = evaluate_files(args.data, args.predictions, args.na_prob, args.na_prob_thresh)
    bertscore = _bertscore(args)
    if bertscore is not None:
        from qajax.tasks.squad.bertscore import evaluate_bertscore_files

        scores.update(
            evaluate_bertscore_files(
                args.data,
                args.predictions,
                na_prob_path=args.na_prob,
                na_prob_thresh=args.na_prob_thresh,
                **bertscore.keywords,
            )
        )
    print(json.dumps(scores))
    return 0


def _bertscore(args):
    """`evaluate_bertscore` with the scorer and options of --bertscore* bound, or None without --bertscore."""
    if args.bertscore is None:
        if args.idf or args.bertscore_layer is not None or args.bertscore_baseline is not None:
            raise QajaxError("--idf, --bertscore-layer and --bertscore-baseline need --bertscore MODEL_DIR")
        return None
    import functools

    from qajax.hub import resolve
    from qajax.metrics.bertscore import BertScorer, read_baseline
    from qajax.tasks.squad.bertscore import evaluate_bertscore

    folder = resolve(args.bertscore, what="--bertscore")
    scorer = BertScorer.from_pretrained(folder, args.bertscore_layer, batch_size=args.bertscore_batch_size)
    baseline = None if args.bertscore_baseline is None else read_baseline(args.bertscore_baseline, scorer.layer)
    return functools.partial(evaluate_bertscore, scorer=scorer, idf=args.idf, baseline=baseline)


def _add_bertscore_options(p) -> None:
    p.add_argument(
        "--bertscore",
        default=None,
        metavar="MODEL",
        help="also report BERTScore with this HF encoder (a folder or hub id)",
    )
    p.add_argument("--bertscore-layer", type=int, default=None, help="hidden layer, 0 = embeddings (None: the last)")
    p.add_argument("--idf", action="store_true", help="BERTScore: IDF weights from the gold answers")
    p.add_argument("--bertscore-baseline", default=None, metavar="FILE", help="rescale with bert-score's LAYER,P,R,F")
    p.add_argument("--bertscore-batch-size", type=int, default=64, help="sentences per BERTScore forward pass")


def _add_span_options(p) -> None:
    from qajax.tasks.squad import features, postprocess

    p.add_argument(
        "ckpt", help="a training workdir, a qajax model checkpoint, or an HF folder or hub id with a QA head"
    )
    run = "(None: the run's task setting, else %s)"
    window = "tokens per window " + run % features.MAX_SEQ_LENGTH
    p.add_argument("--max-seq-length", type=int, default=None, help=window)
    stride = "overlap of a context's windows " + run % features.DOC_STRIDE
    p.add_argument("--doc-stride", type=int, default=None, help=stride)
    query = "question tokens kept " + run % features.MAX_QUERY_LENGTH
    p.add_argument("--max-query-length", type=int, default=None, help=query)
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--n-best", type=int, default=postprocess.N_BEST, help="candidate spans kept per question")
    p.add_argument(
        "--max-answer-length", type=int, default=postprocess.MAX_ANSWER_LENGTH, help="longest answer, in tokens"
    )
    p.add_argument(
        "--null-threshold",
        type=float,
        default=None,
        help='predict "" when null - best span > this (None: what the run chose on its dev articles, else 0)',
    )


# qajax.bench.TECHNIQUE_ENTRIES and the multitask step
TECHNIQUE_NAMES = ("sda", "sdv-k3", "sdv-k5", "smart-t1", "lora-r8", "prompt", "freeze-top2", "multitask-pcgrad")
PRESETS = {
    "minilm": dict(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536, seq_len=128, batch_size=16),
    "bert-base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, seq_len=384, batch_size=32),
}


def _bench(args) -> int:
    if args.workload:
        return _bench_workload(args)
    from qajax import bench

    values = dict(PRESETS[args.preset], dtype=args.dtype)
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
    from qajax import bench_workload

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
            f"its {result['hbm_bytes_per_device'] / 2**30:.1f} GiB (try --max-batch, parallel.fsdp, model.remat)",
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every help text (an unset option's help says what it falls back to); the epilog's
    examples keep their lines."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


EXAMPLES = {
    "train": "qajax train configs/tiny.py --workdir runs/tiny --set train.steps=300\n"
    "qajax train configs/squad.py --workdir runs/squad --set model.pretrained=bert-base-uncased",
    "import-hf": "qajax import-hf bert-base-uncased ckpt/bert   # a hub id or a folder\n"
    "qajax import-hf base-hf/ ckpt/tuned --adapter lora-adapter/",
    "export-hf": "qajax export-hf runs/squad hf-squad/ --formats pt\n"
    "qajax export-hf runs/lora adapter/ --adapter-only   # PEFT adapter folder\n"
    "qajax export-hf runs/squad hf-squad/ --push-to-hub me/squad-model",
    "eval": "qajax eval runs/squad dev-v2.0.json --out eval/   # eval_results.json, predictions.json, ...",
    "predict": 'qajax predict runs/squad --question "Who?" --context "Ada founded it."\n'
    "qajax predict runs/squad --file questions.json --out answers/ --skip-invalid",
    "squad-eval": "qajax squad-eval dev-v2.0.json predictions.json --na-prob null_odds.json",
    "bench": "qajax bench --preset minilm --entries qajax,hf-flax,lora-r8 --rounds 3",
    "compile": "qajax compile configs/squad_bert_base.py --target v5e:2x2 --json\n"
    "qajax compile configs/squad_bert_base.py --target h100\n"
    "qajax compile configs/squad_bert_base.py --target v5p:4x4x4 --set parallel.fsdp=4 --max-batch",
    "plot": "qajax plot runs/squad --keys loss,eval/f1",
    "demo": "qajax demo --workdir runs/demo",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qajax")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qajax", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"qajax {_version()}")
    verbosity = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, 0), (verbosity, argparse.SUPPRESS)):  # before or after the subcommand
        p.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=default,
            help="more log lines: -v other libraries' INFO, -vv also Orbax's",
        )
        p.add_argument("-q", "--quiet", action="count", default=default, help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run):
        p = commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[verbosity],
            formatter_class=_HelpFormatter,
            epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "),
        )
        p.set_defaults(run=run)
        return p

    for add_commands in (_add_run_commands, _add_squad_commands, _add_tool_commands):
        add_commands(command)
    return parser


def _add_run_commands(command) -> None:
    """train, import-hf, export-hf."""
    p = command("train", "train (or resume) a config in a workdir", _train)
    p.add_argument("config", help="configs/NAME.py, optionally with :arg")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard; resumed if present")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeat)")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even where the config changes what the run computes (model, data, optimizer...)",
    )

    p = command("import-hf", "HF model folder or hub id -> qajax checkpoint", _import_hf)
    p.add_argument(
        "src", help="an HF folder (config.json + safetensors / pytorch_model.bin / flax_model.msgpack) or hub id"
    )
    p.add_argument("out", help="qajax checkpoint folder to create")
    p.add_argument("--head", default="qa", choices=("qa", "classification", "encoder"), help="task head to put on")
    p.add_argument("--num-labels", type=int, default=None, help="classification labels (None: from config.json)")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a PEFT LoRA adapter folder to merge into SRC")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = command("export-hf", "qajax checkpoint or workdir -> HF folder (Flax and/or PyTorch)", _export_hf)
    p.add_argument("ckpt", help="a qajax checkpoint folder (spec.json + params/) or a training workdir")
    p.add_argument("out", help="HF folder to create")
    p.add_argument("--formats", default="flax,pt", help="comma-separated: flax, pt")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA run as a PEFT adapter folder: adapter_config.json, adapter_model.safetensors",
    )
    p.add_argument("--base-only", action="store_true", help="a LoRA run's frozen base model, adapters left out")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="then upload OUT to this hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_squad_commands(command) -> None:
    """eval, predict, squad-eval: span QA on data files."""
    p = command("eval", "span QA: a model on a data file -> official metrics + prediction files", _eval)
    _add_span_options(p)
    p.add_argument("data", help="SQuAD / multi-context .json, or a hub name")
    p.add_argument("--split", default="validation", help="split of a hub data set")
    p.add_argument("--version", default="v2.0", choices=("v1.1", "v2.0"), help="SQuAD metric (v1.1 drops unanswerable)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for eval_results.json, predictions.json, nbest_predictions.json and null_odds.json",
    )
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed questions and report them")
    _add_bertscore_options(p)

    p = command("predict", "span QA: answer a question from the command line or a JSON file", _predict)
    _add_span_options(p)
    p.add_argument("--question", help="the question")
    p.add_argument("--context", action="append", help="a passage (repeat for several)")
    p.add_argument("--file", help="SQuAD / multi-context .json of questions to answer")
    p.add_argument(
        "--out", default=None, help="with --file: folder for predictions.json, nbest_predictions.json, null_odds.json"
    )
    p.add_argument("--skip-invalid", action="store_true", help="with --file: skip malformed questions and report them")

    p = command("squad-eval", "the official SQuAD v1.1/v2.0 metric on a predictions file", _squad_eval)
    p.add_argument("data", help="the SQuAD .json with the gold answers")
    p.add_argument("predictions", help="predictions.json: question id -> answer text")
    p.add_argument("--na-prob", default=None, help="null_odds.json (v2.0)")
    p.add_argument("--na-prob-thresh", type=float, default=1.0, help='answer "" where the null odds exceed this')
    _add_bertscore_options(p)


def _add_tool_commands(command) -> None:
    """bench, compile, plot, demo."""
    p = command("bench", "train-step throughput, compile time, memory and MFU, side by side", _bench)
    p.add_argument("--preset", default="minilm", choices=sorted(PRESETS), help="model and batch shape")
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "seq_len", "batch_size"):
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None, help="(None: the preset's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="compute dtype")
    p.add_argument("--mode", default="mesh", choices=("mesh", "pmap"), help="parallel mode of the qajax steps")
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


def configure_logging(verbosity: int) -> None:
    """qajax's own lines (banner, progress in batch jobs, resume notes) at INFO by default; -q: warnings only;
    -v: other libraries' INFO too; -vv: Orbax's notes as well (absl, tens of lines per checkpoint)."""
    logging.basicConfig(
        level=logging.INFO if verbosity >= 1 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    logging.getLogger("qajax").setLevel(logging.INFO if verbosity >= 0 else logging.WARNING)
    if verbosity < 2:
        for name in ("absl", "orbax"):
            logging.getLogger(name).setLevel(logging.ERROR)  # orbax notes on existing and read-only folders


def main(argv: list[str] | None = None) -> int:
    from qajax.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # before JAX starts its threads: a fifth of a CPU step was page faults
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    try:
        return args.run(args)
    except QajaxError as e:
        print(f"qajax {args.command}: error: {e}", file=sys.stderr)
        return 2
