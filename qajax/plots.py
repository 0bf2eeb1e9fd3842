"""Training curves from `metrics.jsonl` as a PNG: one panel per metric, step on the x-axis."""

from __future__ import annotations

from pathlib import Path

from qajax.errors import DataError
from qajax.train.logs import METRICS_FILE, read_metrics

DEFAULT_KEYS = ("loss", "learning_rate", "train/grad_norm", "examples_per_sec")


def plot_metrics(workdir: str | Path, out: str | Path | None = None, keys: tuple[str, ...] = ()) -> Path:
    """Writes `out` (default WORKDIR/metrics.png); `keys` default to the training basics plus every eval/ key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    if not (workdir / METRICS_FILE).is_file():
        what = "a training workdir" if workdir.is_dir() else "an existing folder"
        raise DataError(f"no {METRICS_FILE} here; expected {what} that `qajax train` wrote", path=str(workdir))
    records = read_metrics(workdir / METRICS_FILE)
    if not keys:
        evals = sorted({k for r in records for k in r if k.startswith("eval/") and not k.endswith("_total")})
        keys = tuple(k for k in (*DEFAULT_KEYS, *evals) if any(k in r for r in records))
    if not keys:
        found = "is empty" if not records else "has no training or eval metrics"
        message = f"{found}: nothing to plot (a run logs every train.log_every steps)"
        raise DataError(message, path=str(workdir / METRICS_FILE))
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(str(workdir), fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else workdir / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
