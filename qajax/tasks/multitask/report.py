"""What a multitask evaluation leaves on disk: predictions in the input format, confusion matrices and
per-task training curves as PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qajax.files import atomic_write_bytes
from qajax.tasks.multitask import data

CURVE_KEYS = (
    "train/sst_loss",
    "train/quora_loss",
    "train/sts_loss",
    "eval/sst_accuracy",
    "eval/quora_accuracy",
    "eval/sts_pearson",
    "eval/composite",
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, title: str, path: str | Path) -> Path:
    plt = _pyplot()
    size = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * size, 1.0 + 0.7 * size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_predictions(out_dir: str | Path, name: str, examples, predictions) -> Path:
    """`{name}-predictions.csv`: the input file's columns with the predicted label (STS: the raw value)."""
    path = Path(out_dir) / f"{name}-predictions.csv"
    values = np.asarray(predictions)
    shown = [f"{v:.4f}" for v in values] if values.dtype.kind == "f" else [str(int(v)) for v in values]
    data.write_predictions(path, name, examples, shown)
    return path


def plot_task_curves(workdir: str | Path, out: str | Path | None = None) -> Path:
    """Per-task losses and dev metrics over the steps of a run (from its metrics.jsonl)."""
    from qajax.plots import plot_metrics

    out = out or Path(workdir) / "multitask_curves.png"
    return plot_metrics(workdir, out, CURVE_KEYS)
