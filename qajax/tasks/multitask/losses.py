"""The task losses (report 003, section 3) and how a head's outputs become predictions.

    cross_entropy       sentence classes (SST-5)
    bce                 binary cross-entropy on the pair logit (Quora)
    mse                 squared error of the predicted value (STS, Sentence-BERT's regression objective)
    cosine_embedding    1 - cos for a positive pair, max(0, cos - margin) for a negative one (PyTorch's
                        CosineEmbeddingLoss, mean reduction); siamese forms only
    mnr                 multiple-negatives ranking (Henderson et al. 2017): each positive pair's first
                        sentence must pick its own second sentence among every second sentence of the batch,
                        -mean_i [S(a_i, b_i) - log sum_j exp S(a_i, b_j)] with S = scale * cos; siamese only

A regression task's "positive" pairs for the last two are those with label >= `positive_threshold`.
All losses are means over the batch, float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from qajax.errors import ConfigError
from qajax.tasks.multitask.model import HeadSpec

LOSSES = {
    "classes": ("cross_entropy",),
    "binary": ("bce", "cosine_embedding", "mnr"),
    "regression": ("mse", "cosine_embedding", "mnr"),
}
SIAMESE_ONLY = ("cosine_embedding", "mnr")


def cross_entropy(logits, labels):  # [B, C], [B] int
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def binary_cross_entropy(logits, labels):  # [B], [B] in {0, 1}
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))


def mean_squared_error(predictions, targets):
    return jnp.mean(jnp.square(predictions - targets.astype(jnp.float32)))


def cosine_embedding(cos, positive, margin: float = 0.0):  # [B], [B] bool
    return jnp.mean(jnp.where(positive, 1.0 - cos, jnp.maximum(0.0, cos - margin)))


def multiple_negatives_ranking(u, v, positive, scale: float = 20.0):
    """u, v [B, D]: the pairs' two sentences; `positive` [B] bool marks the anchors (rows of the loss).
    Every v_j of the batch, negative pairs' included, is a candidate for every anchor."""
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    scores = scale * unit(u) @ unit(v).T  # [B, B]
    per_row = jax.nn.logsumexp(scores, axis=-1) - jnp.diagonal(scores)
    count = jnp.sum(positive)
    return jnp.sum(jnp.where(positive, per_row, 0.0)) / jnp.maximum(count, 1)  # no positive pair: 0


def check(spec: HeadSpec, loss: str) -> None:
    if loss not in LOSSES[spec.kind]:
        raise ConfigError(f"task.{spec.name}.loss={loss!r}: expected one of {LOSSES[spec.kind]}")
    if loss in SIAMESE_ONLY and spec.form == "cross":
        raise ConfigError(
            f"task.{spec.name}.loss={loss!r} compares two sentence embeddings; task.{spec.name}.form='cross' "
            "encodes the pair together. Use form 'cosine' or 'concat'"
        )


def positives(spec: HeadSpec, labels, positive_threshold: float):
    return labels >= positive_threshold if spec.kind == "regression" else labels > 0.5


def task_loss(spec: HeadSpec, loss: str, outputs: dict, labels, *, margin: float, scale: float, positive_threshold):
    if loss == "cross_entropy":
        return cross_entropy(outputs["score"], labels)
    if loss == "bce":
        return binary_cross_entropy(outputs["score"], labels)
    if loss == "mse":
        return mean_squared_error(outputs["score"], labels)
    positive = positives(spec, labels, positive_threshold)
    if loss == "cosine_embedding":
        return cosine_embedding(outputs["cosine"], positive, margin)
    return multiple_negatives_ranking(outputs["u"], outputs["v"], positive, scale)


def predict(spec: HeadSpec, loss: str, outputs: dict, cosine_threshold: float):
    """[B] predicted labels: a class, 0/1, or a value on the label's scale."""
    if spec.kind == "classes":
        return jnp.argmax(outputs["score"], -1).astype(jnp.int32)
    by_cosine = loss in SIAMESE_ONLY  # the head's score was never trained then; its cosine was
    if spec.kind == "binary":
        return ((outputs["cosine"] > cosine_threshold) if by_cosine else (outputs["score"] > 0)).astype(jnp.int32)
    return spec.max_value * outputs["cosine"] if by_cosine else outputs["score"]
