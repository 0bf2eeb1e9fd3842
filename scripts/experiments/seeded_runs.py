"""Rows of seeded runs grouped and paired by seed: what the experiment reports that compare two settings share."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def latest_by_seed(rows: Iterable[dict], order: Iterable[str], group: str = "variant") -> dict[str, dict[int, dict]]:
    """{name: {seed: its latest row}} for the names in `order` that have rows (seeds ascending), grouped by the
    row's `group` field; rows carrying a note (superseded) are left out."""
    groups: dict[str, dict[int, dict]] = {}
    for r in rows:
        if not r.get("note"):
            groups.setdefault(r[group], {})[r["seed"]] = r
    return {name: dict(sorted(groups[name].items())) for name in order if name in groups}


def paired_differences(groups: dict, first: str, second: str, value: Callable[[dict], float]):
    """(the seeds both ran, value(first's row) - value(second's row) per seed as an array)."""
    seeds = sorted(set(groups.get(first, {})) & set(groups.get(second, {})))
    return seeds, np.array([value(groups[first][s]) - value(groups[second][s]) for s in seeds])


def t_half_width(d: np.ndarray) -> float | None:
    """Half the width of the 95% t interval of the mean of `d` (n - 1 degrees of freedom); None under 2 values."""
    if len(d) < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d)))
