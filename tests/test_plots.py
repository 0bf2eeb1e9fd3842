import json

import pytest

from qajax.errors import DataError
from qajax.plots import plot_metrics


def test_plot_writes_a_png_of_the_logged_curves(tmp_path):
    lines = [{"step": s, "loss": 3.0 / s, "learning_rate": 1e-3} for s in range(1, 6)]
    lines.append({"step": 5, "eval/f1": 71.5, "eval/HasAns_total": 10})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = plot_metrics(tmp_path)
    assert out == tmp_path / "metrics.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_plot_refuses_a_log_without_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(DataError, match="has no training or eval metrics: nothing to plot"):
        plot_metrics(tmp_path)
