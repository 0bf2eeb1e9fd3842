"""SQuAD examples -> fixed-length windows ("features") with character offsets and span labels.

One row per window: `[CLS] question [SEP] context-window [SEP]`, right-padded. A context longer than the
room left by the question is cut into overlapping windows by the fast tokenizer itself (`stride` =
`doc_stride` tokens of overlap, HF run_qa semantics). Multi-context examples window each context separately
with the same question. Everything after the tokenizer call is numpy over [features, seq] arrays.

Label rule (BERT / HF run_qa, made exact at the edges): the first answer's text is stripped of leading and
trailing whitespace; its label in a window is the tightest token span covering it: the first context token
that ends after the answer's first character and the last context token that starts before its end. A span
that starts or ends inside a token therefore takes the whole token. The window gets (0, 0) -- the [CLS]
token -- when the example has no answer, the answer is in another context, or the answer's characters are
not all inside the window's context tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qajax.files import atomic_write_bytes

FORMAT_VERSION = 1  # part of the cache key: bump when the arrays' meaning changes
_CHUNK_PAIRS = 1024  # (question, context) pairs per tokenizer call: bounds the Python lists held at once

# The windows of BERT's SQuAD runs (run_squad.py, HF run_qa): the defaults of FeatureConfig, of the task's
# config (task.default_config) and of `qajax eval / predict`.
MAX_SEQ_LENGTH = 384
DOC_STRIDE = 128
MAX_QUERY_LENGTH = 64


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    max_seq_length: int = MAX_SEQ_LENGTH
    doc_stride: int = DOC_STRIDE  # overlap between consecutive windows, in tokens (the fast tokenizer's `stride`)
    max_query_length: int = MAX_QUERY_LENGTH  # longer questions keep their first max_query_length tokens
    pad_to_multiple_of: int | None = None  # None: always pad to max_seq_length (static shapes)

    def __post_init__(self):
        for name in ("max_seq_length", "max_query_length", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"FeatureConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.doc_stride, int) or not 0 <= self.doc_stride < self.max_seq_length:
            raise ValueError(f"FeatureConfig.doc_stride must be in [0, max_seq_length), got {self.doc_stride!r}")


def featurize(examples: Sequence, tokenizer, config: FeatureConfig, *, for_training: bool) -> dict[str, np.ndarray]:
    """Returns int32 arrays, one row per window: input_ids, attention_mask, token_type_ids [F, L];
    example_index, context_index [F]; offsets [F, L, 2] (character (start, end) in that context for context
    tokens, (-1, -1) elsewhere); with `for_training` also start_positions, end_positions [F]."""
    _check_tokenizer(tokenizer)
    examples = list(examples)
    questions = _truncated_questions(examples, tokenizer, config)
    pairs = [(i, j) for i, ex in enumerate(examples) for j in range(len(ex.contexts))]  # (example, context)
    pair_questions = [questions[i] for i, _ in pairs]
    pair_contexts = [examples[i].contexts[j] for i, j in pairs]
    pair_example, pair_context = np.array(pairs, np.int32).reshape(-1, 2).T

    # 1. Tokenize in chunks of pairs; `pair` maps each window to its (question, context) pair.
    chunks = [
        _tokenize(pair_questions[s : s + _CHUNK_PAIRS], pair_contexts[s : s + _CHUNK_PAIRS], tokenizer, config, s)
        for s in range(0, len(pair_questions), _CHUNK_PAIRS)
    ]
    if not chunks:
        chunks = [_tokenize([], [], tokenizer, config, 0)]
    arrays = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    pair = arrays.pop("pair")
    in_context = arrays.pop("in_context")  # [F, L] bool
    out = {
        "input_ids": arrays["input_ids"],
        "attention_mask": arrays["attention_mask"],
        "token_type_ids": arrays["token_type_ids"],
        "example_index": pair_example[pair],
        "context_index": pair_context[pair],
        "offsets": np.where(in_context[..., None], arrays["offsets"], np.int32(-1)),
    }

    # 2. Labels, vectorized over windows.
    if for_training:
        answer_start, answer_end, answer_context = _answer_spans(examples)
        ex = out["example_index"]
        out["start_positions"], out["end_positions"] = _window_labels(
            out["offsets"], in_context, answer_start[ex], answer_end[ex], answer_context[ex] == out["context_index"]
        )

    # 3. Optional shorter padding: one length for all rows, the longest row rounded up.
    if config.pad_to_multiple_of is not None and len(pair):
        k = config.pad_to_multiple_of
        length = min(config.max_seq_length, -(-int(out["attention_mask"].sum(1).max()) // k) * k)
        for key in ("input_ids", "attention_mask", "token_type_ids", "offsets"):
            out[key] = np.ascontiguousarray(out[key][:, :length])
    return out


def featurize_cached(
    examples: Sequence, tokenizer, config: FeatureConfig, *, for_training: bool, cache_dir: str | os.PathLike
) -> dict[str, np.ndarray]:
    """`featurize`, stored as `<cache_dir>/squad-features-<key>.npz` (see `cache_key`); a hit reads the file
    and tokenizes nothing."""
    examples = list(examples)  # read twice: by the key and by featurize
    path = Path(cache_dir) / f"squad-features-{cache_key(examples, tokenizer, config, for_training=for_training)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    out = featurize(examples, tokenizer, config, for_training=for_training)
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    atomic_write_bytes(path, buffer.getvalue())
    return out


def cache_key(examples: Sequence, tokenizer, config: FeatureConfig, *, for_training: bool) -> str:
    """sha256 of FORMAT_VERSION, the tokenizer's serialization, the config, `for_training` and every example
    field, in order."""
    digest = hashlib.sha256()
    # The backend's truncation/padding state changes with every call (transformers sets it per call and
    # leaves it): drop it, keep the vocabulary, normalizer, pre-tokenizer, template and added tokens.
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    for volatile in ("truncation", "padding"):
        backend.pop(volatile, None)
    tokenizer_hash = hashlib.sha256(json.dumps(backend, sort_keys=True).encode()).hexdigest()
    head = [FORMAT_VERSION, tokenizer_hash, dataclasses.asdict(config), bool(for_training)]
    digest.update(json.dumps(head, sort_keys=True).encode())
    for ex in examples:  # each record is one self-delimiting JSON list
        answers = [[a.text, a.start, a.context_index] for a in ex.answers]
        record = [ex.id, ex.question, list(ex.contexts), answers, ex.title]
        digest.update(json.dumps(record, ensure_ascii=False).encode())
    return digest.hexdigest()[:40]


def _check_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"featurize needs a fast tokenizer (character offsets), got {type(tokenizer).__name__}")
    if getattr(tokenizer, "truncation_side", "right") != "right":
        raise ValueError(f"featurize needs truncation_side='right', got {tokenizer.truncation_side!r}")


def _truncated_questions(examples: list, tokenizer, config: FeatureConfig) -> list[str]:
    """Cuts each question after its max_query_length-th token (at that token's end character) and checks
    that the windows keep more than doc_stride context tokens: the tokenizer panics otherwise."""
    questions = [ex.question for ex in examples]
    if not questions:
        return []
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    cut = [i for i, n in enumerate(lengths) if n > config.max_query_length]
    for i in cut:
        questions[i] = questions[i][: encoded["offset_mapping"][i][config.max_query_length - 1][1]]
    if cut:  # re-count: a cut word may tokenize differently (not for WordPiece, possibly for BPE)
        recount = tokenizer([questions[i] for i in cut], add_special_tokens=False)["input_ids"]
        for i, ids in zip(cut, recount, strict=True):
            lengths[i] = len(ids)
    room = config.max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - np.array(lengths)
    bad = np.flatnonzero(room <= config.doc_stride)
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"example {examples[i].id!r}: its question has {lengths[i]} tokens (max_query_length="
            f"{config.max_query_length}), leaving {int(room[i])} context tokens per window in max_seq_length="
            f"{config.max_seq_length}; at least doc_stride + 1 = {config.doc_stride + 1} must fit "
            f"({len(bad)} example(s) affected): lower max_query_length or doc_stride, or raise max_seq_length"
        )
    return questions


def _tokenize(questions: list[str], contexts: list[str], tokenizer, config: FeatureConfig, first_pair: int) -> dict:
    length = config.max_seq_length
    if not questions:
        rows = np.zeros((0, length), np.int32)  # no examples: the same keys, zero rows
        offsets = np.zeros((0, length, 2), np.int32)
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {**dict.fromkeys(keys, rows), "offsets": offsets, "in_context": rows.astype(bool), "pair": rows[:, 0]}
    encoded = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=length,
        stride=config.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        padding="max_length",
        padding_side="right",  # [CLS] at index 0, the null-answer label
    )
    chain = itertools.chain.from_iterable  # fromiter on flat (start, end) ints: 2x np.asarray on nested lists
    # sequence_ids: None (special/padding), 0 (question), 1 (context); None becomes NaN.
    sequence_ids = np.array([e.sequence_ids for e in encoded.encodings], np.float32)
    return {
        "input_ids": np.asarray(encoded["input_ids"], np.int32),
        "attention_mask": np.asarray(encoded["attention_mask"], np.int32),
        "token_type_ids": np.asarray(encoded["token_type_ids"], np.int32),
        "offsets": np.fromiter(chain(chain(encoded["offset_mapping"])), np.int32).reshape(-1, length, 2),
        "in_context": sequence_ids == 1,
        "pair": np.asarray(encoded["overflow_to_sample_mapping"], np.int32) + first_pair,
    }


def _answer_spans(examples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: the first answer's [start, end) characters with whitespace stripped, and its context;
    context -1 when there is no answer or its text is only whitespace."""
    start, end, context = (np.full(len(examples), -1, np.int64) for _ in range(3))
    for i, ex in enumerate(examples):
        if not ex.answers:
            continue
        answer = ex.answers[0]
        if not 0 <= answer.context_index < len(ex.contexts):
            raise ValueError(
                f"example {ex.id!r}: answer context_index {answer.context_index} not in [0, {len(ex.contexts)})"
            )
        context_length = len(ex.contexts[answer.context_index])
        if not 0 <= answer.start <= answer.start + len(answer.text) <= context_length:
            raise ValueError(
                f"example {ex.id!r}: answer {answer.text!r} at character {answer.start} runs outside its context "
                f"of {context_length} characters"
            )
        stripped = answer.text.strip()
        if stripped:
            start[i] = answer.start + len(answer.text) - len(answer.text.lstrip())
            end[i] = start[i] + len(stripped)
            context[i] = answer.context_index
    return start, end, context


def _window_labels(
    offsets: np.ndarray,  # [F, L, 2], -1 outside the context
    in_context: np.ndarray,  # [F, L] bool
    answer_start: np.ndarray,  # [F] characters
    answer_end: np.ndarray,  # [F]
    answer_here: np.ndarray,  # [F] bool: the answer is in this window's context
) -> tuple[np.ndarray, np.ndarray]:
    num_tokens = offsets.shape[1]
    has_context = in_context.any(1)
    rows = np.arange(len(offsets))
    first = np.argmax(in_context, 1)
    last = num_tokens - 1 - np.argmax(in_context[:, ::-1], 1)
    starts, ends = offsets[..., 0], offsets[..., 1]
    inside = answer_here & has_context
    inside &= (starts[rows, first] <= answer_start) & (answer_end <= ends[rows, last])
    covering_start = in_context & (ends > answer_start[:, None])
    covering_end = in_context & (starts < answer_end[:, None])
    start = np.argmax(covering_start, 1)
    end = num_tokens - 1 - np.argmax(covering_end[:, ::-1], 1)
    # A span of characters that no token covers (e.g. only dropped control characters) has end < start.
    inside &= covering_start.any(1) & covering_end.any(1) & (start <= end)
    return np.where(inside, start, 0).astype(np.int32), np.where(inside, end, 0).astype(np.int32)
