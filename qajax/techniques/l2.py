"""L2 regularisation as a loss transform: loss + weight * sum((param - anchor)^2) over the params that no
`exclude` regex matches (by default biases and LayerNorm scales, as weight decay excludes them).

`toward="zero"` is classic coupled L2 (anchor 0). Unlike `optimizer.weight_decay` (decoupled, AdamW), it
goes through the gradient, so Adam rescales it per parameter. `toward="pretrained"` is L2-SP (Li,
Grandvalet and Davis, 2018, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks"),
except that a new head is anchored to its initial values rather than to zero (exclude it to leave it
free). The anchor is the params at the start of training, kept in `state.extras["l2"]["anchor"]` so that
a resumed run anchors to the same values. Memory: one more float32 copy of every regularised param in
the state and in each checkpoint (BERT-base: ~110M values, ~0.44 GB), sharded as the params are.

`train/l2_loss` is the penalty as added to the loss (weight included); `train/loss` includes it.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import ml_collections

from qajax import tree
from qajax.errors import ConfigError
from qajax.techniques.base import Technique

KEY = "techniques.l2"
TOWARD = ("zero", "pretrained")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "weight": 0.01,  # multiplies the sum of squares (no 1/2)
            "toward": "zero",  # one of TOWARD
            "exclude": (r".*/bias", r".*(LayerNorm|layer_norm)/scale"),  # unregularised paths (full matches)
        }
    )


class L2(Technique):
    name, kind = "l2", "loss"

    def __init__(self, weight: float, exclude: list[re.Pattern]):
        self.weight = weight
        self.exclude = exclude

    def regularised(self, params) -> dict:
        """{path: param} for the params that the penalty covers."""
        return {k: v for k, v in tree.flatten(params).items() if not any(r.fullmatch(k) for r in self.exclude)}

    def anchors(self, extras) -> dict | None:
        return None  # toward zero

    def wrap_loss(self, loss_fn):
        def loss_with_l2(params, batch, rng, extras):
            loss, aux = loss_fn(params, batch, rng, extras)
            anchors = self.anchors(extras)
            squares = [
                jnp.sum(jnp.square(p.astype(jnp.float32) - (0.0 if anchors is None else anchors[k])))
                for k, p in self.regularised(params).items()
            ]
            penalty = self.weight * sum(squares, jnp.zeros((), jnp.float32))
            return loss + penalty, {**aux, "l2_loss": penalty}

        return loss_with_l2


class L2TowardPretrained(L2):
    def init_extras(self, params) -> dict:
        # Copies, never aliases of the params' buffers (the state is donated), in float32 like the penalty.
        anchor = {k: jnp.array(v, jnp.float32, copy=True) for k, v in self.regularised(params).items()}
        return {"anchor": tree.unflatten(anchor)}

    def anchors(self, extras) -> dict:
        return tree.flatten(extras[self.name]["anchor"])


def build(config: ml_collections.ConfigDict, task=None) -> L2:
    if config.toward not in TOWARD:
        raise ConfigError(f"{KEY}.toward={config.toward!r}: expected one of {TOWARD}")
    if not config.weight >= 0:
        raise ConfigError(f"{KEY}.weight={config.weight}: expected a number >= 0")
    try:
        exclude = [re.compile(p) for p in config.exclude]
    except re.error as error:
        raise ConfigError(f"{KEY}.exclude: {error.pattern!r} is not a valid regex ({error})") from error
    cls = L2TowardPretrained if config.toward == "pretrained" else L2
    return cls(float(config.weight), exclude)
