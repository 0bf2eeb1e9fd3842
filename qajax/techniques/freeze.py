"""Layer freezing: train only the top of the encoder (and the head), as in "freeze all but the top N layers".

Two halves, both needed:
  - `frozen_patterns`: the optimizer gives the frozen params zero updates and keeps no state for them.
  - `wrap_forward`: the frozen params enter the model through `lax.stop_gradient`, so that the backward
    pass never runs below the first trainable layer. JAX only differentiates values that depend on a
    differentiated input: the hidden state leaving the last frozen layer depends on stopped params and
    token ids alone, so it carries no tangent; that is the gradient boundary, and the frozen layers' weight-
    and input-gradient matmuls are never emitted (tests/techniques/test_freeze.py counts them). Stopping
    the params rather than the hidden state needs no encoder option and stays right when the embeddings
    train below frozen layers (then input gradients must cross the frozen layers; only their weight
    gradients are skipped) and for ALBERT's shared groups.

Counting: BERT/ELECTRA count layers (`encoder/layer/{i}`). ALBERT counts layer groups
(`albert_layer_groups/{g}`), its distinct parameter sets: group g serves num_layers / num_groups
consecutive layers and freezing it freezes all of them. With ALBERT's usual single group, 1 frozen group
is the whole body and 0 (with `freeze_embeddings`) the embeddings alone.

Embeddings are the word / position / token-type tables, their LayerNorm, and the projection to the hidden
size where there is one (ELECTRA `embeddings_project`, ALBERT `encoder/embedding_hidden_mapping_in`).
"""

from __future__ import annotations

import re

import jax
import ml_collections
from ml_collections.config_dict import placeholder

from qajax import tree
from qajax.errors import ConfigError
from qajax.techniques.base import Technique

KEY = "techniques.freeze"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "freeze_embeddings": True,  # embeddings (and their projection) get no updates
            "num_frozen_layers": placeholder(int),  # freeze the bottom N layers (ALBERT: groups) ...
            "num_trainable_layers": placeholder(int),  # ... or train the top N only; set exactly one
        }
    )


class Freeze(Technique):
    name, kind = "freeze", "optimizer"

    def __init__(self, required: list[str], optional: list[str]):
        self.required = required  # regexes that must match (the embeddings, the frozen layers)
        self.optional = optional  # embedding projections, which only some configs have

    def frozen_patterns(self, params) -> list[str]:
        paths = list(tree.flatten(params))
        matches = lambda pattern: any(re.fullmatch(pattern, path) for path in paths)
        missing = [p for p in self.required if not matches(p)]
        if missing:
            raise ConfigError(
                f"{KEY}: {missing} match no parameter; these params are not the encoder's ({paths[0]!r}, ...)"
            )
        return self.required + [p for p in self.optional if matches(p)]

    def wrap_forward(self, forward):
        regexes = [re.compile(p) for p in self.required + self.optional]
        stop = lambda path, p: jax.lax.stop_gradient(p) if any(r.fullmatch(path) for r in regexes) else p

        def forward_with_frozen_bottom(params, *args, **kwargs):
            return forward(tree.map_with_path(stop, params), *args, **kwargs)

        return forward_with_frozen_bottom


def num_frozen_units(config, units: int, unit_name: str) -> int:
    """How many of the `units` bottom layers (ALBERT: groups) `config` freezes, checked."""
    frozen, trainable = config.num_frozen_layers, config.num_trainable_layers
    if (frozen is None) == (trainable is None):
        raise ConfigError(
            f"{KEY}.num_frozen_layers={frozen}, {KEY}.num_trainable_layers={trainable}: set exactly one of them"
        )
    key, value = ("num_frozen_layers", frozen) if frozen is not None else ("num_trainable_layers", trainable)
    if not 0 <= value <= units:
        raise ConfigError(f"{KEY}.{key}={value}: expected 0..{units}, the model's number of {unit_name}")
    count = value if frozen is not None else units - value
    if count == 0 and not config.freeze_embeddings:
        raise ConfigError(f"{KEY}.{key}={value} with {KEY}.freeze_embeddings=False freezes nothing")
    return count


def build(config: ml_collections.ConfigDict, task) -> Freeze:
    c = task.spec.encoder
    albert = c.family == "albert"
    units, unit_name = (c.num_groups, "layer groups (ALBERT)") if albert else (c.num_layers, "layers")
    count = num_frozen_units(config, units, unit_name)
    prefix = c.family  # the encoder's scope in every head's params
    layers = f"{prefix}/encoder/albert_layer_groups" if albert else f"{prefix}/encoder/layer"
    required, optional = [], []
    if config.freeze_embeddings:
        required.append(f"{prefix}/embeddings/.*")
        optional += [
            f"{prefix}/embeddings_project/.*",  # ELECTRA with embedding_size != hidden_size
            f"{prefix}/encoder/embedding_hidden_mapping_in/.*",  # ALBERT
        ]
    if count == units:
        required.append(f"{layers}/.*")  # the whole body: also right for scanned (stacked) layers
    elif count:
        if c.scan_layers and not albert:
            raise ConfigError(
                f"{KEY}: freezing {count} of {units} layers needs model.scan_layers=False; scanned layers are "
                f"stacked into one array per weight under {layers}/scanned, which cannot be frozen per layer"
            )
        required.append(f"{layers}/({'|'.join(str(i) for i in range(count))})/.*")
    return Freeze(required, optional)
