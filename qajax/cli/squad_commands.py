"""`qajax eval`, `predict` and `squad-eval`: span QA on data files, with the official metric and BERTScore."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from qajax.errors import QajaxError


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


def add_commands(command) -> None:
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
