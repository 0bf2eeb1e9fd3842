"""The span loss (qajax/tasks/span.py) against numpy's log-softmax cross-entropy: start/end weights, padding
rows and padding tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qajax.tasks.span import span_loss


def _cross_entropy(logits, labels) -> np.ndarray:
    """-log softmax(logits)[label] per row, in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def _loss_inputs(seed=0, batch=6, seq=13):
    rng = np.random.default_rng(seed)
    start_logits = (3 * rng.normal(size=(batch, seq))).astype(np.float32)  # [batch, seq]
    end_logits = (3 * rng.normal(size=(batch, seq))).astype(np.float32)
    starts = rng.integers(0, seq, batch).astype(np.int32)
    ends = rng.integers(0, seq, batch).astype(np.int32)
    starts[0] = ends[0] = 0  # a window without the answer: the [CLS] label
    return start_logits, end_logits, starts, ends


@pytest.mark.parametrize("start_weight, end_weight", [(1.0, 1.0), (2.0, 1.0), (0.5, 3.0)])
def test_span_loss_is_weighted_cross_entropy(start_weight, end_weight):
    start_logits, end_logits, starts, ends = _loss_inputs()
    example_weight = np.array([1, 1, 1, 1, 0, 0], np.float32)  # the last two rows pad the batch
    loss, aux = span_loss(
        start_logits, end_logits, starts, ends, example_weight, start_weight=start_weight, end_weight=end_weight
    )
    real = slice(0, 4)
    ce_start, ce_end = _cross_entropy(start_logits, starts)[real], _cross_entropy(end_logits, ends)[real]
    expected = np.mean((start_weight * ce_start + end_weight * ce_end) / (start_weight + end_weight))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(aux["start_loss"], ce_start.mean(), rtol=1e-6)
    np.testing.assert_allclose(aux["end_loss"], ce_end.mean(), rtol=1e-6)
    assert float(aux["weight"]) == 4.0
    if (start_weight, end_weight) == (2.0, 1.0):  # the ablation's formula, spelled out
        np.testing.assert_allclose(loss, (2 * ce_start.mean() + ce_end.mean()) / 3, rtol=1e-6)


def test_span_loss_ignores_padding_rows():
    start_logits, end_logits, starts, ends = _loss_inputs(seed=1)
    weight = np.array([1, 1, 1, 0, 0, 0], np.float32)
    loss, _ = span_loss(start_logits, end_logits, starts, ends, weight)
    unpadded, _ = span_loss(start_logits[:3], end_logits[:3], starts[:3], ends[:3])  # no weight: all rows count
    np.testing.assert_allclose(loss, unpadded, rtol=1e-6)

    garbage_start, garbage_end = start_logits.copy(), end_logits.copy()
    garbage_start[3:], garbage_end[3:] = 1e4, -1e4  # what a padding row holds must not matter
    loss_garbage, _ = span_loss(garbage_start, garbage_end, starts, ends, weight)
    np.testing.assert_allclose(loss_garbage, loss, rtol=1e-6)

    grad = jax.grad(lambda s: span_loss(s, end_logits, starts, ends, weight)[0])(jnp.asarray(start_logits))
    assert np.all(np.asarray(grad)[3:] == 0) and np.any(np.asarray(grad)[:3] != 0)

    empty, aux = span_loss(start_logits, end_logits, starts, ends, np.zeros(6, np.float32))  # an all-padding batch
    assert float(empty) == 0.0 and float(aux["weight"]) == 0.0


def test_span_loss_with_the_token_mask_does_not_depend_on_padding():
    """What length bucketing relies on: a window trimmed of its padding has the loss and gradient it had padded."""
    start_logits, end_logits, _, _ = _loss_inputs(seed=2, batch=4, seq=20)
    lengths = np.array([20, 11, 7, 14])
    mask = (np.arange(20)[None] < lengths[:, None]).astype(np.int32)
    starts, ends = np.array([0, 3, 6, 13]), np.array([0, 5, 6, 13])
    padded = lambda s: span_loss(s, end_logits, starts, ends, None, mask)[0]
    garbage = np.where(mask == 1, start_logits, 40.0).astype(np.float32)  # padding logits must not count
    np.testing.assert_allclose(padded(garbage), padded(start_logits), rtol=1e-6)
    grad = np.asarray(jax.grad(padded)(jnp.asarray(garbage)))
    assert np.all(grad[mask == 0] == 0)
    for row, n in enumerate(lengths):  # each window alone, cut to its real tokens, unmasked
        alone = lambda s, r=row, n=n: span_loss(s, end_logits[r : r + 1, :n], starts[r : r + 1], ends[r : r + 1])[0]
        np.testing.assert_allclose(
            jax.grad(alone)(jnp.asarray(start_logits[row : row + 1, :n])), 4 * grad[row : row + 1, :n], rtol=1e-5
        )
    expected = np.mean([(_cross_entropy(start_logits[r : r + 1, :n], starts[r : r + 1])
                         + _cross_entropy(end_logits[r : r + 1, :n], ends[r : r + 1])) / 2
                        for r, n in enumerate(lengths)])  # fmt: skip
    np.testing.assert_allclose(padded(start_logits), expected, rtol=1e-5)
