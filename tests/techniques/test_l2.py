"""L2 toward zero or toward the pretrained params: the penalty and its gradient against numpy, and a
pretrained anchor that keeps training closer to where it started."""

import jax
import numpy as np
import pytest

from qajax import tree
from qajax.errors import ConfigError
from qajax.tasks.synthetic import generate
from qajax.techniques import l2
from qajax.train.optim import make_optimizer
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_config, tiny_task


def _config(**values):
    config = l2.default_config()
    config.enabled = True
    config.update(values)
    return config


def _tree(seed):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: rng.normal(size=shape).astype(np.float32)
    return {
        "layer": {"dense": {"kernel": draw(3, 4), "bias": draw(4)}, "LayerNorm": {"scale": draw(4), "bias": draw(4)}},
        "full_layer_layer_norm": {"scale": draw(4)},  # ALBERT's name: excluded by the default too
        "embeddings": {"embedding": draw(5, 3)},
    }


REGULARISED = ("layer/dense/kernel", "embeddings/embedding")


@pytest.mark.parametrize("toward", ["zero", "pretrained"])
def test_penalty_and_gradient_match_numpy(toward):
    technique = l2.build(_config(weight=0.3, toward=toward), task=None)
    start, params = _tree(0), _tree(1)
    extras = {"l2": technique.init_extras(start)} if toward == "pretrained" else {}
    task_loss = lambda p, batch, rng, extras: (jax.numpy.sum(p["layer"]["dense"]["bias"]), {"weight": 2.0})
    loss_fn = technique.wrap_loss(task_loss)

    anchor = tree.flatten(start) if toward == "pretrained" else {k: 0.0 for k in REGULARISED}
    flat = tree.flatten(params)
    penalty = 0.3 * sum(np.sum((flat[k].astype(np.float64) - anchor[k]) ** 2) for k in REGULARISED)
    loss, aux = loss_fn(params, None, None, extras)
    np.testing.assert_allclose(aux["l2_loss"], penalty, rtol=1e-6)
    np.testing.assert_allclose(loss, flat["layer/dense/bias"].sum() + penalty, rtol=1e-6)
    assert aux["weight"] == 2.0  # the task's aux passes through

    grads = tree.flatten(jax.grad(lambda p: loss_fn(p, None, None, extras)[0])(params))
    for path, grad in grads.items():
        expected = 2 * 0.3 * (flat[path] - anchor[path]) if path in REGULARISED else 0.0
        expected = expected + (path == "layer/dense/bias")  # d(sum(bias))/d(bias)
        np.testing.assert_allclose(grad, np.broadcast_to(expected, grad.shape), rtol=1e-5, atol=1e-7, err_msg=path)


def test_pretrained_anchor_holds_copies_of_the_regularised_params_only():
    technique = l2.build(_config(toward="pretrained"), task=None)
    start = _tree(0)
    anchor = tree.flatten(technique.init_extras(start)["anchor"])
    assert sorted(anchor) == sorted(REGULARISED)
    for path in REGULARISED:
        np.testing.assert_array_equal(anchor[path], tree.flatten(start)[path])
    assert l2.build(_config(toward="zero"), task=None).init_extras(start) is None  # no state to keep


@pytest.mark.parametrize(
    "values, message",
    [({"toward": "init"}, r"toward='init'"), ({"weight": -1.0}, "weight=-1.0"), ({"exclude": ("(",)}, "exclude")],
)
def test_config_errors_name_the_key(values, message):
    with pytest.raises(ConfigError, match=rf"techniques\.l2\.{message}"):
        l2.build(_config(**values), task=None)


def test_pretrained_anchor_keeps_training_closer_to_the_start():
    config = tiny_config("optimizer.weight_decay=0.0")
    task = tiny_task(0.0)
    technique = l2.build(_config(weight=1.0, toward="pretrained"), task)
    tx, _ = make_optimizer(config.optimizer, task.initial_params, total_steps=30, steps_per_epoch=30)
    batches = [generate(16, 32, 64, 4, seed=s) for s in range(20)]

    def train(techniques):
        extras = {t.name: t.init_extras(task.initial_params) for t in techniques}
        state = TrainState.create(task.initial_params, tx, seed=0, extras=extras)
        step = jax.jit(make_train_step(task.loss_fn, tx, techniques=techniques))
        for batch in batches:
            state, metrics = step(state, batch)
        pairs = zip(jax.tree.leaves(state.params), jax.tree.leaves(task.initial_params), strict=True)
        distance = sum(np.sum((a - b) ** 2) for a, b in pairs)
        return distance, metrics

    plain, _ = train([])
    anchored, metrics = train([technique])
    assert 0.0 < float(metrics["train/l2_loss"]) and anchored < 0.5 * plain
