"""score_predictions against the official metric run on the prediction file itself: the texts a threshold
keeps, each cut made by hand."""

from __future__ import annotations

import math

import pytest

from qajax.tasks.squad import metric
from qajax.tasks.squad.data import Answer, Example
from qajax.tasks.squad.scoring import metric_dataset, score_predictions

CONTEXT = "w1 w2 w3 w7"
EXAMPLES = [  # q0, q1 answerable (w1 and w7), q2 unanswerable
    Example("q0", "?", (CONTEXT,), (Answer("w1", 0),)),
    Example("q1", "?", (CONTEXT,), (Answer("w7", 9),)),
    Example("q2", "?", (CONTEXT,), ()),
]
# What postprocess returns: the n-best (the null has char_start -1) and null odds = null - best span score.
NBEST = {
    "q0": [{"text": "w1", "char_start": 0}, {"text": "", "char_start": -1}],
    "q1": [{"text": "", "char_start": -1}, {"text": "w2", "char_start": 3}],
    "q2": [{"text": "", "char_start": -1}, {"text": "w3", "char_start": 6}],
}
NULL_ODDS = {"q0": -1.0, "q1": 2.0, "q2": 3.0}
BEST_SPANS = {"q0": "w1", "q1": "w2", "q2": "w3"}


def _cut(threshold: float) -> dict[str, str]:
    """The prediction file at `threshold`: "" where the null odds exceed it."""
    return {qid: "" if NULL_ODDS[qid] > threshold else text for qid, text in BEST_SPANS.items()}


def _official(predictions: dict[str, str]) -> dict:
    return metric.evaluate_v2(metric_dataset(EXAMPLES), predictions)


@pytest.mark.parametrize("threshold", [-math.inf, -2.0, 0.0, 2.5, math.inf])
def test_v2_scores_are_those_of_the_prediction_file_at_the_threshold(threshold):
    scores = score_predictions(EXAMPLES, _cut(threshold), NBEST, NULL_ODDS, null_threshold=threshold, version_2=True)
    expected = _official(_cut(threshold))
    for key in ("exact", "f1", "HasAns_f1", "NoAns_f1", "total"):
        assert scores[key] == pytest.approx(expected[key])
    assert scores["f1_at_0"] == pytest.approx(_official(_cut(0.0))["f1"])  # the model's own decision
    assert scores["always_answer_HasAns_f1"] == pytest.approx(_official(_cut(math.inf))["HasAns_f1"])
    # best_f1 sweeps every cut, above the one the predictions were made at too (distinct odds: no tie quirk).
    best = max(_official(_cut(c))["f1"] for c in (-math.inf, *NULL_ODDS.values()))
    assert scores["best_f1"] == pytest.approx(best) == pytest.approx(100 / 3 * 2)  # answer q0 alone
    assert scores["best_f1_thresh"] == -1.0


def test_v1_scores_the_predictions_as_they_are():
    answerable = EXAMPLES[:2]
    predictions = {"q0": "w1", "q1": "w2"}
    scores = score_predictions(answerable, predictions, NBEST, {}, null_threshold=0.0, version_2=False)
    assert scores == metric.evaluate_v1(metric_dataset(answerable), predictions)
    assert scores == {"exact_match": 50.0, "f1": 50.0}
