"""The model pass an inner loss already made, for loss transforms that need the same outputs (distillation's
student logits, SMART's clean logits) without running the model forward and backward a second time.

`wrap_forward` remembers, while `run` evaluates the inner loss, each training-mode call that receives the
loss's own rng on the batch's own ids (no `inputs_embeds`). Exactly one such call is the loss's pass; none or
several (ambiguous) give None, and the caller runs the pass itself: right, at the cost of a second pass.
"""

from __future__ import annotations


class InnerPass:
    def __init__(self):
        self._seen = None  # while `run` evaluates the inner loss: {"rng": ..., "outputs": [...]}

    def wrap_forward(self, forward):
        def forward_seen(params, batch, rng=None, *, deterministic=True, **model_options):
            outputs = forward(params, batch, rng, deterministic=deterministic, **model_options)
            seen = self._seen
            if seen is not None and not deterministic and rng is seen["rng"] and "inputs_embeds" not in model_options:
                seen["outputs"].append(outputs)
            return outputs

        return forward_seen

    def run(self, loss_fn, params, batch, rng, extras):
        """(loss, aux, the inner loss's model outputs or None)."""
        self._seen = {"rng": rng, "outputs": []}
        try:
            loss, aux = loss_fn(params, batch, rng, extras)
            seen = self._seen["outputs"]
        finally:
            self._seen = None
        return loss, aux, (seen[0] if len(seen) == 1 else None)
