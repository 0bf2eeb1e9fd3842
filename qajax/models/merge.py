"""Merging loaded weights into a freshly initialised tree, loudly."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np

from qajax import tree
from qajax.errors import CheckpointError

log = logging.getLogger(__name__)


def merge_params(
    init: Mapping,
    loaded_flat: Mapping[str, np.ndarray],
    *,
    may_be_missing: Sequence[str] = (),
    may_be_unused: Sequence[str] = (),
    source: str = "checkpoint",
) -> tuple[dict, dict[str, list[str]]]:
    """`init` with every leaf that `loaded_flat` has, checked path by path.

    A parameter missing from the checkpoint is an error unless a `may_be_missing` regex names it (a new
    head keeps its fresh initialisation); a checkpoint weight the model does not have is an error unless
    a `may_be_unused` regex names it (a pretraining head). Every shape must agree. Returns the merged
    tree and a report {"initialised": [...], "unused": [...]} for the caller to log.
    """
    init_flat = tree.flatten(init)
    missing_ok = [re.compile(p) for p in may_be_missing]
    unused_ok = [re.compile(p) for p in may_be_unused]
    missing = sorted(set(init_flat) - set(loaded_flat))
    unused = sorted(set(loaded_flat) - set(init_flat))
    bad_missing = [p for p in missing if not any(r.fullmatch(p) for r in missing_ok)]
    bad_unused = [p for p in unused if not any(r.fullmatch(p) for r in unused_ok)]
    problems = []
    if bad_missing:
        problems.append(f"missing weights ({len(bad_missing)}): {_preview(bad_missing)}")
    if bad_unused:
        problems.append(f"unexpected weights ({len(bad_unused)}): {_preview(bad_unused)}")
    for path in sorted(set(init_flat) & set(loaded_flat)):
        want, got = tuple(init_flat[path].shape), tuple(np.shape(loaded_flat[path]))
        if want != got:
            problems.append(f"shape mismatch at {path}: checkpoint has {got}, model expects {want}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    merged = {
        path: np.asarray(loaded_flat[path]).astype(leaf.dtype) if path in loaded_flat else leaf
        for path, leaf in init_flat.items()
    }
    if missing:
        log.warning("%s: freshly initialised, not in the checkpoint (train before use): %s", source, _preview(missing))
    if unused:
        log.info("%s: unused checkpoint weights: %s", source, _preview(unused))
    return tree.unflatten(merged), {"initialised": missing, "unused": unused}


def _preview(paths: list[str], limit: int = 8) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")
