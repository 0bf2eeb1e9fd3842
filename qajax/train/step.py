"""The train step: `step(state, batch) -> (state, metrics)`, pure, built once per run.

    loss_fn(params, batch, rng, extras) -> (loss, aux)

`loss` is the mean over the batch's examples; `aux` is a flat dict of scalar metrics and may hold
`"weight"`, the number of examples the mean is over (padding excluded), which makes accumulated
micro-batches and data-parallel shards combine into exactly the large-batch mean. Techniques plug in as
loss transforms (`wrap_loss`) and as extras updates (`update_extras`); this module knows none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax

from qajax.train.state import TrainState

LossFn = Callable[[Any, dict, jax.Array, dict], tuple[jax.Array, dict]]


class Technique(Protocol):
    """What a technique may contribute to the step; each hook is optional (see `qajax.techniques`)."""

    def wrap_loss(self, loss_fn: LossFn) -> LossFn: ...

    def update_extras(self, own_extras, params, step: jax.Array): ...  # its own entry, extras[technique.name]


def compose_loss(loss_fn: LossFn, techniques: Sequence[Any]) -> LossFn:
    for technique in techniques:
        if hasattr(technique, "wrap_loss"):
            loss_fn = technique.wrap_loss(loss_fn)
    return loss_fn


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    techniques: Sequence[Any] = (),
    accumulation_steps: int = 1,
    axis_name: str | None = None,
):
    """The step function (not yet jitted or pmapped; `qajax.train.parallel` does that).

    With `accumulation_steps` k > 1 every batch leaf is [k, micro_batch, ...] and gradients are
    accumulated over a `lax.scan`. With `axis_name` (pmap mode) gradient and metric sums are `psum`med
    over the devices of that axis; in mesh mode XLA inserts the reductions itself.
    """
    full_loss = compose_loss(loss_fn, techniques)
    updating = [t for t in techniques if hasattr(t, "update_extras")]

    def mean_grads(params, batch, rng, extras, loss_scale):
        """Gradients of the batch-mean loss, the loss and aux means, and the example weight of the mean."""

        def scaled(p):
            loss, aux = full_loss(p, batch, rng, extras)
            return (loss if loss_scale is None else loss * loss_scale), (loss, aux)

        (_, (loss, aux)), grads = jax.value_and_grad(scaled, has_aux=True)(params)
        if loss_scale is not None:
            grads = jax.tree.map(lambda g: g / loss_scale, grads)
        means = {"loss": loss, **aux}
        weight = jnp.asarray(means.pop("weight", 1.0), jnp.float32)
        return grads, means, weight

    def weighted_grads(params, batch, rng, extras, loss_scale):
        """Example-weighted sums of loss, grads and aux over one (micro-)batch."""
        grads, means, weight = mean_grads(params, batch, rng, extras, loss_scale)
        scale = lambda x: x * weight
        return jax.tree.map(scale, grads), jax.tree.map(scale, means), weight

    def step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        loss_scale = None if state.dynamic_scale is None else state.dynamic_scale.scale

        if accumulation_steps == 1 and axis_name is None:
            # One mean over the whole (global) batch: weighted sums would cost two extra passes over the grads.
            grads, means, _ = mean_grads(state.params, batch, rng, state.extras, loss_scale)
        else:
            if accumulation_steps == 1:
                grads, sums, weight = weighted_grads(state.params, batch, rng, state.extras, loss_scale)
            else:

                def micro_step(carry, inputs):
                    index, micro_batch = inputs
                    micro = weighted_grads(
                        state.params, micro_batch, jax.random.fold_in(rng, index), state.extras, loss_scale
                    )
                    return jax.tree.map(jnp.add, carry, micro), None

                zeros = jax.eval_shape(
                    lambda: weighted_grads(
                        state.params, jax.tree.map(lambda x: x[0], batch), rng, state.extras, loss_scale
                    )
                )
                zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
                (grads, sums, weight), _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accumulation_steps), batch))
            if axis_name is not None:
                grads, sums, weight = jax.lax.psum((grads, sums, weight), axis_name)
            grads = jax.tree.map(lambda g: g / weight, grads)
            means = {k: v / weight for k, v in sums.items()}
        metrics = {f"train/{k}": v for k, v in means.items()}

        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(grad_norm)
        return _apply(state, grads, finite, grad_norm, metrics)

    def update(state, grads, grad_norm):
        # qajax's optimizer clips with the norm computed here rather than computing it again.
        extra = {"global_norm": grad_norm} if isinstance(tx, optax.GradientTransformationExtraArgs) else {}
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        extras = dict(state.extras)
        for technique in updating:
            extras[technique.name] = technique.update_extras(extras[technique.name], params, state.step + 1)
        return params, opt_state, extras

    def _apply(state, grads, finite, grad_norm, metrics):
        # A non-finite loss or gradient keeps the old params, optimizer and technique state. A cond rather
        # than a select per element: with the state donated, selecting between old and new buffers made XLA
        # copy every optimizer leaf (~20 ms a step for MiniLM on the reference CPU).
        params, opt_state, extras = jax.lax.cond(
            finite,
            lambda: update(state, grads, grad_norm),
            lambda: (state.params, state.opt_state, state.extras),
        )
        dynamic_scale = state.dynamic_scale
        if dynamic_scale is not None:
            dynamic_scale = _update_loss_scale(dynamic_scale, finite)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            extras=extras,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
            dynamic_scale=dynamic_scale,
        )
        metrics = dict(metrics)
        metrics["train/grad_norm"] = grad_norm
        metrics["train/nonfinite_steps"] = new_state.nonfinite_steps
        if schedule is not None:
            # optax counts applied updates only; skipped steps do not advance the schedule.
            metrics["learning_rate"] = schedule(state.step - state.nonfinite_steps)
        if dynamic_scale is not None:
            metrics["train/loss_scale"] = dynamic_scale.scale
        return new_state, metrics

    return step


def _update_loss_scale(scale, finite):
    """fp16 dynamic loss scaling (the rule of flax's DynamicScale): halve on overflow, double after
    `growth_interval` finite steps in a row."""
    grown = scale.fin_steps + 1 >= scale.growth_interval
    new_scale = jnp.where(
        finite,
        jnp.where(grown, scale.scale * scale.growth_factor, scale.scale),
        jnp.maximum(scale.scale * scale.backoff_factor, scale.minimum_scale or 1.0),
    )
    fin_steps = jnp.where(finite & ~grown, scale.fin_steps + 1, 0)
    return scale.replace(scale=new_scale, fin_steps=fin_steps)
