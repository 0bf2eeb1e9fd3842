"""Why a SQuAD 2.0 run does or does not beat always-null: how well its no-answer odds tell answerable
questions from unanswerable ones, on the held-out articles and on the dev article, for trained workdirs of
squad_split.py / squad_ablation.py.

    .venv/bin/python scripts/experiments/squad_answerability.py runs/ablation_e3_s0/sdv [more workdirs]

Per workdir and set: the ROC AUC of the null odds (the chance that an unanswerable question gets higher odds
than an answerable one; 0.5 is a coin), per article too; the F1 of the best span of every answerable question
(always-answer HasAns F1); and the official v2.0 F1 when the k questions with the lowest odds are answered and
the rest get "" (k from 0 to all, every 5%). Answering a question pays its span F1 when it is answerable and
costs 1 when it is not, so a cut beats always-null only where the answered questions are answerable more
often than 1 / (1 + span F1) (two in three at a span F1 of 0.5). The curve's maximum is the sweep on the set
itself: on the held-out articles an upper bound, not a result. Writes docs/results/squad_answerability.md
and a PNG of the curves (--report '' writes none).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import save_figure  # noqa: E402  (the scripts beside this one)

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "docs" / "results" / "squad_answerability.md"
STEPS = 20  # points of the answered-fraction curve


def roc_auc(positive, negative) -> float:
    """P(a positive scores above a negative), ties counting one half (the Mann-Whitney statistic)."""
    import numpy as np

    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if not len(positive) or not len(negative):
        return math.nan
    ranks = _average_ranks(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values):
    """1-based ranks, tied values sharing their mean rank."""
    import numpy as np

    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def answered_curve(null_odds, unanswerable, span_f1, steps: int = STEPS) -> list[tuple[float, float]]:
    """(fraction answered, official F1 x 100) when the questions with the lowest odds are answered: a
    question answered scores its span F1 if answerable, 0 if not; one left "" scores 1 if unanswerable."""
    import numpy as np

    odds, empty, f1 = (np.asarray(x, float) for x in (null_odds, unanswerable, span_f1))
    order = np.argsort(odds, kind="stable")
    n = len(odds)
    # Cumulative gain of answering, in odds order, over the always-null score.
    gain = np.concatenate([[0.0], np.cumsum(np.where(empty[order], -1.0, f1[order]))])
    base = empty.sum()
    points = sorted({round(i * n / steps) for i in range(steps + 1)})
    return [(k / n, 100.0 * (base + gain[k]) / n) for k in points]


def margin_interval(scores, null_scores, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5%, 97.5%) of the margin in F1 points over always-null of the per-question scores averaged over
    runs (`scores` [runs, questions], `null_scores` [questions]), the questions resampled with replacement."""
    import numpy as np

    margin = np.mean(np.asarray(scores, float), axis=0) - np.asarray(null_scores, float)
    rng = np.random.default_rng(seed)
    means = margin[rng.integers(0, len(margin), (draws, len(margin)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return 100.0 * float(margin.mean()), 100.0 * float(low), 100.0 * float(high)


def analyse(workdir: Path) -> dict:
    from qajax import config as config_lib
    from qajax.tasks.squad import metric
    from qajax.tasks.squad.features import FeatureConfig
    from qajax.tasks.squad.inference import SpanPredictor, dev_null_threshold, load_qa_model
    from qajax.tasks.squad.postprocess import best_span_texts
    from qajax.tasks.squad.task import read_splits

    config = config_lib.read_saved(workdir)
    t = config.task
    _, held_out, dev = read_splits(t, config.seed)
    features = FeatureConfig(t.max_seq_length, t.doc_stride, t.max_query_length)
    predictor = SpanPredictor(*load_qa_model(workdir), feature_config=features, batch_size=config.train.eval_batch_size)
    chosen = dev_null_threshold(workdir)  # the threshold the run chose on its dev article, at its last evaluation
    result = {"workdir": str(workdir), "seed": config.seed, "sets": {}}
    for name, examples in (("held-out", held_out), ("dev", dev)):
        if not examples:
            continue
        # At the run's own threshold (0 without one): the predictions are the decisions the run reported.
        cut = chosen[0] if chosen is not None else 0.0
        predictions, nbest, odds = predictor(examples, n_best=t.n_best, max_answer_length=t.max_answer_length,
                                             null_threshold=cut)  # fmt: skip
        spans = best_span_texts(nbest)
        span_f1 = [max((metric.f1(spans[e.id], a.text) for a in e.answers), default=0.0) for e in examples]
        empty = [e.is_impossible for e in examples]
        null_odds = [odds[e.id] for e in examples]
        split = lambda rows, o=null_odds, e=empty: ([o[i] for i in rows if e[i]], [o[i] for i in rows if not e[i]])
        by_title = {}
        for title in dict.fromkeys(e.title for e in examples):
            by_title[title] = roc_auc(*split([i for i, e in enumerate(examples) if e.title == title]))
        curve = answered_curve(null_odds, empty, span_f1)
        has = [f for f, e in zip(span_f1, empty, strict=True) if not e]
        result["sets"][name] = {
            "questions": len(examples),
            "unanswerable": sum(empty),
            "titles": list(by_title),
            "auc": roc_auc(*split(range(len(examples)))),
            "auc_by_title": by_title,
            "always_answer_HasAns_f1": 100.0 * sum(has) / len(has) if has else math.nan,
            "always_null_f1": 100.0 * sum(empty) / len(examples),
            "curve": curve,
            "curve_max_f1": max(f for _, f in curve),
        }
        if chosen is not None and name == "held-out":  # the official per-question scores the run reported
            scores = [
                float(e.is_impossible) if predictions[e.id] == "" else f for e, f in zip(examples, span_f1, strict=True)
            ]
            result["sets"][name].update(
                ids=[e.id for e in examples], empty=empty, scores_at_dev_threshold=scores, dev_threshold=chosen[0],
                f1_at_dev_threshold=100.0 * sum(scores) / len(scores),
            )  # fmt: skip
    return result


def write_report(results: list[dict], path: Path, command: str) -> None:
    from qajax.files import atomic_write_text

    lines = [
        "# SQuAD 2.0: how well the no-answer odds separate answerable from unanswerable questions",
        "",
        "Written by `scripts/experiments/squad_answerability.py` from the trained workdirs it was given:",
        "",
        f"    {command}",
        "",
        f"Date {datetime.date.today().isoformat()}. AUC: the chance that an unanswerable question gets higher null",
        "odds than an answerable one (0.5 = a coin). Curve max: the best official F1 over the 21 cuts 'answer the k",
        "questions with the lowest odds' (on the held-out set an upper bound, not a result). A cut beats",
        "always-null only where the answered questions are answerable more often than 1 / (1 + span F1).",
        "",
        "| workdir | seed | set | questions | AUC | AUC per article | always-answer HasAns F1 | always-null F1 "
        "| curve max F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, s in r["sets"].items():
            per_title = ", ".join(f"{t} {a:.3f}" for t, a in s["auc_by_title"].items())
            lines.append(
                f"| `{r['workdir']}` | {r['seed']} | {name} | {s['questions']} ({s['unanswerable']} unanswerable) "
                f"| {s['auc']:.3f} | {per_title} | {s['always_answer_HasAns_f1']:.2f} | {s['always_null_f1']:.2f} "
                f"| {s['curve_max_f1']:.2f} |"
            )
    lines += seed_mean_lines(results)
    lines += ["", f"![F1 against the share answered]({path.with_suffix('.png').name})", ""]
    plot(results, path.with_suffix(".png"))
    atomic_write_text(path, "\n".join(lines))


def seed_mean_lines(results: list[dict]) -> list[str]:
    """The runs scored as they reported (held-out, at the threshold each chose on its dev article), their mean
    per question, and a bootstrap interval of that mean's margin over always-null."""
    runs = [r for r in results if "scores_at_dev_threshold" in r["sets"].get("held-out", {})]
    if not runs:
        return []
    ids = runs[0]["sets"]["held-out"]["ids"]
    if any(r["sets"]["held-out"]["ids"] != ids for r in runs):
        raise ValueError("the runs were scored on different held-out questions; their mean per question is undefined")
    scores = [r["sets"]["held-out"]["scores_at_dev_threshold"] for r in runs]
    null_scores = _null_scores(runs[0])
    mean, low, high = margin_interval(scores, null_scores)
    each = ", ".join(f"seed {r['seed']} {r['sets']['held-out']['f1_at_dev_threshold']:.2f}" for r in runs)
    return [
        "",
        f"Held-out F1 as each run reported it (threshold chosen on its dev article): {each}. Mean over the "
        f"{len(runs)} runs, question by question: {100 * sum(null_scores) / len(null_scores) + mean:.2f}, a margin "
        f"of {mean:+.2f} F1 over always-null, 95% bootstrap interval [{low:+.2f}, {high:+.2f}] (questions resampled, "
        "2000 draws; the seeds are fixed, so this is the question-sampling error of these runs' mean only).",
    ]


def _null_scores(result: dict) -> list[float]:
    """Always-null's per-question official score: 1 for an unanswerable question, 0 for an answerable one."""
    return [float(e) for e in result["sets"]["held-out"]["empty"]]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for r in results for name in r["sets"]}, reverse=True)  # held-out, dev
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for r in results:
            if name in r["sets"]:
                s = r["sets"][name]
                ax.plot([100 * x for x, _ in s["curve"]], [f for _, f in s["curve"]], ".-", label=r["workdir"])
                null_f1 = s["always_null_f1"]
        ax.axhline(null_f1, color="k", ls="--", lw=1, label="always-null")
        ax.set_title(name)
        ax.set_xlabel("% of questions answered (lowest null odds first)")
        ax.set_ylabel("official F1")
        ax.legend(fontsize=6)
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", help="trained workdirs of squad_split.py / squad_ablation.py")
    parser.add_argument("--report", default=str(REPORT), help="markdown file to write ('' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = [analyse(Path(w)) for w in args.workdirs]
    for r in results:
        per_question = ("curve", "ids", "empty", "scores_at_dev_threshold")
        sets = {name: {k: v for k, v in s.items() if k not in per_question} for name, s in r["sets"].items()}
        print(json.dumps({**r, "sets": sets}))
    if args.report:
        argv = argv if argv is not None else sys.argv[1:]
        command = shlex.join(["scripts/experiments/squad_answerability.py", *argv])
        write_report(results, Path(args.report), command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
