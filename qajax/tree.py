"""Parameter trees addressed by `/`-joined paths.

Every mask in qajax (weight decay, freezing, learning-rate groups, LoRA targets, sharding rules, the
heads a checkpoint may lack) is a list of regex rules over these paths, resolved by `match_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flax import traverse_util

Rules = Sequence[tuple[str, Any]]


def flatten(tree: Mapping) -> dict[str, Any]:
    """{"bert": {"pooler": {"dense": {"kernel": x}}}} -> {"bert/pooler/dense/kernel": x}."""
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def match_rules(tree: Mapping, rules: Rules, *, default: Any = None, require_all: bool = True) -> dict:
    """A tree of the same structure whose leaves are the value of the first rule matching each path.

    `rules` is a list of `(regex, value)`; a regex must match the whole path (`re.fullmatch`). With
    `require_all`, a path that no rule matches is an error unless `default` is given, and every rule must
    match at least one path: a rule that matches nothing is almost always a typo in a config.
    """
    compiled = [(re.compile(pattern), value) for pattern, value in rules]
    used = [False] * len(compiled)
    out = {}
    unmatched = []
    for path in flatten(tree):
        for i, (regex, value) in enumerate(compiled):
            if regex.fullmatch(path):
                out[path] = value
                used[i] = True
                break
        else:
            if default is None and require_all:
                unmatched.append(path)
            out[path] = default
    if unmatched:
        raise ValueError(f"no rule matches these parameters: {unmatched[:10]} (rules: {[r for r, _ in rules]})")
    unused = [pattern for (pattern, _), hit in zip(rules, used, strict=True) if not hit]
    if require_all and unused:
        raise ValueError(f"these rules match no parameter: {unused}")
    return unflatten(out)


def mask(tree: Mapping, patterns: Iterable[str]) -> dict:
    """True where the path fully matches any of `patterns`, False elsewhere (patterns may match nothing)."""
    compiled = [re.compile(p) for p in patterns]
    return unflatten({path: any(r.fullmatch(path) for r in compiled) for path in flatten(tree)})


def map_with_path(fn: Callable[[str, Any], Any], tree: Mapping) -> dict:
    return unflatten({path: fn(path, leaf) for path, leaf in flatten(tree).items()})
