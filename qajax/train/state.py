"""The train state: one pytree that a checkpoint saves and restores whole."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.dynamic_scale import DynamicScale


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates attempted (the data position advances with it)
    params: Any
    opt_state: optax.OptState
    rng: jax.Array  # uint32[2] raw key; each step folds in `step`, so resume needs nothing else
    extras: dict  # technique state (distillation teachers, momentum teachers, ...), updated in the step
    nonfinite_steps: jax.Array  # int32 scalar: updates skipped because the loss or a gradient was not finite
    dynamic_scale: DynamicScale | None = None  # fp16 loss scaling; None for fp32 / bf16

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, *, seed: int, extras=None, fp16: bool = False):
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.PRNGKey(seed),
            extras={} if extras is None else extras,
            nonfinite_steps=jnp.zeros((), jnp.int32),
            dynamic_scale=DynamicScale() if fp16 else None,
        )
