"""BERTScore (Zhang et al., ICLR 2020, arXiv:1904.09675) computed with qajax's own encoders.

    scorer = BertScorer.from_pretrained("path/to/hf-folder", layer=4)
    p, r, f = scorer.score(candidates, references, idf=scorer.idf(references))

Each text becomes the unit-normalised hidden states of one encoder layer (0 = the embedding output). A candidate
token's precision is its best cosine against any reference token, a reference token's recall its best cosine
against any candidate token (greedy matching, paper eq. 1-2); P and R are the weighted means of those over the
tokens, F1 their harmonic mean. Every rule below follows the `bert-score` package (0.3.13) so that the numbers
agree with it to float rounding:

- text is stripped and tokenized with the special tokens ([CLS] ... [SEP]) and truncated to the model's length;
- special tokens weigh 0 in the means, yet stay in the matching: a token may take its best cosine from the
  other side's [CLS] or [SEP], as in the package (and so in every published BERTScore);
- IDF weights come from the references: log((M + 1) / (df + 1)) over M reference texts, log(M + 1) for a
  token no reference holds; without IDF every other token weighs 1;
- a candidate or reference without tokens scores P = R = F1 = 0;
- several references per candidate take the maximum of P, of R and of F1 separately, as EM/F1 do;
- a baseline (b_P, b_R, b_F) rescales each score to (score - b) / (1 - b), after the maximum.

The one difference: padding never takes part in the matching. The package multiplies the similarities by the
padding mask, so a padded position offers a cosine of 0, which wins wherever every real cosine is negative and
makes a score depend on what else is in its batch; here a score depends on its pair alone.

`score_answers` adds the rules SQuAD 2.0 needs on top (empty answers, several gold answers).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qajax.errors import CheckpointError, ConfigError, DataError

MIN_BUCKET = 16  # shortest padded length; buckets double from here up to the model's maximum
PAIRS_PER_CHUNK = 256  # pairs matched together on the host
_PADDING_COSINE = -2.0  # below any real cosine, so a padded position never wins a maximum


class Scores(NamedTuple):
    precision: np.ndarray  # [pairs] float32
    recall: np.ndarray  # [pairs]
    f1: np.ndarray  # [pairs]


class IdfWeights(NamedTuple):
    weights: Mapping[int, float]  # token id -> log((M + 1) / (df + 1))
    unseen: float  # log(M + 1): a token no reference holds


def read_baseline(path: str | Path, layer: int) -> tuple[float, float, float]:
    """(b_P, b_R, b_F) of `layer` from a baseline file in bert-score's layout (CSV: LAYER,P,R,F, one row a layer)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read the baseline file: {e.strerror}", path=str(path)) from e
    for line, row in enumerate(rows, start=2):
        try:
            if int(row["LAYER"]) == layer:
                return float(row["P"]), float(row["R"]), float(row["F"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"expected numeric columns LAYER,P,R,F ({e})", path=str(path), where=f"line {line}") from e
    raise DataError(f"no row for layer {layer} (columns LAYER,P,R,F)", path=str(path))


def _bucket(length: int, largest: int) -> int:
    """The padded length for `length` tokens: a power of two from MIN_BUCKET, capped at `largest`."""
    return min(largest, max(MIN_BUCKET, 1 << (length - 1).bit_length()))


def _unit_vectors(model, layer, params, input_ids, attention_mask):
    """[rows, length] token ids -> [rows, length, hidden] unit vectors of hidden layer `layer` (float32).

    The whole encoder is traced, but XLA drops every layer above `layer`: nothing reads them (measured: layer 1
    of MiniLM-L6 runs in a quarter of the time of layer 6), so no truncated copy of the model is needed.
    """
    out = model.apply({"params": params}, input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[layer].astype(jnp.float32)
    return hidden / jnp.linalg.norm(hidden, axis=-1, keepdims=True)


class BertScorer:
    """BERTScore with hidden layer `layer` (0 = embeddings .. num_layers; default the last) of an encoder.

    Any qajax model works (`model.apply` returns hidden states whatever the head): `BertScorer.from_pretrained`
    loads an HF folder, or pass a model already in memory. Texts are embedded in batches of up to `batch_size`,
    grouped by bucket length (powers of two), so a long list compiles a few times, not once per length.
    """

    def __init__(self, model, params, spec, layer: int | None = None, *, batch_size: int = 64, source: str = "model"):
        import transformers

        if spec.tokenizer_dir is None:
            raise CheckpointError(f"{source}: no tokenizer files (expected tokenizer.json or vocab.txt)")
        self.num_layers = spec.encoder.num_layers
        self.layer = self.num_layers if layer is None else layer
        if not 0 <= self.layer <= self.num_layers:
            raise ConfigError(
                f"bertscore layer {self.layer} is out of range for {source}: expected 0 (embeddings) to "
                f"{self.num_layers} (its {self.num_layers} layers)"
            )
        if batch_size < 1:
            raise ConfigError(f"bertscore batch_size={batch_size}: expected a positive number")
        self.params, self.batch_size = params, batch_size
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.tokenizer_dir)
        self.max_length = min(self.tokenizer.model_max_length, spec.encoder.max_position_embeddings)
        self._embed = jax.jit(partial(_unit_vectors, model, self.layer))

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, layer: int | None = None, *, batch_size: int = 64, dtype="float32"
    ) -> BertScorer:
        """The encoder of an HF folder (BERT, ELECTRA or ALBERT; any head it carries is ignored)."""
        import qajax.hf

        folder = Path(model_dir)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (BERTScore needs a Hugging Face model folder)")
        model, params, spec = qajax.hf.from_pretrained(folder, head="encoder", dtype=dtype)
        return cls(model, params, spec, layer, batch_size=batch_size, source=str(folder))

    # --- tokens and weights ---

    def _encode(self, texts: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Token ids with the special tokens, and a mask that is True on the special ones, per text."""
        if not texts:
            return [], []
        encoded = self.tokenizer(
            [t.strip() for t in texts],
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
        )
        ids = [np.asarray(x, np.int32) for x in encoded["input_ids"]]
        special = [np.asarray(x, bool) for x in encoded["special_tokens_mask"]]
        return ids, special

    def has_tokens(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text keeps a token besides the special ones (what "empty" means for BERTScore)."""
        return [not s.all() for s in self._encode(texts)[1]]

    def idf(self, references: Sequence[str]) -> IdfWeights:
        """IDF weights over `references` (each text one document; repeats count), as bert-score computes them."""
        documents = self._encode(references)[0]
        counts = Counter(token for ids in documents for token in set(ids.tolist()))
        total = len(documents)
        weights = {token: math.log((total + 1) / (count + 1)) for token, count in counts.items()}
        return IdfWeights(weights, math.log(total + 1))

    def _weights(self, ids: np.ndarray, special: np.ndarray, idf: IdfWeights | None) -> np.ndarray:
        if idf is None:
            weights = np.ones(len(ids), np.float32)
        else:
            weights = np.asarray([idf.weights.get(t, idf.unseen) for t in ids.tolist()], np.float32)
        return np.where(special, 0.0, weights).astype(np.float32)

    # --- embeddings ---

    def _embed_all(self, token_ids: list[np.ndarray]) -> list[np.ndarray]:
        """[tokens, hidden] unit vectors per text. Batches are dispatched first and read back after, so the
        host pads the next batch while the device runs the previous one."""
        by_bucket: dict[int, list[int]] = {}
        for i in sorted(range(len(token_ids)), key=lambda i: len(token_ids[i])):
            by_bucket.setdefault(_bucket(len(token_ids[i]), self.max_length), []).append(i)
        pad_id = self.tokenizer.pad_token_id or 0
        pending = []
        for length, members in by_bucket.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                rows = min(self.batch_size, 1 << (len(chunk) - 1).bit_length())  # a bucket's last batch: 2^k rows
                input_ids = np.full((rows, length), pad_id, np.int32)
                mask = np.zeros((rows, length), np.int32)
                mask[:, 0] = 1  # filler rows attend to one position, so that their softmax stays finite
                for row, i in enumerate(chunk):
                    input_ids[row, : len(token_ids[i])] = token_ids[i]
                    mask[row, : len(token_ids[i])] = 1
                pending.append((chunk, self._embed(self.params, input_ids, mask)))
        vectors: list[np.ndarray] = [None] * len(token_ids)  # type: ignore[list-item]
        for chunk, batch in pending:
            batch = np.asarray(jax.device_get(batch))
            for row, i in enumerate(chunk):
                vectors[i] = batch[row, : len(token_ids[i])]
        return vectors

    def compile_count(self) -> int:
        """How many shapes the embedding function has compiled for (one per (rows, length) bucket seen)."""
        return self._embed._cache_size()

    # --- scores ---

    def score(
        self,
        candidates: Sequence[str],
        references: Sequence[str] | Sequence[Sequence[str]],
        *,
        idf: IdfWeights | None = None,
        baseline: tuple[float, float, float] | None = None,
    ) -> Scores:
        """BERTScore of each candidate against its reference, or the maximum over its list of references."""
        groups = [[r] if isinstance(r, str) else list(r) for r in references]
        if len(groups) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(groups)} references")
        if any(not g for g in groups):
            raise ValueError("every candidate needs at least one reference")
        pair_candidates = [c for c, g in zip(candidates, groups, strict=True) for _ in g]
        pair_references = [r for g in groups for r in g]

        texts = list(dict.fromkeys([*pair_candidates, *pair_references]))  # each distinct text embedded once
        ids, special = self._encode(texts)
        vectors = self._embed_all(ids)
        weights = [self._weights(i, s, idf) for i, s in zip(ids, special, strict=True)]
        index = {t: k for k, t in enumerate(texts)}
        pairs = [(index[c], index[r]) for c, r in zip(pair_candidates, pair_references, strict=True)]
        per_pair = _match(pairs, vectors, weights)  # [pairs, 3]

        scores, start = np.zeros((len(groups), 3), np.float32), 0
        for k, group in enumerate(groups):
            scores[k] = per_pair[start : start + len(group)].max(axis=0)
            start += len(group)
        if baseline is not None:
            base = np.asarray(baseline, np.float32)
            scores = (scores - base) / (1 - base)
        return Scores(scores[:, 0], scores[:, 1], scores[:, 2])


def _match(pairs: list[tuple[int, int]], vectors: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """[pairs, 3] (P, R, F1) by greedy cosine matching, in chunks of pairs padded to their longest text."""
    out = np.zeros((len(pairs), 3), np.float32)
    order = sorted(range(len(pairs)), key=lambda k: (len(vectors[pairs[k][0]]), len(vectors[pairs[k][1]])))
    hidden = vectors[0].shape[-1] if vectors else 0
    for start in range(0, len(order), PAIRS_PER_CHUNK):
        chunk = order[start : start + PAIRS_PER_CHUNK]
        cand_len = max(len(vectors[pairs[k][0]]) for k in chunk)
        ref_len = max(len(vectors[pairs[k][1]]) for k in chunk)
        cand = np.zeros((len(chunk), cand_len, hidden), np.float32)
        ref = np.zeros((len(chunk), ref_len, hidden), np.float32)
        cand_w = np.zeros((len(chunk), cand_len), np.float32)
        ref_w = np.zeros((len(chunk), ref_len), np.float32)
        cand_valid = np.zeros((len(chunk), cand_len), bool)
        ref_valid = np.zeros((len(chunk), ref_len), bool)
        for row, k in enumerate(chunk):
            c, r = pairs[k]
            cand[row, : len(vectors[c])], cand_w[row, : len(weights[c])] = vectors[c], weights[c]
            ref[row, : len(vectors[r])], ref_w[row, : len(weights[r])] = vectors[r], weights[r]
            cand_valid[row, : len(vectors[c])], ref_valid[row, : len(vectors[r])] = True, True
        cosine = np.einsum("bth,bsh->bts", cand, ref)  # [pairs, cand tokens, ref tokens]
        cosine = np.where(cand_valid[:, :, None] & ref_valid[:, None, :], cosine, _PADDING_COSINE)
        with np.errstate(invalid="ignore", divide="ignore"):  # a side without weighted tokens: 0/0, set to 0
            precision = (cand_w * cosine.max(axis=2)).sum(1) / cand_w.sum(1)
            recall = (ref_w * cosine.max(axis=1)).sum(1) / ref_w.sum(1)
            f1 = 2 * precision * recall / (precision + recall)
        empty = (cand_w.sum(1) == 0) | (ref_w.sum(1) == 0)
        scores = np.stack([precision, recall, f1], axis=1)
        scores[empty] = 0.0
        out[chunk] = np.nan_to_num(scores, nan=0.0)
        del cosine
    return out


def score_answers(
    scorer: BertScorer,
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    idf: IdfWeights | None = None,
    baseline: tuple[float, float, float] | None = None,
) -> Scores:
    """BERTScore of predicted answers against gold answers, with SQuAD 2.0's no-answer rules.

    An answer is empty when it has no tokens (the empty string is SQuAD 2.0's "no answer"). Gold answers that
    are empty are dropped while a non-empty one remains; a question with none left expects no answer. Then, as
    the official F1 does: an empty prediction for a question that expects no answer scores 1 (P, R and F1),
    exactly one empty side scores 0; these are outcomes, not similarities, so a baseline does not rescale them.
    Other questions take the maximum over their gold answers (`BertScorer.score`).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    distinct = list(dict.fromkeys([*predictions, *(r for group in references for r in group)]))
    nonempty = dict(zip(distinct, scorer.has_tokens(distinct), strict=True))
    golds = [[r for r in group if nonempty[r]] for group in references]
    out = np.zeros((len(predictions), 3), np.float32)
    scored = []
    for k, (prediction, gold) in enumerate(zip(predictions, golds, strict=True)):
        if nonempty[prediction] and gold:
            scored.append(k)
        else:
            out[k] = float(not nonempty[prediction] and not gold)
    if scored:
        scores = scorer.score([predictions[k] for k in scored], [golds[k] for k in scored], idf=idf, baseline=baseline)
        out[scored] = np.stack(scores, axis=1)
    return Scores(out[:, 0], out[:, 1], out[:, 2])
