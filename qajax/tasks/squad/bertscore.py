"""BERTScore of SQuAD predictions beside the official EM/F1: `qajax squad-eval --bertscore` and `qajax eval`.

Keys and scale follow the official script's: `bertscore_precision`, `bertscore_recall`, `bertscore_f1` on 0-100,
and for v2.0 the same keys prefixed `HasAns_` / `NoAns_` (a group with no questions is left out). The no-answer
rules are `qajax.metrics.bertscore.score_answers`'; as for EM/F1, a prediction whose na_prob exceeds
`na_prob_thresh` counts as "no answer". IDF weights, when asked for, come from every gold answer of the file.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qajax.errors import DataError
from qajax.files import read_json
from qajax.metrics.bertscore import BertScorer, score_answers
from qajax.tasks.squad.metric import _questions

KEYS = ("precision", "recall", "f1")


def evaluate_bertscore(
    dataset,
    predictions: Mapping[str, str],
    scorer: BertScorer,
    *,
    version_2: bool = True,
    idf: bool = False,
    baseline: tuple[float, float, float] | None = None,
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """BERTScore keys for `predictions` (id -> answer) on a SQuAD dataset (the file or its `data` list).

    v2.0: a missing prediction is an error, as in `metric.evaluate_v2`; v1.1: it scores 0, as there.
    """
    questions = _questions(dataset)
    missing = [q.qid for q in questions if q.qid not in predictions]
    if missing and version_2:
        raise DataError(f"no prediction for {len(missing)} of {len(questions)} questions, first {missing[0]!r}")
    answers = []
    for q in questions:
        thresholded = na_probs is not None and na_probs.get(q.qid, 0.0) > na_prob_thresh
        answers.append("" if thresholded else predictions.get(q.qid, ""))
    references = [q.references for q in questions]
    weights = scorer.idf([r for group in references for r in group]) if idf else None
    scores = np.stack(score_answers(scorer, answers, references, idf=weights, baseline=baseline), axis=1)

    def averages(rows: np.ndarray, prefix: str = "") -> dict[str, float]:
        means = scores[rows].astype(np.float64).mean(axis=0)
        return {f"{prefix}bertscore_{key}": 100.0 * float(v) for key, v in zip(KEYS, means, strict=True)}

    result = averages(np.arange(len(questions)))
    if version_2:
        # HasAns/NoAns by the raw answers list, as the official script groups them.
        has_answer = np.asarray([bool(q.references) for q in questions])
        for prefix, rows in (("HasAns_", has_answer), ("NoAns_", ~has_answer)):
            if rows.any():
                result.update(averages(rows, prefix))
    return result


def evaluate_bertscore_files(
    data_path, predictions_path, scorer: BertScorer, *, na_prob_path=None, na_prob_thresh: float = 1.0, **options
) -> dict[str, float]:
    """`evaluate_bertscore` on files, with v2.0 decided as `metric.evaluate_files` decides it."""
    dataset = read_json(data_path)
    if not isinstance(dataset, dict) or "data" not in dataset:
        raise DataError("expected a SQuAD file: a JSON object with a 'data' list", path=str(data_path))
    version_2 = dataset.get("version") == "v2.0" or any(q.marked_impossible for q in _questions(dataset["data"]))
    predictions = read_json(predictions_path)
    if not isinstance(predictions, dict):
        raise DataError("expected a JSON object mapping question id to an answer string", path=str(predictions_path))
    na_probs = None if na_prob_path is None else read_json(na_prob_path)
    return evaluate_bertscore(
        dataset, predictions, scorer, version_2=version_2, na_probs=na_probs, na_prob_thresh=na_prob_thresh, **options
    )
