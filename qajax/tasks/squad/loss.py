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
    token_mask=None,  # [batch, seq] nonzero for real tokens: padding takes no part in the softmax
    *,
    start_weight: float = 1.0,
    end_weight: float = 1.0,
) -> tuple[jax.Array, dict]:
    """Weighted mean over examples of (start_weight * CE_start + end_weight * CE_end) / (start_weight +
    end_weight); with equal weights this is HF's (CE_start + CE_end) / 2. Returns (loss, aux) for the step.

    With `token_mask` the softmax runs over real tokens only (HF's runs over padding too), so the loss of
    a window does not depend on how far it is padded: batches trimmed by length train exactly as padded ones."""
    if example_weight is None:
        example_weight = jnp.ones(start_positions.shape, jnp.float32)
    if token_mask is not None:
        start_logits, end_logits = (mask_padding(x, token_mask) for x in (start_logits, end_logits))
    start = optax.softmax_cross_entropy_with_integer_labels(start_logits, start_positions)
    end = optax.softmax_cross_entropy_with_integer_labels(end_logits, end_positions)
    per_example = (start_weight * start + end_weight * end) / (start_weight + end_weight)
    total = jnp.sum(example_weight)
    mean = lambda x: jnp.sum(x * example_weight) / jnp.maximum(total, 1.0)
    return mean(per_example), {"weight": total, "start_loss": mean(start), "end_loss": mean(end)}


PADDING_LOGIT = -1e9  # finite: exp underflows to 0 and gradients stay defined


def mask_padding(logits, token_mask):
    """Logits with the positions of padding tokens set to PADDING_LOGIT."""
    return jnp.where(token_mask != 0, logits, jnp.asarray(PADDING_LOGIT, logits.dtype))
