"""The span-QA loss: start/end cross-entropy, the null answer at the first token ([CLS])."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def span_loss(
    start_logits,  # [batch, seq] float32
    end_logits,  # [batch, seq]
    start_positions,  # [batch] int; 0 (the [CLS] token) for "no answer in this window"
    end_positions,  # [batch]
    example_weight=None,  # [batch] 1 real, 0 padding
    *,
    start_weight: float = 1.0,
    end_weight: float = 1.0,
) -> tuple[jax.Array, dict]:
    """Weighted mean over examples of (start_weight * CE_start + end_weight * CE_end) / (start_weight +
    end_weight); with equal weights this is HF's (CE_start + CE_end) / 2. Returns (loss, aux) for the step."""
    if example_weight is None:
        example_weight = jnp.ones(start_positions.shape, jnp.float32)
    start = optax.softmax_cross_entropy_with_integer_labels(start_logits, start_positions)
    end = optax.softmax_cross_entropy_with_integer_labels(end_logits, end_positions)
    per_example = (start_weight * start + end_weight * end) / (start_weight + end_weight)
    total = jnp.sum(example_weight)
    mean = lambda x: jnp.sum(x * example_weight) / jnp.maximum(total, 1.0)
    return mean(per_example), {"weight": total, "start_loss": mean(start), "end_loss": mean(end)}
