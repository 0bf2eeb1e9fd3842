"""The pure train step against reference math: accumulation, non-finite skips, loss scaling, one compile."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qajax import tree
from qajax.tasks.synthetic import generate
from qajax.techniques.base import Technique
from qajax.train.parallel import Parallel
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_task


def _close(a, b, atol):
    fa, fb = tree.flatten(a), tree.flatten(b)
    for path in fa:
        np.testing.assert_allclose(np.asarray(fa[path]), np.asarray(fb[path]), atol=atol, err_msg=path)


def _run(task, tx, batches, accumulation_steps=1, techniques=()):
    step = jax.jit(make_train_step(task.loss_fn, tx, accumulation_steps=accumulation_steps, techniques=techniques))
    state = TrainState.create(task.initial_params, tx, seed=0)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["train/loss"]))
    return state, losses, step


def test_accumulated_micro_batches_equal_the_large_batch():
    task = tiny_task(dropout=0.0)
    data = generate(32, 16, 64, 4, seed=0)
    data["example_weight"] = np.ones(32, np.float32)
    data["example_weight"][[3, 17, 30]] = 0.0  # padding rows, unevenly spread over micro-batches
    tx = optax.sgd(0.5)  # linear in the gradient: Adam would amplify float noise in near-zero gradients
    big, big_losses, _ = _run(task, tx, [data] * 3)
    micro = jax.tree.map(lambda x: x.reshape((4, 8) + x.shape[1:]), data)
    acc, acc_losses, _ = _run(task, tx, [micro] * 3, accumulation_steps=4)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    _close(acc.params, big.params, atol=1e-6)


def test_loss_is_the_weighted_mean_over_real_examples():
    task = tiny_task(dropout=0.0)
    data = generate(8, 16, 64, 4, seed=1)
    weights = np.array([1, 1, 1, 0, 1, 0, 1, 1], np.float32)
    real = {k: v[weights > 0] for k, v in data.items()}
    loss_padded, aux = task.loss_fn(task.initial_params, {**data, "example_weight": weights}, jax.random.key(0), {})
    loss_real, _ = task.loss_fn(task.initial_params, real, jax.random.key(0), {})
    np.testing.assert_allclose(loss_padded, loss_real, rtol=1e-6)
    assert float(aux["weight"]) == 6.0


class _PoisonOnFlag(Technique):
    """A loss transform that makes the loss NaN when the batch says so (a stand-in for an overflow)."""

    name, kind = "poison", "loss"

    def wrap_loss(self, loss_fn):
        def wrapped(params, batch, rng, extras):
            loss, aux = loss_fn(params, batch, rng, extras)
            return jnp.where(batch["poison"][0] > 0, jnp.nan, loss), aux

        return wrapped


def test_nonfinite_loss_skips_the_update_and_is_counted():
    task = tiny_task(dropout=0.0)
    data = generate(8, 16, 64, 4, seed=2)
    clean, poisoned = {**data, "poison": np.zeros(8, np.int32)}, {**data, "poison": np.ones(8, np.int32)}
    tx = optax.adamw(1e-3)
    step = jax.jit(make_train_step(task.loss_fn, tx, techniques=[_PoisonOnFlag()]))
    state = TrainState.create(task.initial_params, tx, seed=0)
    state, _ = step(state, clean)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, metrics = step(state, poisoned)
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, after, before)  # bitwise untouched
    assert int(metrics["train/nonfinite_steps"]) == 1 and int(state.step) == 2
    state, metrics = step(state, clean)
    assert int(metrics["train/nonfinite_steps"]) == 1
    assert np.isfinite(float(metrics["train/loss"]))


def test_bfloat16_params_with_accumulation_train():
    """Accumulation weighs the micro-batch gradients in float32; the optimizer state must stay bfloat16 for
    the non-finite guard's cond to type-check, and the params stay bfloat16."""
    from qajax.train import optim

    task = tiny_task(dropout=0.0)
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), task.initial_params)
    task = dataclasses.replace(task, initial_params=params)
    tx, _ = optim.make_optimizer(optim.default_config(), params, total_steps=10, steps_per_epoch=5)
    data = generate(8, 16, 64, 4, seed=4)
    micro = jax.tree.map(lambda x: x.reshape((2, 4) + x.shape[1:]), data)
    state, losses, _ = _run(task, tx, [micro] * 2, accumulation_steps=2)
    assert all(np.isfinite(losses))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}


def test_fp16_dynamic_loss_scale_halves_on_overflow_and_grows_after_clean_steps():
    # The scaling rule is independent of the compute dtype (and XLA:CPU has no fp16 matmul backward).
    task = tiny_task(dropout=0.0)
    data = generate(8, 16, 64, 4, seed=3)
    clean, poisoned = {**data, "poison": np.zeros(8, np.int32)}, {**data, "poison": np.ones(8, np.int32)}
    tx = optax.sgd(1e-2)
    step = jax.jit(make_train_step(task.loss_fn, tx, techniques=[_PoisonOnFlag()]))
    state = TrainState.create(task.initial_params, tx, seed=0, fp16=True)
    state = state.replace(dynamic_scale=state.dynamic_scale.replace(growth_interval=2))
    start = float(state.dynamic_scale.scale)
    state, _ = step(state, poisoned)
    assert float(state.dynamic_scale.scale) == start / 2
    state, _ = step(state, clean)
    state, metrics = step(state, clean)
    assert float(metrics["train/loss_scale"]) == start  # doubled after 2 finite steps
    # The scaled loss gives the unscaled gradient: same update as fp16 without scaling.
    reference = jax.jit(make_train_step(task.loss_fn, tx))
    plain = TrainState.create(task.initial_params, tx, seed=0)
    scaled = TrainState.create(task.initial_params, tx, seed=0, fp16=True)
    plain, _ = reference(plain, data)
    scaled, _ = jax.jit(make_train_step(task.loss_fn, tx))(scaled, data)
    _close(scaled.params, plain.params, atol=1e-6)


def test_step_and_eval_compile_once():
    task = tiny_task(dropout=0.1)
    tx = optax.adamw(1e-3)
    parallel = Parallel("mesh")
    make_state = lambda p: TrainState.create(p, tx, seed=0)
    abstract = parallel.abstract_state(make_state, task.initial_params)
    step = parallel.compile_step(make_train_step(task.loss_fn, tx), abstract)
    state = parallel.create_state(make_state, task.initial_params)
    data = generate(64, 16, 64, 4, seed=4)
    for i in range(4):
        batch = {k: v[i * 16 : (i + 1) * 16] for k, v in data.items()}
        state, _ = step(state, parallel.place_batch(batch))
    predict = parallel.compile_predict(task.predict_fn, parallel.param_shardings(abstract))
    for i in range(3):
        predict(state.params, parallel.place_batch({k: v[i * 8 : (i + 1) * 8] for k, v in data.items()}))
    assert Parallel.compilations(step) == 1 and Parallel.compilations(predict) == 1


def test_dropout_rng_differs_per_step_and_is_reproducible():
    task = tiny_task(dropout=0.3)
    data = generate(8, 16, 64, 4, seed=5)
    tx = optax.sgd(0.0)  # params never change: only the dropout masks move the loss
    _, losses, _ = _run(task, tx, [data] * 3)
    _, again, _ = _run(task, tx, [data] * 3)
    assert losses == again and len(set(losses)) == 3


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_learning_rate_metric_follows_the_schedule(accumulation_steps):
    task = tiny_task(dropout=0.0)
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    tx = optax.sgd(schedule)
    step = jax.jit(make_train_step(task.loss_fn, tx, schedule=schedule, accumulation_steps=accumulation_steps))
    state = TrainState.create(task.initial_params, tx, seed=0)
    data = generate(8, 16, 64, 4, seed=6)
    if accumulation_steps > 1:
        data = jax.tree.map(lambda x: x.reshape((2, 4) + x.shape[1:]), data)
    rates = []
    for _ in range(3):
        state, metrics = step(state, data)
        rates.append(float(metrics["learning_rate"]))
    np.testing.assert_allclose(rates, [1.0, 0.9, 0.8], rtol=1e-6)
