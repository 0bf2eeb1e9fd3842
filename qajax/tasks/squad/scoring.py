"""The official scores of span-QA predictions: one rule for the training run's evaluation (task.py), `qajax
eval` (inference.py) and the experiment scripts, from what `postprocess.postprocess` returns."""

from __future__ import annotations

from qajax.tasks.squad import metric, postprocess


def metric_dataset(examples) -> list[dict]:
    """The official metric's input (ids and reference texts are all it reads) for any examples,
    multi-context ones included."""
    qas = [
        {
            "id": e.id,
            "question": e.question,
            "answers": [{"text": a.text, "answer_start": a.start} for a in e.answers],
            "is_impossible": e.is_impossible,
        }
        for e in examples
    ]
    return [{"title": "", "paragraphs": [{"context": "", "qas": qas}]}]


def score_predictions(
    examples, predictions, nbest, null_odds, *, null_threshold: float, version_2: bool
) -> dict[str, float]:
    """The official v2.0 (or v1.1) scores of `postprocess.postprocess(...)` = (predictions, nbest, null_odds)
    made at `null_threshold`, keyed as the official scripts print them.

    v2.0 scores the best span of every question with the null odds as na_probs and `null_threshold` as the
    cut: the same exact/f1 as the cut predictions, and best_* sweep every threshold, not only those that blank
    more answers (see `postprocess.best_span_texts`). Two keys are ours: `f1_at_0`, the model's own decision
    (threshold 0), and, when some question has an answer, `always_answer_HasAns_f1`, the best span of every
    answerable question. v1.1 scores `predictions` as they are."""
    dataset = metric_dataset(examples)
    if not version_2:
        return metric.evaluate_v1(dataset, predictions)
    answered = postprocess.best_span_texts(nbest)
    scores = metric.evaluate_v2(dataset, answered, na_probs=null_odds, na_prob_thresh=null_threshold)
    at_0 = scores if null_threshold == 0.0 else metric.evaluate_v2(dataset, answered, null_odds, 0.0)
    scores["f1_at_0"] = at_0["f1"]
    if "HasAns_f1" in scores:
        scores["always_answer_HasAns_f1"] = metric.evaluate_v2(dataset, answered)["HasAns_f1"]
    return scores
