"""qajax.train.optim against optax's own optimizers and hand-written schedule and clipping math."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qajax import tree
from qajax.errors import ConfigError
from qajax.train import optim

HIDDEN = 4
# Paths in Hugging Face's Flax layout (BERT, a scanned BERT stack, ALBERT, a QA head), with shapes unique
# enough that an optimizer state leaf can be told apart from others by shape.
SHAPES = {
    "bert/embeddings/word_embeddings/embedding": (11, HIDDEN),
    "bert/embeddings/LayerNorm/scale": (HIDDEN,),
    "bert/embeddings/LayerNorm/bias": (HIDDEN,),
    "bert/encoder/layer/0/attention/self/query/kernel": (HIDDEN, HIDDEN),
    "bert/encoder/layer/0/attention/self/query/bias": (HIDDEN,),
    "bert/encoder/layer/0/output/dense/kernel": (6, HIDDEN),
    "bert/encoder/layer/0/output/LayerNorm/scale": (HIDDEN,),
    "bert/encoder/layer/0/output/LayerNorm/bias": (HIDDEN,),
    "bert/encoder/layer/scanned/attention/self/query/kernel": (2, HIDDEN, HIDDEN),
    "bert/encoder/layer/scanned/output/LayerNorm/scale": (2, HIDDEN),
    "albert/encoder/albert_layer_groups/0/albert_layers/0/full_layer_layer_norm/scale": (HIDDEN,),
    "albert/encoder/albert_layer_groups/0/albert_layers/0/full_layer_layer_norm/bias": (HIDDEN,),
    "albert/encoder/albert_layer_groups/0/albert_layers/0/ffn/kernel": (HIDDEN, 7),
    "qa_outputs/kernel": (HIDDEN, 2),
    "qa_outputs/bias": (2,),
}
DECAYED = {
    "bert/embeddings/word_embeddings/embedding",
    "bert/encoder/layer/0/attention/self/query/kernel",
    "bert/encoder/layer/0/output/dense/kernel",
    "bert/encoder/layer/scanned/attention/self/query/kernel",
    "albert/encoder/albert_layer_groups/0/albert_layers/0/ffn/kernel",
    "qa_outputs/kernel",
}


def random_tree(seed, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    return tree.unflatten(
        {path: scale * jax.random.normal(key, shape) for key, (path, shape) in zip(keys, SHAPES.items(), strict=True)}
    )


def config(**overrides):
    c = optim.default_config()
    c.update(overrides)
    return c


def run(tx, params, steps, grad_seed=100):
    """`steps` optimizer steps with fresh random gradients; returns (params, last updates, state).

    Jitted, as the train step runs it: XLA then compiles the same math written as one expression (ours) or
    as a chain of inlined jits (optax) to the same float32 arithmetic, up to the last bit of the clip factor."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(steps):
        updates, state = update(random_tree(grad_seed + step), state, params)
        params = optax.apply_updates(params, updates)
    return params, updates, state


def assert_trees_close(actual, expected, **tolerance):
    assert tree.flatten(actual).keys() == tree.flatten(expected).keys()
    for path, value in tree.flatten(actual).items():
        np.testing.assert_allclose(value, tree.flatten(expected)[path], err_msg=path, **tolerance)


def test_decay_mask_excludes_biases_and_layer_norms():
    got = tree.flatten(optim.decay_mask(random_tree(0), optim.default_config().no_decay))
    assert {path for path, decays in got.items() if decays} == DECAYED


def test_adamw_equals_optax_adamw_after_clipping():
    c = config(learning_rate=1e-2, warmup_steps=2, weight_decay=0.1, b1=0.8, b2=0.99, eps=1e-6, grad_clip_norm=1.0)
    tx, schedule = optim.make_optimizer(c, random_tree(0), total_steps=10, steps_per_epoch=5)
    mask = {path: path in DECAYED for path in SHAPES}
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1, mask=tree.unflatten(mask)),
    )
    params, updates, _ = run(tx, random_tree(0), steps=5)
    expected_params, expected_updates, _ = run(reference, random_tree(0), steps=5)
    assert_trees_close(updates, expected_updates, rtol=1e-6, atol=1e-9)
    assert_trees_close(params, expected_params, rtol=1e-6, atol=1e-9)
    # The decay mask mattered: without it the decayed kernels would move differently.
    unmasked = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, 0.8, 0.99, 1e-6, weight_decay=0.1))
    _, unmasked_updates, _ = run(unmasked, random_tree(0), steps=5)
    bias = "bert/embeddings/LayerNorm/bias"
    assert not np.allclose(tree.flatten(updates)[bias], tree.flatten(unmasked_updates)[bias], rtol=1e-6, atol=0)


PEAK, END_RATIO, TOTAL, WARMUP = 1e-3, 0.1, 110, 10


@pytest.mark.parametrize(
    "name, step, expected",
    [
        ("linear", 0, 0.0),
        ("linear", 5, PEAK / 2),
        ("linear", WARMUP, PEAK),
        ("linear", 60, PEAK + (END_RATIO * PEAK - PEAK) * 50 / 100),
        ("linear", TOTAL, END_RATIO * PEAK),
        ("cosine", 0, 0.0),
        ("cosine", WARMUP, PEAK),
        ("cosine", 35, END_RATIO * PEAK + (PEAK - END_RATIO * PEAK) * 0.5 * (1 + math.cos(math.pi * 25 / 100))),
        ("cosine", 60, (PEAK + END_RATIO * PEAK) / 2),
        ("cosine", TOTAL, END_RATIO * PEAK),
        ("constant", 3, PEAK * 3 / WARMUP),
        ("constant", WARMUP, PEAK),
        ("constant", TOTAL, PEAK),
        # Epochs of 20 steps, counted from the end of warmup: staircase factors 1, 0.9, 0.81, ...
        ("exponential", 0, 0.0),
        ("exponential", WARMUP, PEAK),
        ("exponential", WARMUP + 19, PEAK),
        ("exponential", WARMUP + 20, PEAK * 0.9),
        ("exponential", WARMUP + 39, PEAK * 0.9),
        ("exponential", WARMUP + 40, PEAK * 0.9**2),
        ("exponential", TOTAL, PEAK * 0.9**5),
    ],
)
def test_schedule_values(name, step, expected):
    c = config(schedule=name, learning_rate=PEAK, warmup_steps=WARMUP, end_learning_rate_ratio=END_RATIO)
    schedule = optim.make_schedule(c, total_steps=TOTAL, steps_per_epoch=20)
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-12)


def test_warmup_ratio_and_no_warmup():
    by_ratio = optim.make_schedule(config(warmup_ratio=0.05), total_steps=200, steps_per_epoch=10)
    by_steps = optim.make_schedule(config(warmup_steps=10), total_steps=200, steps_per_epoch=10)
    for step in (0, 4, 10, 100, 200):
        np.testing.assert_allclose(by_ratio(step), by_steps(step), rtol=1e-6)
    no_warmup = optim.make_schedule(config(learning_rate=2.0), total_steps=100, steps_per_epoch=10)
    np.testing.assert_allclose([no_warmup(0), no_warmup(50), no_warmup(100)], [2.0, 1.0, 0.0], rtol=1e-6)


def sgd(**overrides):
    return config(name="sgd", learning_rate=1.0, schedule="constant", weight_decay=0.0, **overrides)


def test_clipping_gives_the_global_norm_before_the_optimizer():
    grads = random_tree(1, scale=1e3)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    tx, _ = optim.make_optimizer(sgd(grad_clip_norm=0.5), random_tree(0), total_steps=10, steps_per_epoch=5)
    updates, _ = tx.update(grads, tx.init(random_tree(0)), random_tree(0))
    assert_trees_close(updates, jax.tree.map(lambda g: -0.5 * g / norm, grads), rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(sum(np.sum(np.square(u)) for u in jax.tree.leaves(updates))), 0.5, rtol=1e-5)
    # Off: the raw gradient goes through.
    tx, _ = optim.make_optimizer(sgd(grad_clip_norm=None), random_tree(0), total_steps=10, steps_per_epoch=5)
    updates, _ = tx.update(grads, tx.init(random_tree(0)), random_tree(0))
    assert_trees_close(updates, jax.tree.map(jnp.negative, grads), rtol=0)


def test_lr_multipliers_scale_sgd_updates_first_rule_wins():
    rules = (("qa_outputs/kernel", 10.0), ("qa_outputs/.*", 3.0), ("bert/embeddings/.*", 0.5))
    tx, _ = optim.make_optimizer(sgd(lr_multipliers=rules), random_tree(0), total_steps=10, steps_per_epoch=5)
    grads = random_tree(1, scale=1e-3)  # small enough that clipping at 1.0 does nothing
    updates, _ = tx.update(grads, tx.init(random_tree(0)), random_tree(0))

    def multiplier(path):
        return 10.0 if path == "qa_outputs/kernel" else 3.0 if path == "qa_outputs/bias" else 1.0

    expected = {
        path: -(0.5 if path.startswith("bert/embeddings/") else multiplier(path)) * g
        for path, g in tree.flatten(grads).items()
    }
    assert_trees_close(updates, tree.unflatten(expected), rtol=1e-7)


def test_lr_multiplier_scales_adamw_decay_too():
    c = config(learning_rate=1e-2, weight_decay=0.1, schedule="constant")
    plain, _ = optim.make_optimizer(c, random_tree(0), total_steps=10, steps_per_epoch=5)
    c.lr_multipliers = (("qa_outputs/.*", 0.1),)
    scaled, _ = optim.make_optimizer(c, random_tree(0), total_steps=10, steps_per_epoch=5)
    plain_updates = tree.flatten(run(plain, random_tree(0), steps=1)[1])
    scaled_updates = tree.flatten(run(scaled, random_tree(0), steps=1)[1])
    for path in SHAPES:
        factor = 0.1 if path.startswith("qa_outputs/") else 1.0
        np.testing.assert_allclose(scaled_updates[path], factor * plain_updates[path], rtol=1e-6, err_msg=path)


def test_frozen_params_stay_bitwise_and_have_no_state():
    frozen = ("bert/embeddings/.*", "albert/.*")
    c = config(learning_rate=1e-2, frozen=frozen)
    tx, _ = optim.make_optimizer(c, random_tree(0), total_steps=10, steps_per_epoch=5)
    params, _, state = run(tx, random_tree(0), steps=3)
    is_frozen = tree.flatten(tree.mask(random_tree(0), frozen))
    for path, value in tree.flatten(params).items():
        before = np.asarray(tree.flatten(random_tree(0))[path])
        assert (np.asarray(value).tobytes() == before.tobytes()) == is_frozen[path], path
    state_shapes = {np.shape(leaf) for leaf in jax.tree.leaves(state)}
    for path, shape in SHAPES.items():
        if path in (
            "bert/embeddings/word_embeddings/embedding",
            "albert/encoder/albert_layer_groups/0/albert_layers/0/ffn/kernel",
        ):
            assert shape not in state_shapes, path  # shapes no trainable param has
    assert SHAPES["qa_outputs/kernel"] in state_shapes  # trainable params do have Adam moments


def test_frozen_gradients_do_not_count_towards_the_clipping_norm():
    grads = random_tree(1, scale=1e-2)
    grads["bert"]["embeddings"]["word_embeddings"]["embedding"] *= 1e6
    c = sgd(frozen=("bert/embeddings/word_embeddings/.*",), grad_clip_norm=1.0)
    tx, _ = optim.make_optimizer(c, random_tree(0), total_steps=10, steps_per_epoch=5)
    updates = tree.flatten(tx.update(grads, tx.init(random_tree(0)), random_tree(0))[0])
    for path, g in tree.flatten(grads).items():
        expected = 0.0 * g if path == "bert/embeddings/word_embeddings/embedding" else -g
        np.testing.assert_array_equal(updates[path], expected, err_msg=path)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"name": "adagrad"}, "optimizer.name"),
        ({"schedule": "foo"}, "optimizer.schedule"),
        ({"warmup_steps": 5, "warmup_ratio": 0.1}, "optimizer.warmup_steps"),
        ({"warmup_steps": 10}, "optimizer.warmup_steps"),  # not below total_steps=10
        ({"warmup_ratio": 1.5}, "optimizer.warmup_ratio"),
        ({"learning_rate": -1e-3}, "optimizer.learning_rate"),
        ({"end_learning_rate_ratio": 2.0}, "optimizer.end_learning_rate_ratio"),
        ({"decay_gamma": 0.0}, "optimizer.decay_gamma"),
        ({"weight_decay": -0.1}, "optimizer.weight_decay"),
        ({"name": "sgd"}, "optimizer.weight_decay"),  # default 0.01 decay with sgd
        ({"name": "adam", "weight_decay": 0.01}, "optimizer.weight_decay"),
        ({"name": "sgd", "weight_decay": 0.0, "momentum": 1.5}, "optimizer.momentum"),
        ({"b2": 1.0}, "optimizer.b2"),
        ({"grad_clip_norm": -1.0}, "optimizer.grad_clip_norm"),
        ({"frozen": ("bert/embedings/.*",)}, "'bert/embedings/.*'"),
        ({"frozen": ("qa_outputs",)}, "optimizer.frozen"),  # must match a whole path
        ({"lr_multipliers": (("qa_output/.*", 2.0),)}, "optimizer.lr_multipliers: 'qa_output/.*'"),
        ({"lr_multipliers": (("qa_outputs/(", 2.0),)}, "optimizer.lr_multipliers"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        optim.make_optimizer(config(**overrides), random_tree(0), total_steps=10, steps_per_epoch=5)


def test_adam_and_sgd_without_decay_match_optax():
    adam, _ = optim.make_optimizer(
        config(name="adam", weight_decay=0.0, schedule="constant", learning_rate=1e-2, grad_clip_norm=None),
        random_tree(0),
        total_steps=10,
        steps_per_epoch=5,
    )
    momentum, _ = optim.make_optimizer(
        sgd(momentum=0.9, nesterov=True, grad_clip_norm=None), random_tree(0), total_steps=10, steps_per_epoch=5
    )
    for ours, reference in ((adam, optax.adam(1e-2)), (momentum, optax.sgd(1.0, momentum=0.9, nesterov=True))):
        params, _, _ = run(ours, random_tree(0), steps=3)
        assert_trees_close(params, run(reference, random_tree(0), steps=3)[0], rtol=1e-6, atol=1e-9)


def test_weight_decay_without_params_is_an_error():
    tx, _ = optim.make_optimizer(config(weight_decay=0.1), random_tree(0), total_steps=10, steps_per_epoch=5)
    with pytest.raises(ValueError, match="weight decay needs the params"):
        tx.update(random_tree(1), tx.init(random_tree(0)))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_state_keeps_the_params_dtype_under_float32_gradients(name):
    """bfloat16 params with float32 gradients (accumulation, loss scaling): the moments stay bfloat16, so the
    step's non-finite guard (a cond) sees the same state types on both branches."""
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), random_tree(0))
    overrides = {"momentum": 0.9, "weight_decay": 0.0} if name == "sgd" else {}
    tx, _ = optim.make_optimizer(config(name=name, **overrides), params, total_steps=10, steps_per_epoch=5)
    state = tx.init(params)
    _, new_state = jax.jit(tx.update)(random_tree(1), state, params)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


def test_clip_uses_the_callers_global_norm_only_when_every_param_trains():
    grads = random_tree(1, scale=1e3)
    norm = float(optax.tree.norm(grads))
    params = random_tree(0)

    def updates(frozen, given):
        tx, _ = optim.make_optimizer(sgd(grad_clip_norm=0.5, frozen=frozen), params, total_steps=10, steps_per_epoch=5)
        return tree.flatten(tx.update(grads, tx.init(params), params, global_norm=given)[0])

    path = "qa_outputs/kernel"
    # The step passes the norm it logs: with it, no second pass over the gradients, the same update.
    np.testing.assert_allclose(updates((), norm)[path], updates((), None)[path], rtol=1e-6)
    # Taken as given (twice the norm: half the update) ...
    np.testing.assert_allclose(updates((), 2 * norm)[path], 0.5 * updates((), None)[path], rtol=1e-6)
    # ... except when something is frozen: the clip's norm then leaves the frozen gradients out.
    frozen = ("bert/embeddings/.*",)
    np.testing.assert_allclose(updates(frozen, 2 * norm)[path], updates(frozen, None)[path], rtol=1e-6)
