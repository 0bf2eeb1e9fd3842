"""The train step: `step(state, batch) -> (state, metrics)`, pure, built once per run.

    loss_fn(params, batch, rng, extras) -> (loss, aux)

`loss` is the mean over the batch's examples; `aux` is a flat dict of scalar metrics and may hold
`"weight"`, the number of examples the mean is over (padding excluded), which makes accumulated
micro-batches and data-parallel shards combine into exactly the large-batch mean, and MODEL_OUTPUTS, the
model outputs of the loss's own forward pass (loss transforms reuse them; the step drops them).
Techniques reach the step through their declared interface (`qajax.techniques.base.Technique`): each wraps
the loss (`wrap_loss`, innermost first, in the order the list gives) and updates the state it keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from qajax.train.state import TrainState

LossFn = Callable[[Any, dict, jax.Array, dict], tuple[jax.Array, dict]]
MODEL_OUTPUTS = "model_outputs"  # aux key: the forward pass a loss made, for the loss transforms around it


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
    over the devices of that axis; in mesh mode XLA inserts the reductions itself. `techniques` keep
    state in `state.extras[technique.name]`, updated after each update by `technique.update_extras`.
    """
    for technique in techniques:
        loss_fn = technique.wrap_loss(loss_fn)
    tx = optax.with_extra_args_support(tx)  # the step passes the gradient norm it computed (clipping reuses it)
    gradients = functools.partial(batch_gradients, loss_fn, accumulation_steps=accumulation_steps, axis_name=axis_name)

    def step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        loss_scale = None if state.dynamic_scale is None else state.dynamic_scale.scale
        grads, means = gradients(state.params, batch, rng, state.extras, loss_scale)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(means["loss"]) & jnp.isfinite(grad_norm)
        new_state = apply_gradients(state, grads, grad_norm, finite, tx, techniques)
        metrics = {f"train/{k}": v for k, v in means.items()}
        metrics["train/grad_norm"] = grad_norm
        metrics["train/nonfinite_steps"] = new_state.nonfinite_steps
        if schedule is not None:
            # optax counts applied updates only; skipped steps do not advance the schedule.
            metrics["learning_rate"] = schedule(state.step - state.nonfinite_steps)
        if new_state.dynamic_scale is not None:
            metrics["train/loss_scale"] = new_state.dynamic_scale.scale
        return new_state, metrics

    return step


def mean_gradients(loss_fn: LossFn, params, batch, rng, extras, loss_scale):
    """(gradients of the batch-mean loss, {"loss", aux...} means, the example weight of the mean)."""

    def scaled(p):
        loss, aux = loss_fn(p, batch, rng, extras)
        aux = {k: v for k, v in aux.items() if k != MODEL_OUTPUTS}
        return (loss if loss_scale is None else loss * loss_scale), (loss, aux)

    (_, (loss, aux)), grads = jax.value_and_grad(scaled, has_aux=True)(params)
    if loss_scale is not None:
        grads = jax.tree.map(lambda g: g / loss_scale, grads)
    means = {"loss": loss, **aux}
    weight = jnp.asarray(means.pop("weight", 1.0), jnp.float32)
    return grads, means, weight


def weighted_gradients(loss_fn: LossFn, params, batch, rng, extras, loss_scale):
    """Example-weighted sums of gradients and means over one (micro-)batch, and their weight."""
    grads, means, weight = mean_gradients(loss_fn, params, batch, rng, extras, loss_scale)
    scale = lambda x: x * weight
    return jax.tree.map(scale, grads), jax.tree.map(scale, means), weight


def batch_gradients(loss_fn: LossFn, params, batch, rng, extras, loss_scale, *, accumulation_steps, axis_name):
    """(gradients, metric means) of the whole global batch: micro-batches accumulated over a scan and device
    shards summed (pmap) as example-weighted sums, so they equal the one large-batch mean."""
    if accumulation_steps == 1 and axis_name is None:
        # One mean over the whole (global) batch: weighted sums would cost two extra passes over the grads.
        grads, means, _ = mean_gradients(loss_fn, params, batch, rng, extras, loss_scale)
        return grads, means
    if accumulation_steps == 1:
        grads, sums, weight = weighted_gradients(loss_fn, params, batch, rng, extras, loss_scale)
    else:

        def micro_step(carry, inputs):
            index, micro_batch = inputs
            micro_rng = jax.random.fold_in(rng, index)
            micro = weighted_gradients(loss_fn, params, micro_batch, micro_rng, extras, loss_scale)
            return jax.tree.map(jnp.add, carry, micro), None

        first = jax.tree.map(lambda x: x[0], batch)
        zeros = jax.eval_shape(lambda: weighted_gradients(loss_fn, params, first, rng, extras, loss_scale))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        (grads, sums, weight), _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accumulation_steps), batch))
    if axis_name is not None:
        grads, sums, weight = jax.lax.psum((grads, sums, weight), axis_name)
    return jax.tree.map(lambda g: g / weight, grads), {k: v / weight for k, v in sums.items()}


def apply_gradients(state: TrainState, grads, grad_norm, finite, tx, techniques) -> TrainState:
    """The state after one update, or with the old params, optimizer and technique state when the loss or a
    gradient is not finite. A cond rather than a select per element: with the state donated, selecting
    between old and new buffers made XLA copy every optimizer leaf (~20 ms a step for MiniLM on the
    reference CPU)."""

    def update():
        updates, opt_state = tx.update(grads, state.opt_state, state.params, global_norm=grad_norm)
        params = optax.apply_updates(state.params, updates)
        extras = dict(state.extras)
        for technique in techniques:
            if technique.name in extras:
                extras[technique.name] = technique.update_extras(extras[technique.name], params, state.step + 1)
        return params, opt_state, extras

    params, opt_state, extras = jax.lax.cond(finite, update, lambda: (state.params, state.opt_state, state.extras))
    dynamic_scale = state.dynamic_scale
    if dynamic_scale is not None:
        dynamic_scale = _update_loss_scale(dynamic_scale, finite)
    return state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        extras=extras,
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
        dynamic_scale=dynamic_scale,
    )


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
