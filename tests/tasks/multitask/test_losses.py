"""Each loss against numpy written from its definition (and PyTorch's where there is one)."""

import numpy as np
import pytest

from qajax.tasks.multitask import losses

rng = np.random.default_rng(0)


def test_cross_entropy():
    logits, labels = rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 5, 6)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(-log_probs[np.arange(6), labels].mean(), 1e-5)


def test_binary_cross_entropy():
    logits, labels = rng.normal(size=7).astype(np.float32) * 3, rng.integers(0, 2, 7).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    expected = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    assert float(losses.binary_cross_entropy(logits, labels)) == pytest.approx(expected, 1e-5)


def test_mean_squared_error():
    a, b = rng.normal(size=5), rng.normal(size=5)
    assert float(losses.mean_squared_error(a, b)) == pytest.approx(((a - b) ** 2).mean(), 1e-5)


def test_cosine_embedding_matches_torch():
    torch = pytest.importorskip("torch")
    x1, x2 = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    y = np.where(rng.random(8) > 0.5, 1.0, -1.0).astype(np.float32)
    expected = torch.nn.CosineEmbeddingLoss(margin=0.2)(torch.tensor(x1), torch.tensor(x2), torch.tensor(y))
    cos = (x1 * x2).sum(-1) / np.linalg.norm(x1, axis=-1) / np.linalg.norm(x2, axis=-1)
    ours = losses.cosine_embedding(cos, y > 0, margin=0.2)
    assert float(ours) == pytest.approx(float(expected), 1e-5)


def test_multiple_negatives_ranking():
    u, v = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    positive = np.array([True, False, True, True, False])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    scores = 20.0 * unit(u) @ unit(v).T
    rows = [-(scores[i, i] - np.log(np.exp(scores[i]).sum())) for i in range(5) if positive[i]]
    ours = losses.multiple_negatives_ranking(u.astype(np.float32), v.astype(np.float32), positive, scale=20.0)
    assert float(ours) == pytest.approx(np.mean(rows), 1e-4)
    none = losses.multiple_negatives_ranking(u.astype(np.float32), v.astype(np.float32), np.zeros(5, bool))
    assert float(none) == 0.0
