"""SQuAD v1.1 and v2.0 scores with the official evaluation scripts' semantics, quirks included.

Published SQuAD numbers come from `evaluate-v1.1.py` and `evaluate-v2.0.py` (SQuAD explorer site), so
every rule here follows them to the last bit of the float sums; where a rule looks odd, the comment
says it is theirs. Where the scripts crash (KeyError, ZeroDivisionError) we raise `DataError` instead.
"""

from __future__ import annotations

import collections
import math
import re
import string
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from qajax.errors import DataError
from qajax.files import read_json

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only: "’" or "–" survive, as in the scripts
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, drop the whole words a/an/the, collapse whitespace, in that order.

    Punctuation goes first, so "the-end" becomes the single word "theend" and keeps its "the".
    """
    lowered = s.lower()
    without_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", without_punctuation).split())


def exact_match(prediction: str, reference: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(reference))


def _overlap_f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    """Token F1 over the multiset overlap; v1.1's whole rule, so no overlap (an empty side too) scores 0."""
    num_same = sum((collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(reference_tokens)
    # The scripts' own expression (not 2*same/(len+len)), so that sums agree with theirs to the last bit.
    return (2 * precision * recall) / (precision + recall)


def f1(prediction: str, reference: str) -> float:
    """v2.0 token F1: when either side has no tokens, 1.0 if neither has any, else 0.0."""
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)
    return _overlap_f1(prediction_tokens, reference_tokens)


class _Question(NamedTuple):
    qid: str
    references: list[str]  # answer texts as in the file, before any normalization
    marked_impossible: bool  # the question carries an `is_impossible` field (a v2.0 file)


def _field(record: Any, key: str, kind: type, path: str | None, where: str) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, found {type(record).__name__}", path=path, where=where)
    if key not in record:
        raise DataError(f"missing field {key!r}", path=path, where=where)
    if not isinstance(record[key], kind):
        found = type(record[key]).__name__
        raise DataError(f"field {key!r} must be a {kind.__name__}, found {found}", path=path, where=where)
    return record[key]


def _questions(dataset: Any, path: str | None = None) -> list[_Question]:
    """Reads the official layout; `dataset` is the file's `data` list (as the scripts take it) or the whole file."""
    articles = dataset["data"] if isinstance(dataset, dict) and "data" in dataset else dataset
    if not isinstance(articles, list):
        raise DataError(f"expected SQuAD's 'data' list of articles, found {type(articles).__name__}", path=path)
    questions: list[_Question] = []
    seen: set[str] = set()
    for i, article in enumerate(articles):
        for j, paragraph in enumerate(_field(article, "paragraphs", list, path, f"data[{i}]")):
            for k, qa in enumerate(_field(paragraph, "qas", list, path, f"data[{i}].paragraphs[{j}]")):
                where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                where = f"question {_field(qa, 'id', str, path, where)!r} ({where})"
                # The scripts key everything by id, so a repeated id would silently keep only one of them.
                if qa["id"] in seen:
                    raise DataError("question id appears twice", path=path, where=where)
                seen.add(qa["id"])
                answers = _field(qa, "answers", list, path, where)
                texts = [_field(a, "text", str, path, f"{where} answers[{n}]") for n, a in enumerate(answers)]
                questions.append(_Question(qa["id"], texts, "is_impossible" in qa))
    if not questions:
        raise DataError("the dataset has no questions to score", path=path)
    return questions


def _check_mapping(mapping: Any, what: str, is_valid: Callable[[Any], bool], path: str | None) -> None:
    if not isinstance(mapping, Mapping):
        found = type(mapping).__name__
        raise DataError(f"expected a JSON object mapping question id to {what}, found {found}", path=path)
    for qid, value in mapping.items():
        if not is_valid(value):
            raise DataError(f"expected {what}, found {value!r:.80}", path=path, where=f"question {qid!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _averages(exact: dict[str, float], f1s: dict[str, float], qids: list[str]) -> dict[str, float | int]:
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
        "f1": 100.0 * sum(f1s[q] for q in qids) / len(qids),
        "total": len(qids),
    }


def _best_threshold(raw: dict[str, float], predictions, na_probs, has_answer: dict[str, bool]) -> tuple[float, float]:
    """The official sweep: the best score over thresholds at each question's na_prob, and that threshold.

    It starts from "no answer everywhere" (every NoAns question right) and keeps predictions one question at
    a time in increasing na_prob. Two official quirks matter: ties are not grouped (the sweep may stop inside
    a run of equal na_probs, at a score no threshold gives; the order inside the run is `na_probs`' own key
    order), and a kept prediction on a NoAns question costs 1 whenever its string is non-empty, even " ".
    """
    score = best_score = sum(not flag for flag in has_answer.values())
    best_thresh = 0.0  # reported as is when no cut beats "no answer everywhere", whatever the na_prob scale
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in raw:
            continue
        score += raw[qid] if has_answer[qid] else (-1 if predictions[qid] else 0)
        if score > best_score:
            best_score, best_thresh = score, na_probs[qid]
    return 100.0 * best_score / len(raw), best_thresh


def _score_v2(questions, predictions, na_probs, na_prob_thresh, predictions_path=None, na_prob_path=None) -> dict:
    _check_mapping(predictions, "an answer string", lambda v: isinstance(v, str), predictions_path)
    missing = [q.qid for q in questions if q.qid not in predictions]
    if missing:
        message = f"no prediction for {len(missing)} of {len(questions)} questions, first {missing[0]!r}"
        raise DataError(message, path=predictions_path, where=f"question {missing[0]!r}")
    na_probs_given = na_probs is not None
    if na_probs_given:
        _check_mapping(na_probs, "a number", _is_number, na_prob_path)
        lacking = [q.qid for q in questions if q.qid not in na_probs]
        if lacking:
            message = f"no na_prob for {len(lacking)} of {len(questions)} questions, first {lacking[0]!r}"
            raise DataError(message, path=na_prob_path, where=f"question {lacking[0]!r}")
    else:
        na_probs = dict.fromkeys(predictions, 0.0)  # the script's default; 0.0 > 1.0 never replaces a prediction

    # HasAns/NoAns follow the raw answers list, while scoring drops references that normalize to nothing:
    # a question whose only answer is "the" is HasAns, yet only "" (or "a", ...) matches it. Both are the script's.
    has_answer = {q.qid: bool(q.references) for q in questions}
    exact_raw, f1_raw = {}, {}
    for q in questions:
        references = [r for r in q.references if normalize_answer(r)] or [""]
        exact_raw[q.qid] = max(exact_match(predictions[q.qid], r) for r in references)
        f1_raw[q.qid] = max(f1(predictions[q.qid], r) for r in references)

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        # Above the threshold the answer becomes "", right exactly for the NoAns questions.
        return {q: float(not has_answer[q]) if na_probs[q] > na_prob_thresh else s for q, s in raw.items()}

    exact, f1s = thresholded(exact_raw), thresholded(f1_raw)
    result = _averages(exact, f1s, list(exact))
    for prefix, flag in (("HasAns", True), ("NoAns", False)):
        group = [q for q in exact if has_answer[q] == flag]
        if group:  # the script leaves out an empty group's keys rather than divide by zero
            result.update({f"{prefix}_{key}": value for key, value in _averages(exact, f1s, group).items()})
    if na_probs_given:  # the script's gate is the na-prob file itself, not the default zeros
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, best_thresh = _best_threshold(raw, predictions, na_probs, has_answer)
            result[f"best_{name}"], result[f"best_{name}_thresh"] = best, best_thresh
    return result


def evaluate_v2(dataset, predictions: Mapping[str, str], na_probs=None, na_prob_thresh: float = 1.0) -> dict:
    """SQuAD v2.0 scores, keyed and scaled (0-100) as `evaluate-v2.0.py` prints them.

    A prediction whose na_prob exceeds `na_prob_thresh` counts as "no answer". `best_*` keys appear only when
    `na_probs` is given, as in the script; pass zeros for every id to get them anyway (transformers'
    `squad_evaluate` does that by default). Missing predictions: the script prints "Missing prediction for
    <id>", leaves the question out of `exact`/`f1`/`total`, then crashes with a KeyError when it averages the
    HasAns or NoAns group holding that id, so it never reports a score; we raise `DataError` naming the id.
    v1.1 differs: a missing prediction scores 0 and still counts in the total (see `evaluate_v1`).
    Predictions for ids not in the dataset are ignored, as in the script.
    """
    return _score_v2(_questions(dataset), predictions, na_probs, na_prob_thresh)


def _score_v1(questions: list[_Question], predictions, data_path=None, predictions_path=None) -> dict:
    _check_mapping(predictions, "an answer string", lambda v: isinstance(v, str), predictions_path)
    exact_sum = f1_sum = 0
    missing = []
    for q in questions:
        if q.qid not in predictions:
            missing.append(q.qid)
            continue
        if not q.references:  # the v1.1 script would fail on max() over no answers
            message = "no reference answers; score unanswerable questions with v2.0"
            raise DataError(message, path=data_path, where=f"question {q.qid!r}")
        prediction_tokens = normalize_answer(predictions[q.qid]).split()
        # v1.1 keeps references that normalize to nothing, and scores F1 with no empty-side rule.
        exact_sum += max(exact_match(predictions[q.qid], r) for r in q.references)
        f1_sum += max(_overlap_f1(prediction_tokens, normalize_answer(r).split()) for r in q.references)
    if missing:
        where = f" in {predictions_path}" if predictions_path else ""
        warnings.warn(f"{len(missing)} questions unanswered{where} (first {missing[0]!r}) score 0", stacklevel=3)
    return {"exact_match": 100.0 * exact_sum / len(questions), "f1": 100.0 * f1_sum / len(questions)}


def evaluate_v1(dataset, predictions: Mapping[str, str]) -> dict:
    """SQuAD v1.1 scores as `evaluate-v1.1.py` prints them: `exact_match` and `f1` on the 0-100 scale.

    Unlike v2.0: a missing prediction scores 0 and counts in the total (the script writes a note to stderr;
    we issue a `UserWarning`), every reference is kept even if it normalizes to nothing (so "" matches
    "the" exactly), and F1 is 0 whenever no token overlaps, an empty prediction against an empty
    reference included.
    """
    return _score_v1(_questions(dataset), predictions)


def evaluate_files(data_path, predictions_path, na_prob_path=None, na_prob_thresh: float = 1.0) -> dict:
    """Scores a predictions file (id -> answer) against a SQuAD file, with optional na_prob file (id -> number).

    v2.0 semantics when the file's `version` is "v2.0" or any question has an `is_impossible` field, else v1.1.
    """
    data_path, predictions_path = str(data_path), str(predictions_path)
    dataset = read_json(data_path)
    if not isinstance(dataset, dict) or "data" not in dataset:
        raise DataError("expected a SQuAD file: a JSON object with a 'data' list", path=data_path)
    questions = _questions(dataset["data"], data_path)
    predictions = read_json(predictions_path)
    if dataset.get("version") == "v2.0" or any(q.marked_impossible for q in questions):
        na_probs = None if na_prob_path is None else read_json(na_prob_path)
        na_prob_path = None if na_prob_path is None else str(na_prob_path)
        return _score_v2(questions, predictions, na_probs, na_prob_thresh, predictions_path, na_prob_path)
    if na_prob_path is not None:
        message = f"is SQuAD v1.1 (version {dataset.get('version')!r}, no 'is_impossible'); na_probs need v2.0"
        raise DataError(message, path=data_path)
    return _score_v1(questions, predictions, data_path, predictions_path)
