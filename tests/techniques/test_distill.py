"""Self-distillation (SDA, SDV) against numpy and hand-written reference math: the window average and the EMA
of recorded params, a ring buffer that wraps, the vmapped vote against a loop over the snapshot models, the
loss by hand with one student pass, no gradient into the teacher, weight 0 as plain training, the teacher
saved in the state, and one compile of the whole step. Three jitted training runs are shared (~40 s)."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from qajax.errors import ConfigError
from qajax.tasks.synthetic import generate
from qajax.techniques import apply_techniques, distill
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_config, tiny_task

BATCHES = [generate(8, 32, 64, 4, seed=s) for s in range(9)]
TX = optax.adam(1e-2)
_task = functools.lru_cache(tiny_task)  # techniques replace the task, never mutate it


def _enabled(config, **values):
    config.update(enabled=True, **values)
    return config


_sda = lambda **values: _enabled(distill.default_config_sda(), **values)
_sdv = lambda **values: _enabled(distill.default_config_sdv(), **values)


def _prepare(build, config, forward_calls=None):
    """The task and technique wired as the loop wires them (`apply_techniques`)."""
    task = _task(0.1)
    if forward_calls is not None:  # the model's calls by mode, counted at trace time
        forward = task.forward

        def counted(params, batch, rng=None, *, deterministic=True, **options):
            forward_calls.append("teacher" if deterministic else "student")
            return forward(params, batch, rng, deterministic=deterministic, **options)

        task = dataclasses.replace(task, forward=counted)
    technique = build(config, task)
    task, _, init_extras = apply_techniques(task, [technique], tiny_config().optimizer)
    return task, technique, init_extras


def _train(task, techniques, init_extras, batches, inspect=lambda state, metrics: None):
    # On the device before the first step, so that the step's inputs keep one placement (one compile).
    state = jax.device_put(TrainState.create(task.initial_params, TX, seed=0, extras=init_extras(task.initial_params)))
    step = jax.jit(make_train_step(task.loss_fn, TX, techniques=techniques))
    for batch in batches:
        state, metrics = step(state, batch)
        inspect(state, metrics)
    return state, metrics, step


def _assert_trees_close(actual, expected, atol):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def sda_run():
    """SDA, K=3, a snapshot every 2 updates, 9 updates: the params and the teacher after each update."""
    task, sda, init_extras = _prepare(distill.build_sda, _sda(window=3, snapshot_every=2))
    params, teachers = [], []

    def inspect(state, metrics):
        params.append(jax.tree.map(np.array, state.params))
        teachers.append(jax.tree.map(np.array, sda.teacher_params(state.extras["sda"])))

    state, metrics, step = _train(task, [sda], init_extras, BATCHES, inspect)
    return task, sda, state, metrics, step, params, teachers


@pytest.fixture(scope="module")
def sdv_run():
    """SDV with weight 0 (so that it must train as plain training), K=3, a snapshot every update, 5 updates."""
    task, sdv, init_extras = _prepare(distill.build_sdv, _sdv(window=3, snapshot_every=1, weight=0.0))
    params = []
    state, metrics, step = _train(task, [sdv], init_extras, BATCHES[:5], lambda s, m: params.append(s.params))
    return task, sdv, state, metrics, step, jax.tree.map(np.array, params)


def test_window_average_is_the_mean_of_the_recorded_snapshots_and_wraps(sda_run):
    task, _, state, metrics, step, params, teachers = sda_run
    _assert_trees_close(teachers[0], task.initial_params, atol=0)  # no snapshot yet: the initial params
    for update in range(2, 10):
        snapshots = [params[s - 1] for s in range(2, update + 1, 2)][-3:]  # taken after updates 2, 4, ...
        expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *snapshots)
        _assert_trees_close(teachers[update - 1], expected, atol=1e-6)
    own = state.extras["sda"]
    assert int(own["count"]) == 4  # 4 snapshots in 3 slots: the buffer wrapped once
    _assert_trees_close(jax.tree.map(lambda x: x[0], own["snapshots"]), params[8 - 1], atol=0)  # 4th over 1st
    assert float(metrics["train/distill_loss"]) > 0 and np.isfinite(float(metrics["train/loss"]))
    assert step._cache_size() == 1


def test_ema_is_the_hand_computed_ema(sda_run):
    task, _, _, _, _, params, _ = sda_run
    sda = distill.build_sda(_sda(mode="ema", decay=0.6), task)
    own, update = sda.init_extras(task.initial_params), jax.jit(sda.update_extras)
    ema = jax.tree.map(np.array, task.initial_params)
    for step, p in enumerate(params, start=1):
        own = update(own, p, step)
        ema = jax.tree.map(lambda e, x: 0.6 * e + 0.4 * x, ema, p)
        _assert_trees_close(sda.teacher_params(own), ema, atol=1e-6)


def test_vote_is_the_mean_of_the_snapshot_models_logits_after_the_buffer_wraps(sdv_run):
    task, sdv, state, metrics, step, params = sdv_run
    batch = BATCHES[5]
    loop = [task.logits(task.forward(p, batch, None, deterministic=True)) for p in params[-3:]]
    vote = jax.jit(sdv.teacher_logits)(state.extras["sdv"], batch)
    np.testing.assert_allclose(vote, np.mean(loop, axis=0), rtol=0, atol=1e-6)
    assert int(state.extras["sdv"]["count"]) == 5 and step._cache_size() == 1
    assert float(metrics["train/distill_loss"]) > 0


def test_weight_zero_trains_as_plain_training(sdv_run):
    _, _, distilled, _, _, _ = sdv_run
    plain, _, _ = _train(_task(0.1), [], lambda p: {}, BATCHES[:5])
    _assert_trees_close(distilled.params, plain.params, atol=1e-7)


def test_teacher_lives_in_the_saved_state(sdv_run):
    _, _, state, _, step, _ = sdv_run
    leaves, treedef = jax.tree.flatten(state)
    restored = jax.device_put(jax.tree.unflatten(treedef, [np.array(x) for x in leaves]))  # a checkpoint's view
    _assert_trees_close(restored.extras["sdv"], state.extras["sdv"], atol=0)
    continued, _ = step(state, BATCHES[5])
    resumed, _ = step(restored, BATCHES[5])
    _assert_trees_close(resumed, continued, atol=0)


@pytest.mark.parametrize(
    "build, config", [(distill.build_sda, _sda(weight=0.7)), (distill.build_sdv, _sdv(weight=0.7))]
)
def test_loss_is_task_loss_plus_weighted_mse_with_one_student_pass_and_no_teacher_gradient(build, config):
    calls = []
    task, technique, init_extras = _prepare(build, config, forward_calls=calls)
    teacher = jax.tree.map(lambda p: p + 0.05 * np.sign(p), task.initial_params)  # a teacher unlike the student
    own = init_extras(teacher)[technique.name]
    batch = {**BATCHES[0], "example_weight": np.array([1, 1, 0, 1, 0, 1, 1, 1], np.float32)}  # 2 padding rows
    params, rng = task.initial_params, jax.random.key(3)

    def loss_of_snapshots(snapshots):
        extras = {technique.name: {**own, "snapshots": snapshots}}
        return technique.wrap_loss(task.loss_fn)(params, batch, rng, extras)

    (loss, aux), teacher_grad = jax.jit(jax.value_and_grad(loss_of_snapshots, has_aux=True))(own["snapshots"])
    assert calls == ["student", "teacher"]  # the task loss's student pass is reused, not run again
    assert not any(np.any(g) for g in jax.tree.leaves(teacher_grad))  # stop_gradient

    task_loss, task_aux = task.loss_fn(params, batch, rng, {})
    student = np.asarray(task.logits(task.forward(params, batch, rng, deterministic=False)), np.float64)
    target = np.asarray(task.logits(task.forward(teacher, batch, None, deterministic=True)), np.float64)
    real = np.broadcast_to(np.asarray(batch["attention_mask"])[:, None, :] != 0, student.shape)
    assert not real.all()  # the batch has padding tokens: the MSE leaves them out, as the span loss does
    per_example = [np.mean(((s - t) ** 2)[r]) for s, t, r in zip(student, target, real, strict=True)]
    mse = np.mean(np.asarray(per_example)[batch["example_weight"] > 0])
    np.testing.assert_allclose(aux["distill_loss"], mse, rtol=1e-5)
    np.testing.assert_allclose(loss, float(task_loss) + 0.7 * mse, rtol=1e-6)
    assert float(aux["weight"]) == float(task_aux["weight"]) == 6.0


@pytest.mark.parametrize(
    "build, config, message",
    [
        (distill.build_sda, _sda(mode="mean"), r"techniques\.sda\.mode='mean'"),
        (distill.build_sda, _sda(decay=1.0), r"techniques\.sda\.decay=1.0"),
        (distill.build_sdv, _sdv(window=0), r"techniques\.sdv\.window=0"),
        (distill.build_sdv, _sdv(weight=-1.0), r"techniques\.sdv\.weight=-1.0"),
    ],
)
def test_config_errors_name_the_key(build, config, message):
    with pytest.raises(ConfigError, match=message):
        build(config, None)


def test_mse_leaves_padding_tokens_and_rows_out_so_trimmed_batches_distil_alike():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 2, 10)).astype(np.float32)
    lengths = np.array([10, 6, 3])
    mask = (np.arange(10)[None] < lengths[:, None]).astype(np.int32)
    weight = np.array([1, 1, 0], np.float32)
    batch = {"attention_mask": mask, "example_weight": weight}
    expected = np.mean([np.mean((student[i, :, :n] - teacher[i, :, :n]) ** 2) for i, n in enumerate(lengths[:2])])
    np.testing.assert_allclose(distill.distill_mse(student, teacher, batch), expected, rtol=1e-6)
    garbage = np.where(mask[:, None, :] == 1, student, 99.0)  # what padding holds must not matter
    np.testing.assert_allclose(distill.distill_mse(garbage, teacher, batch), expected, rtol=1e-6)
    np.testing.assert_allclose(  # row 1 (6 real tokens) alone: trimming to its length changes nothing
        distill.distill_mse(student[1:2, :, :6], teacher[1:2, :, :6], {"attention_mask": mask[1:2, :6]}),
        distill.distill_mse(student[1:2], teacher[1:2], {"attention_mask": mask[1:2]}),
        rtol=1e-6,
    )
    # Dict logits (multitask): the mean of the per-task MSEs, each over its own examples.
    a, b = {"x": student[:, 0, 0], "y": student[:, 1]}, {"x": teacher[:, 0, 0], "y": teacher[:, 1]}
    per_task = [np.mean((student[:, 0, 0] - teacher[:, 0, 0]) ** 2), np.mean((student[:, 1] - teacher[:, 1]) ** 2)]
    np.testing.assert_allclose(distill.distill_mse(a, b, {}), np.mean(per_task), rtol=1e-6)
