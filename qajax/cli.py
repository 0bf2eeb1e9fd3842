"""The `qajax` command. Each subcommand parses its arguments and calls one library function; this is the
only module that prints to the user or exits with a status."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qajax.errors import QajaxError


def _import_hf(args) -> int:
    import qajax.hf
    from qajax.checkpoints.saved import save_model

    _model, params, spec = qajax.hf.from_pretrained(args.src, head=args.head, num_labels=args.num_labels)
    out = save_model(args.out, spec, params, overwrite=args.overwrite)
    print(f"imported {spec.encoder.family} ({spec.head} head) from {args.src} into {out}")
    return 0


def _export_hf(args) -> int:
    import qajax.hf
    from qajax.checkpoints.saved import load_model

    model, params, spec = load_model(args.ckpt)
    formats = tuple(f for f in args.formats.split(",") if f)
    out = qajax.hf.save_pretrained(model, params, spec, args.out, formats=formats, overwrite=args.overwrite)
    print(f"exported {spec.encoder.family} ({spec.head} head) from {args.ckpt} to {out} as {', '.join(formats)}")
    return 0


def _train(args) -> int:
    from qajax import config as config_lib
    from qajax.run import train

    config = config_lib.load(args.config, args.set)
    summary = train(config, args.workdir)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _feature_config(args):
    from qajax.tasks.squad.features import FeatureConfig

    return FeatureConfig(args.max_seq_length, args.doc_stride, args.max_query_length)


def _null_threshold(args) -> float:
    """--null-threshold, else the threshold the run chose on its dev articles for this checkpoint, else 0."""
    if args.null_threshold is not None:
        return args.null_threshold
    from qajax.tasks.squad.inference import dev_null_threshold

    chosen = dev_null_threshold(args.ckpt)
    if chosen is None:
        return 0.0
    threshold, step = chosen
    print(f"{args.ckpt}: null threshold {threshold:.4f}, chosen on the run's dev articles at step {step}",
          file=sys.stderr)  # fmt: skip
    return threshold


def _predictor(args):
    from qajax.tasks.squad.inference import SpanPredictor, load_qa_model

    model, params, spec = load_qa_model(args.ckpt)
    return SpanPredictor(model, params, spec, feature_config=_feature_config(args), batch_size=args.batch_size)


def _eval(args) -> int:
    from qajax.tasks.squad import data
    from qajax.tasks.squad.inference import evaluate

    examples, skipped = data.load(args.data, args.split, skip_invalid=args.skip_invalid)
    if len(skipped):
        print(f"{args.data}: {skipped.summary()}", file=sys.stderr)
    version_2 = args.version == "v2.0"
    if not version_2:
        examples = [e for e in examples if not e.is_impossible]
    scores = evaluate(
        _predictor(args),
        examples,
        out_dir=args.out,
        version_2=version_2,
        n_best=args.n_best,
        max_answer_length=args.max_answer_length,
        null_threshold=_null_threshold(args),
        bertscore=_bertscore(args),
    )
    print(json.dumps(scores))
    return 0


def _predict(args) -> int:
    from qajax.tasks.squad import data
    from qajax.tasks.squad.inference import answer

    predictor = _predictor(args)
    options = dict(n_best=args.n_best, max_answer_length=args.max_answer_length, null_threshold=_null_threshold(args))
    if args.file:
        examples, _ = data.load(args.file)
        predictions, _, null_odds = predictor(examples, **options)
        print(json.dumps({"predictions": predictions, "null_odds": null_odds}, ensure_ascii=False, indent=2))
        return 0
    if not (args.question and args.context):
        raise QajaxError("give --question and --context (repeat --context for several passages), or --file")
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

    from qajax.metrics.bertscore import BertScorer, read_baseline
    from qajax.tasks.squad.bertscore import evaluate_bertscore

    scorer = BertScorer.from_pretrained(args.bertscore, args.bertscore_layer, batch_size=args.bertscore_batch_size)
    baseline = None if args.bertscore_baseline is None else read_baseline(args.bertscore_baseline, scorer.layer)
    return functools.partial(evaluate_bertscore, scorer=scorer, idf=args.idf, baseline=baseline)


def _add_bertscore_options(p) -> None:
    p.add_argument("--bertscore", default=None, metavar="MODEL_DIR", help="also report BERTScore with this HF encoder")
    p.add_argument("--bertscore-layer", type=int, default=None, help="hidden layer, 0 = embeddings (default: last)")
    p.add_argument("--idf", action="store_true", help="BERTScore: IDF weights from the gold answers")
    p.add_argument("--bertscore-baseline", default=None, metavar="FILE", help="rescale with bert-score's LAYER,P,R,F")
    p.add_argument("--bertscore-batch-size", type=int, default=64)


def _add_span_options(p) -> None:
    from qajax.tasks.squad import features, postprocess

    p.add_argument("ckpt", help="a training workdir, a qajax model checkpoint or an HF folder with a QA head")
    p.add_argument("--max-seq-length", type=int, default=features.MAX_SEQ_LENGTH)
    p.add_argument("--doc-stride", type=int, default=features.DOC_STRIDE)
    p.add_argument("--max-query-length", type=int, default=features.MAX_QUERY_LENGTH)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-best", type=int, default=postprocess.N_BEST)
    p.add_argument("--max-answer-length", type=int, default=postprocess.MAX_ANSWER_LENGTH, help="tokens")
    p.add_argument(
        "--null-threshold", type=float, default=None,
        help='predict "" when null - best span > this (default: what the run chose on its dev articles, else 0)',
    )  # fmt: skip


# qajax.bench.TECHNIQUE_ENTRIES and the multitask step
TECHNIQUE_NAMES = ("sda", "sdv-k3", "sdv-k5", "smart-t1", "lora-r8", "prompt", "freeze-top2", "multitask-pcgrad")
PRESETS = {
    "minilm": dict(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536, seq_len=128, batch_size=16),
    "bert-base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, seq_len=384, batch_size=32),
}


def _bench(args) -> int:
    from qajax import bench

    values = dict(PRESETS[args.preset], dtype=args.dtype)
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "seq_len", "batch_size"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    shape = bench.Shape(**values)
    names = [n for n in args.entries.split(",") if n]
    report = bench.run(
        shape, names, steps=args.steps, warmup=args.warmup, peak_flops=args.peak_flops, mode=args.mode,
        rounds=args.rounds,
    )  # fmt: skip
    if args.png:
        bench.plot(report, args.png)
    print(json.dumps(report) if args.json else bench.markdown(report))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qajax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train (or resume) a config in a workdir")
    p.add_argument("config", help="configs/NAME.py, optionally with :arg")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard; resumed if present")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(run=_train)

    p = commands.add_parser("import-hf", help="HF model folder -> qajax checkpoint")
    p.add_argument("src", help="folder with config.json and model.safetensors / pytorch_model.bin / flax_model.msgpack")
    p.add_argument("out", help="qajax checkpoint folder to create")
    p.add_argument("--head", default="qa", choices=("qa", "classification", "encoder"))
    p.add_argument("--num-labels", type=int, default=None, help="classification labels (default: from config)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_import_hf)

    p = commands.add_parser("export-hf", help="qajax checkpoint -> HF folder (Flax and/or PyTorch)")
    p.add_argument("ckpt", help="qajax checkpoint folder (spec.json + params/)")
    p.add_argument("out", help="HF folder to create")
    p.add_argument("--formats", default="flax,pt", help="comma-separated: flax, pt")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_export_hf)

    p = commands.add_parser("eval", help="span QA: a model on a data file -> official metrics + prediction files")
    _add_span_options(p)
    p.add_argument("data", help="SQuAD / multi-context .json, or a hub name")
    p.add_argument("--split", default="validation")
    p.add_argument("--version", default="v2.0", choices=("v1.1", "v2.0"))
    p.add_argument("--out", default=None, help="folder for predictions.json, nbest_predictions.json, null_odds.json")
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed questions and report them")
    _add_bertscore_options(p)
    p.set_defaults(run=_eval)

    p = commands.add_parser("predict", help="span QA: answer a question from the command line or a JSON file")
    _add_span_options(p)
    p.add_argument("--question")
    p.add_argument("--context", action="append", help="a passage (repeat for several)")
    p.add_argument("--file", help="SQuAD / multi-context .json of questions to answer")
    p.set_defaults(run=_predict)

    p = commands.add_parser("squad-eval", help="the official SQuAD v1.1/v2.0 metric on a predictions file")
    p.add_argument("data")
    p.add_argument("predictions")
    p.add_argument("--na-prob", default=None, help="null_odds.json (v2.0)")
    p.add_argument("--na-prob-thresh", type=float, default=1.0)
    _add_bertscore_options(p)
    p.set_defaults(run=_squad_eval)

    p = commands.add_parser("bench", help="train-step throughput, compile time, memory and MFU, side by side")
    p.add_argument("--preset", default="minilm", choices=sorted(PRESETS))
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "seq_len", "batch_size"):
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--mode", default="mesh", choices=("mesh", "pmap"))
    p.add_argument(
        "--entries",
        default="qajax,qajax-eval,hf-flax,hf-pytorch",
        help="comma-separated: qajax, qajax-eval, hf-flax, hf-pytorch, and techniques: " + ", ".join(TECHNIQUE_NAMES),
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=1, help="time every entry this many times in alternating order, keep the best"
    )
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (default: detected)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the markdown table")
    p.add_argument("--png", default=None, help="also write a bar chart here")
    p.set_defaults(run=_bench)

    p = commands.add_parser(
        "compile",
        help="compile a config's train and eval steps ahead of time for an absent TPU/GPU: memory, roofline MFU",
        description="Compiles the real train step (and eval step) of CONFIG for TARGET on this machine, without "
        "the hardware, data or weights, and reports memory per device, whether it fits, XLA's FLOPs and bytes, the "
        "roofline bound on MFU, the attention kernel and the collectives.",
        epilog="example: qajax compile configs/squad_bert_base.py --target v5e:2x2 --json",
    )
    p.add_argument("config", help="configs/NAME.py, optionally with :arg")
    p.add_argument(
        "--target",
        required=True,
        help="a TPU topology (v4:2x2x1, v5e:2x2, v5p:2x2x1, v6e:2x2, v5p:4x4x4, v5e:16x16, ...; needs qajax[tpu]), "
        "h100 or a100 (needs qajax[cuda]), or a target .json file",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-batch", action="store_true", help="find the largest examples per device that fit")
    p.add_argument("--max-batch-limit", type=int, default=4096, help="upper bound of the --max-batch search")
    p.set_defaults(run=_compile)

    p = commands.add_parser("plot", help="training curves of a workdir's metrics.jsonl as a PNG")
    p.add_argument("workdir")
    p.add_argument("--out", default=None, help="default: WORKDIR/metrics.png")
    p.add_argument("--keys", default="", help="comma-separated metric names (default: loss, lr, grad norm, evals)")
    p.set_defaults(run=_plot)

    p = commands.add_parser("demo", help="the embedded default job (see README)")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo config key")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qajax.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # before JAX starts its threads: a fifth of a CPU step was page faults
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only / existing folders
    try:
        return args.run(args)
    except QajaxError as e:
        print(f"qajax {args.command}: error: {e}", file=sys.stderr)
        return 2
