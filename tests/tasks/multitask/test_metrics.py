"""Metrics against numpy written independently (np.corrcoef for Pearson)."""

import numpy as np
import pytest

from qajax.tasks.multitask import metrics


def test_pearson_accuracy_composite_confusion():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y = y + x
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], 1e-12)
    assert metrics.pearson(x, np.full(50, 2.0)) == 0.0
    labels, predicted = np.array([0, 1, 2, 2, 4, 1]), np.array([0, 2, 2, 2, 3, 1])
    assert metrics.accuracy(labels, predicted) == pytest.approx(4 / 6)
    matrix = metrics.confusion_matrix(labels, predicted, 5)
    expected = np.zeros((5, 5), int)
    for t, p in zip(labels, predicted, strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(matrix, expected)
    assert metrics.composite(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)


def test_majority_baseline():
    train = {"sst": [1, 3, 3, 0], "quora": [0, 0, 1]}
    held_out = {"sst": [3, 3, 1, 2], "quora": [0, 1, 1, 1]}
    b = metrics.majority_baseline(train, held_out)
    assert (b["sst"], b["quora"], b["sts"]) == (0.5, 0.25, 0.0)
    assert b["composite"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
