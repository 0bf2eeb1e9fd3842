"""The minBERT project's metrics: accuracy (SST, Quora), Pearson's r (STS), and the composite score
(report 003, section 4.2): mean(SST accuracy, Quora accuracy, (Pearson + 1) / 2)."""

from __future__ import annotations

import numpy as np


def accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions))


def pearson(x, y) -> float:
    """Pearson's r; 0 when either side is constant (a constant prediction carries no correlation)."""
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator > 0 else 0.0


def composite(sst_accuracy: float, quora_accuracy: float, sts_pearson: float) -> float:
    return (sst_accuracy + quora_accuracy + (sts_pearson + 1.0) / 2.0) / 3.0


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def majority_baseline(train_labels: dict, eval_labels: dict) -> dict[str, float]:
    """The score of predicting the training set's majority class (SST, Quora) and a constant (STS: r = 0)."""
    scores = {}
    for name in ("sst", "quora"):
        if name in train_labels:
            values, counts = np.unique(train_labels[name], return_counts=True)
            scores[name] = accuracy(eval_labels[name], np.full(len(eval_labels[name]), values[np.argmax(counts)]))
    scores["sts"] = 0.0
    if "sst" in scores and "quora" in scores:
        scores["composite"] = composite(scores["sst"], scores["quora"], 0.0)
    return scores
