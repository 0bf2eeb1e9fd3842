"""Conversion between HF's per-layer parameter layout and the stacked layout of `scan_layers`.

HF (and every checkpoint qajax writes for others) keeps `.../encoder/layer/{i}/...`; a scanned
BERT/ELECTRA keeps `.../encoder/layer/scanned/...` with a leading [num_layers] axis. ALBERT's scan
broadcasts its one group, so its layout never changes.
"""

from __future__ import annotations

import re

import jax.numpy as jnp

from qajax import tree
from qajax.models.config import EncoderConfig
from qajax.models.layers import SCANNED_NAME

_PER_LAYER = re.compile(r"(?P<prefix>.*/encoder/layer)/(?P<index>\d+)/(?P<rest>.*)")
_STACKED = re.compile(rf"(?P<prefix>.*/encoder/layer)/{SCANNED_NAME}/(?P<rest>.*)")


def is_scanned(params) -> bool:
    return any(_STACKED.fullmatch(path) for path in tree.flatten(params))


def stack_layers(params) -> dict:
    flat = tree.flatten(params)
    out, groups = {}, {}
    for path, leaf in flat.items():
        m = _PER_LAYER.fullmatch(path)
        if m is None:
            out[path] = leaf
            continue
        key = f"{m['prefix']}/{SCANNED_NAME}/{m['rest']}"
        groups.setdefault(key, {})[int(m["index"])] = leaf
    for key, by_index in groups.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"layers {sorted(by_index)} of {key} are not 0..n-1; cannot stack them")
        out[key] = jnp.stack([by_index[i] for i in range(len(by_index))])
    return tree.unflatten(out)


def unstack_layers(params) -> dict:
    out = {}
    for path, leaf in tree.flatten(params).items():
        m = _STACKED.fullmatch(path)
        if m is None:
            out[path] = leaf
            continue
        for i in range(leaf.shape[0]):
            out[f"{m['prefix']}/{i}/{m['rest']}"] = leaf[i]
    return tree.unflatten(out)


def for_config(params, config: EncoderConfig) -> dict:
    """Params in the layout `config` runs with, whichever layout they came in."""
    if config.family == "albert":
        return params
    if config.scan_layers and not is_scanned(params):
        return stack_layers(params)
    if not config.scan_layers and is_scanned(params):
        return unstack_layers(params)
    return params
