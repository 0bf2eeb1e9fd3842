"""From start/end logits to answer texts: n-best spans over every window of every context, and the null score.

The rules follow the two references that published SQuAD numbers come from: Google's BERT `run_squad.py`
(`write_predictions`) and transformers' `utils_qa.py` (`postprocess_qa_predictions`). Where we differ from
both (spans are deduplicated across overlapping windows instead of filtered by "max context"), the docstring
of `postprocess` says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from qajax.files import atomic_write_text

# null_odds of a SQuAD 2.0 question with no valid span: "no answer" at any threshold a sweep tries, yet finite,
# so null_odds.json stays valid JSON (no Infinity) for the official script's --na-prob-file.
NO_CANDIDATE_NULL_ODDS = 1e9

# BERT's run_squad.py settings: the defaults of `postprocess`, of the task's config (task.default_config) and
# of `qajax eval / predict`.
N_BEST = 20
MAX_ANSWER_LENGTH = 30  # tokens


@dataclasses.dataclass(frozen=True)
class Prediction:
    text: str  # context[char_start:char_end]; "" for the null answer
    score: float  # start_logit + end_logit
    start_logit: float
    end_logit: float
    context_index: int  # the null answer: the context of the window that gave the minimum null score
    char_start: int  # -1 for the null answer
    char_end: int
    probability: float  # softmax over the question's n-best (the null answer included in SQuAD 2.0)

    def to_json(self) -> dict:
        fields = ("text", "probability", "start_logit", "end_logit", "context_index", "char_start", "char_end")
        return {name: getattr(self, name) for name in fields}


def _check_inputs(examples, features, start_logits, end_logits, n_best, max_answer_length):
    missing = [key for key in ("example_index", "context_index", "offsets") if key not in features]
    if missing:
        raise ValueError(f"features lack {missing}; expected the arrays that features.featurize returns")
    offsets = np.asarray(features["offsets"])  # [F, L, 2]
    if offsets.ndim != 3 or offsets.shape[2] != 2:
        raise ValueError(f"features['offsets'] has shape {offsets.shape}, expected [windows, tokens, 2]")
    for name, logits in (("start_logits", start_logits), ("end_logits", end_logits)):
        if logits.shape != offsets.shape[:2]:
            raise ValueError(
                f"{name} has shape {logits.shape}, but the features have [windows, tokens] = {offsets.shape[:2]}"
            )
        if not np.isfinite(logits).all():
            window, token = np.argwhere(~np.isfinite(logits))[0]
            raise ValueError(f"{name} has non-finite values (first at window {window}, token {token})")
    example_index = np.asarray(features["example_index"]).astype(np.int64)  # [F]
    context_index = np.asarray(features["context_index"]).astype(np.int64)  # [F]
    if example_index.shape != offsets.shape[:1] or context_index.shape != offsets.shape[:1]:
        raise ValueError(
            f"example_index {example_index.shape} and context_index {context_index.shape} must "
            f"have one entry per window ({offsets.shape[0]})"
        )
    if len(example_index) and (example_index.min() < 0 or example_index.max() >= len(examples)):
        raise ValueError(
            f"example_index ranges over [{example_index.min()}, {example_index.max()}], "
            f"but there are {len(examples)} examples"
        )
    num_contexts = np.array([len(example.contexts) for example in examples], np.int64)
    if np.any((context_index < 0) | (context_index >= num_contexts[example_index])):
        window = int(np.argmax((context_index < 0) | (context_index >= num_contexts[example_index])))
        raise ValueError(
            f"window {window} has context_index {context_index[window]}, but its example "
            f"{examples[example_index[window]].id!r} has {num_contexts[example_index[window]]} contexts"
        )
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"example ids repeat, e.g. {next(i for i in ids if ids.count(i) > 1)!r}")
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best ({n_best}) and max_answer_length ({max_answer_length}) must be at least 1")
    return example_index, context_index, offsets


def _candidates(start_logits, end_logits, offsets, n_best, max_answer_length):
    """Valid (window, start token, end token) pairs from each window's top-n_best starts and ends, as BERT and
    HF pick them: the top-k is taken over all real tokens first, and pairs outside the context are dropped
    after (BERT and HF rank padding too; here it is -inf)."""
    windows, tokens = start_logits.shape
    k = min(n_best, tokens)
    starts = np.argpartition(-start_logits, k - 1, axis=1)[:, :k]  # [F, k]; their order does not matter
    ends = np.argpartition(-end_logits, k - 1, axis=1)[:, :k]
    rows = np.arange(windows)[:, None]
    is_context = (offsets[..., 0] >= 0) & (offsets[..., 1] >= 0)  # [F, L]; (-1, -1): question, special, padding
    char_start, char_end = offsets[rows, starts, 0], offsets[rows, ends, 1]  # [F, k]
    length = ends[:, None, :] - starts[:, :, None] + 1  # [F, k, k] tokens
    valid = (length >= 1) & (length <= max_answer_length)
    valid &= is_context[rows, starts][:, :, None] & is_context[rows, ends][:, None, :]
    valid &= char_end[:, None, :] > char_start[:, :, None]  # an empty span would read as "no answer"
    window, i, j = np.nonzero(valid)
    start, end = starts[window, i], ends[window, j]
    return window, start, end, char_start[window, i], char_end[window, j]


def _first_of_runs(*keys) -> np.ndarray:
    """True where any of the (already sorted) key arrays changes from the previous element."""
    changed = np.zeros(len(keys[0]), bool)
    changed[:1] = True
    for key in keys:
        changed[1:] |= key[1:] != key[:-1]
    return changed


def _span(example, context: int, char_start: int, char_end: int, score: float, start: float, end: float) -> tuple:
    text = example.contexts[context]
    if char_end > len(text):
        raise ValueError(
            f"example {example.id!r}: offsets reach character {char_end}, context {context} has {len(text)}"
        )
    return text[char_start:char_end], score, start, end, context, char_start, char_end


def _rank(spans: list[tuple], null: tuple | None) -> list[Prediction]:
    """One question's n-best, best first, with softmax probabilities over all of it; `null` joins when given."""
    entries = spans + ([null] if null else [])
    entries.sort(key=lambda entry: -entry[1])  # stable: a span wins a tie with the null, which comes last
    scores = np.array([entry[1] for entry in entries])
    weights = np.exp(scores - scores.max()) if entries else scores
    probabilities = (weights / weights.sum()).tolist()
    return [Prediction(*entry, probability=p) for entry, p in zip(entries, probabilities, strict=True)]


def postprocess(
    examples: Sequence,
    features: Mapping[str, np.ndarray],
    start_logits: np.ndarray,  # [F, L]
    end_logits: np.ndarray,  # [F, L]
    *,
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
    null_threshold: float = 0.0,
    version_2: bool = True,
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Returns (predictions id -> text, nbest id -> list of Prediction.to_json(), null_odds id -> float).

    - Candidates (BERT, HF): in each window, every pair of the `n_best` highest start and `n_best` highest end
      tokens with start <= end, at most `max_answer_length` tokens, both tokens in the context (offsets not
      (-1, -1)) and a non-empty character span; score = start_logit + end_logit. All windows of all contexts
      of a question compete.
    - Ours: one (context, char span) seen in several overlapping windows counts once, with its best score (BERT
      dedupes by text and filters starts by "max context"; HF does neither). The `n_best` best remain.
    - Text: `context[char_start:char_end]` of the original context (HF), not detokenized pieces.
    - Null (version_2; BERT, HF): the minimum over the question's windows of start_logit[0] + end_logit[0]. It
      joins the n-best, sorted in by score, and the softmax giving `probability` covers it (BERT, HF).
    - null_odds = null score - best non-null score (BERT's and HF's score diff), the official script's
      na_prob; the prediction is "" when null_odds > null_threshold, else the best non-null text. A question
      with no valid span (or no window) predicts "" with null_odds = NO_CANDIDATE_NULL_ODDS (BERT crashes there,
      HF inserts a fake "empty" answer; we keep the n-best honest and the JSON finite).
    - version_2=False (SQuAD v1.1): no null in the n-best, the best span always wins, null_odds is {};
      "" only when a question has no valid span (its n-best is then empty).
    - Ties go to the earlier window, and a span beats the null. Non-finite logits raise ValueError.
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    example_index, context_index, offsets = _check_inputs(
        examples, features, start_logits, end_logits, n_best, max_answer_length
    )
    # Padding never holds an answer, and a model trained on batches trimmed by length never learned to score
    # it low: it must not crowd the top-k.
    if "attention_mask" in features:
        padding = np.asarray(features["attention_mask"])[:, : start_logits.shape[1]] == 0
        start_logits, end_logits = (np.where(padding, -np.inf, x) for x in (start_logits, end_logits))
    columns, bounds = _n_best_spans(  # steps 1 to 3
        start_logits, end_logits, offsets, example_index, context_index, len(examples), n_best, max_answer_length
    )
    null_scores, null_window = _null_windows(start_logits, end_logits, example_index)  # step 4
    # Step 5: per question, plain Python over at most n_best + 1 entries.
    predictions, nbest, null_odds = {}, {}, {}
    for e, ex in enumerate(examples):
        spans = [_span(ex, *row) for row in zip(*(c[bounds[e] : bounds[e + 1]] for c in columns), strict=True)]
        null = None
        if version_2 and e in null_window:
            w = null_window[e]
            null_logits = float(start_logits[w, 0]), float(end_logits[w, 0])
            null = ("", float(null_scores[w]), *null_logits, int(context_index[w]), -1, -1)
        if version_2:  # spans imply a window, hence a null
            null_odds[ex.id] = null[1] - spans[0][1] if spans else NO_CANDIDATE_NULL_ODDS
        answered = bool(spans) and not (version_2 and null_odds[ex.id] > null_threshold)
        predictions[ex.id] = spans[0][0] if answered else ""
        nbest[ex.id] = [prediction.to_json() for prediction in _rank(spans, null)]
    return predictions, nbest, null_odds


def _n_best_spans(start_logits, end_logits, offsets, example_index, context_index, num_examples: int, n_best: int,
                  max_answer_length: int) -> tuple[list[list], np.ndarray]:  # fmt: skip
    """(columns context, char_start, char_end, score, start_logit, end_logit of the kept spans, each a list
    grouped by example and best first; bounds [num_examples + 1]: example e's spans are bounds[e]:bounds[e+1])."""
    # Step 1: valid pairs of every window, with float64 scores.
    window, start, end, char_start, char_end = _candidates(start_logits, end_logits, offsets, n_best, max_answer_length)
    start_logit = start_logits[window, start].astype(np.float64)
    end_logit = end_logits[window, end].astype(np.float64)
    score = start_logit + end_logit
    example, context = example_index[window], context_index[window]
    # Step 2: one candidate per (example, context, char span), the best-scoring one (ties: the first window).
    order = np.lexsort((window, -score, char_end, char_start, context, example))
    keep = order[_first_of_runs(example[order], context[order], char_start[order], char_end[order])]
    # Step 3: the n_best best per example, best first.
    keep = keep[np.lexsort((window[keep], -score[keep], example[keep]))]
    group_start = np.searchsorted(example[keep], example[keep], side="left")
    keep = keep[np.arange(len(keep)) - group_start < n_best]
    bounds = np.searchsorted(example[keep], np.arange(num_examples + 1))
    columns = [a[keep].tolist() for a in (context, char_start, char_end, score, start_logit, end_logit)]
    return columns, bounds


def _null_windows(start_logits, end_logits, example_index) -> tuple[np.ndarray, dict[int, int]]:
    """Step 4: (null score of every window [F] in float64, example -> its lowest-scoring window (ties: the
    first window))."""
    null_scores = start_logits[:, 0].astype(np.float64) + end_logits[:, 0].astype(np.float64)  # [F]
    by_null = np.lexsort((np.arange(len(null_scores)), null_scores, example_index))
    first = by_null[_first_of_runs(example_index[by_null])]
    return null_scores, dict(zip(example_index[first].tolist(), first.tolist(), strict=True))


def _dumps(value, name: str) -> str:
    try:
        return json.dumps(value, indent=2, allow_nan=False)  # ASCII escapes: readable whatever the locale
    except ValueError as error:
        raise ValueError(f"{name}: {error} (NaN or Infinity would make invalid JSON)") from error


def write_predictions(out_dir: str | os.PathLike, predictions, nbest, null_odds) -> None:
    """Writes predictions.json (id -> text), nbest_predictions.json (id -> n-best list) and null_odds.json
    (id -> float: the official evaluate-v2.0.py --na-prob-file; {} for SQuAD v1.1), each atomically."""
    bad = [qid for qid, odds in null_odds.items() if not math.isfinite(odds)]
    if bad:
        raise ValueError(f"null_odds of {len(bad)} questions are not finite, first {bad[0]!r}: {null_odds[bad[0]]}")
    out_dir = Path(out_dir)
    for name, value in (
        ("predictions.json", predictions),
        ("nbest_predictions.json", nbest),
        ("null_odds.json", null_odds),
    ):
        atomic_write_text(out_dir / name, _dumps(value, str(out_dir / name)) + "\n")


def best_span_texts(nbest) -> dict[str, str]:
    """{id: the best non-null n-best text, "" if none}: every question answered. With the null odds as
    na_probs and the threshold the predictions were cut at, the official v2.0 metric scores these exactly as
    it scores the cut predictions (a question over the cut counts as "no answer" either way), and its
    best_exact/best_f1 sweep then covers every threshold, not only those that blank more answers."""
    return {qid: next((n["text"] for n in entries if n["char_start"] >= 0), "") for qid, entries in nbest.items()}
