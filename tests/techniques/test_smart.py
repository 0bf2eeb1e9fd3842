"""SMART: divergences, normalization and projection against numpy; one ascent step against finite
differences; the momentum teacher against a hand EMA; the technique off equals plain training bit for bit;
LoRA + SDA + SMART together train through the loop."""

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qajax.errors import ConfigError
from qajax.tasks.synthetic import generate
from qajax.techniques import apply_techniques, smart
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_config, tiny_task

_task = functools.lru_cache(tiny_task)
BATCHES = [generate(8, 32, 64, 4, seed=s) for s in range(3)]


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_sym_kl(a, b):
    p, q = _np_softmax(a), _np_softmax(b)
    return np.sum(p * np.log(p / q) + q * np.log(q / p), axis=-1)


def test_symmetric_kl_matches_numpy_and_masks_padding():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(smart.symmetric_kl(a, b), _np_sym_kl(a, b), rtol=1e-5)
    mask = np.arange(7) < 4  # the last 3 positions are padding: the divergence of the first 4 alone
    np.testing.assert_allclose(smart.symmetric_kl(a, b, mask), _np_sym_kl(a[:, :4], b[:, :4]), rtol=1e-5)
    assert np.allclose(smart.symmetric_kl(a, a), 0.0, atol=1e-7)


def test_span_divergence_averages_start_and_end_over_real_tokens_and_regression_is_mse():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 2, 6)), rng.normal(size=(2, 2, 6))
    batch = {"attention_mask": np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])}
    expected = [
        np.mean(_np_sym_kl(a[0], b[0])),
        np.mean(_np_sym_kl(a[1, :, :3], b[1, :, :3])),
    ]
    np.testing.assert_allclose(smart.divergence("span", a, b, batch), expected, rtol=1e-5)
    x, y = rng.normal(size=(4,)), rng.normal(size=(4,))
    np.testing.assert_allclose(smart.divergence("regression", x, y, {}), (x - y) ** 2, rtol=1e-6)


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_direction_and_projection_are_per_token(norm):
    rng = np.random.default_rng(2)
    grad, delta = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    scale = np.abs(grad).max(-1, keepdims=True) if norm == "inf" else np.linalg.norm(grad, axis=-1, keepdims=True)
    np.testing.assert_allclose(smart.ascent_direction(grad, norm), grad / scale, rtol=1e-5)
    eps = 0.5
    projected = np.asarray(smart.project(delta, eps, norm))
    if norm == "inf":
        np.testing.assert_allclose(projected, np.clip(delta, -eps, eps))
    else:
        size = np.linalg.norm(delta, axis=-1, keepdims=True)
        np.testing.assert_allclose(projected, delta * np.minimum(1.0, eps / size), rtol=1e-5)
        assert np.all(np.linalg.norm(projected, axis=-1) <= eps + 1e-6)


def _linear_smart(**options):
    """SMART around a linear classifier over the embeddings' mean: logits = mean_t(e) @ W."""

    def forward(params, batch, rng=None, *, deterministic=True, inputs_embeds=None):
        return jnp.mean(inputs_embeds, axis=1) @ params["w"]

    task = types.SimpleNamespace(forward=forward, logits=lambda out: out, spec=None, output_kinds=None)
    settings = dict(weight=1.0, steps=1, sigma=1e-3, eta=0.1, eps=10.0, norm="inf", proximal_weight=0.0, beta=0.9)
    return smart.Smart(task, kind="classification", **{**settings, **options})


def test_one_ascent_step_follows_the_finite_difference_gradient():
    technique = _linear_smart()
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(4, 3))}
    embeds = rng.normal(size=(2, 5, 4))
    clean = np.mean(embeds, axis=1) @ params["w"]
    key = jax.random.key(7)
    delta = technique.adversarial_delta(params, {}, key, {"": jnp.asarray(embeds)}, {"": jnp.asarray(clean)})
    delta = np.asarray(delta[""])

    noise_key = jax.random.fold_in(jax.random.fold_in(key, 0x5A1), 0)  # the first (only) input's noise
    start = 1e-3 * np.asarray(jax.random.normal(noise_key, embeds.shape, jnp.float32))
    objective = lambda d: np.sum(_np_sym_kl(clean, np.mean(embeds + d, axis=1) @ params["w"]))
    grad, h = np.zeros_like(start), 1e-6
    for index in np.ndindex(start.shape):
        step = np.zeros_like(start)
        step[index] = h
        grad[index] = (objective(start + step) - objective(start - step)) / (2 * h)
    expected = start + 0.1 * grad / np.abs(grad).max(-1, keepdims=True)
    # float32 gradients of a divergence near 0 against float64 differences: within 5e-4 of the step eta=0.1
    np.testing.assert_allclose(delta, expected, rtol=1e-3, atol=5e-5)
    # A small eps clips every coordinate to the box.
    tight = _linear_smart(eps=1e-6).adversarial_delta(params, {}, key, {"": embeds}, {"": clean})[""]
    assert np.max(np.abs(tight)) <= 1e-6 * (1 + 1e-6)


def test_momentum_teacher_is_the_hand_ema():
    technique = _linear_smart(proximal_weight=1.0, beta=0.9)
    params = {"w": np.ones((2, 2), np.float32)}
    own = technique.init_extras(params)
    for value in (3.0, -1.0):
        own = technique.update_extras(own, {"w": np.full((2, 2), value, np.float32)}, step=1)
    expected = 0.9 * (0.9 * 1.0 + 0.1 * 3.0) + 0.1 * -1.0
    np.testing.assert_allclose(own["teacher"]["w"], expected, rtol=1e-6)
    assert _linear_smart(proximal_weight=0.0).init_extras(params) == {}


def _run(techniques_config: dict, *, dropout=0.0):
    task = _task(dropout)
    config = tiny_config()
    built = []
    for name, values in techniques_config.items():
        section = config.techniques[name].copy_and_resolve_references()
        section.update(enabled=True, **values)
        from qajax.techniques import REGISTRY, _module

        built.append(getattr(_module(name), REGISTRY[name][1])(section, task))
    task, _, init_extras = apply_techniques(task, built, config.optimizer)
    tx = optax.adam(1e-2)
    state = jax.device_put(TrainState.create(task.initial_params, tx, seed=0, extras=init_extras(task.initial_params)))
    step = jax.jit(make_train_step(task.loss_fn, tx, techniques=built))
    history = []
    for batch in BATCHES:
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return state, history


def test_smart_with_nothing_to_add_trains_bitwise_like_plain_training():
    plain, _ = _run({})
    off, history = _run({"smart": dict(steps=0, weight=0.0, proximal_weight=0.0, sigma=0.0)}, dropout=0.0)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(off.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(h["train/smart_loss"] == 0.0 for h in history)


def test_lora_sda_and_smart_train_together():
    state, history = _run(
        {"lora": dict(rank=4), "sda": dict(window=2), "smart": dict(steps=1, sigma=1e-3, eps=1e-2)}, dropout=0.1
    )
    losses = [float(h["train/loss"]) for h in history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {"train/smart_loss", "train/smart_proximal", "train/distill_loss"} <= set(history[-1])
    assert float(history[-1]["train/smart_loss"]) > 0.0
    assert set(state.extras) == {"sda", "smart"}


@pytest.mark.parametrize(
    "key, value, message",
    [("kind", "hinge", "techniques.smart.kind"), ("norm", "l1", "techniques.smart.norm"), ("beta", 1.0, "beta")],
)
def test_config_errors_name_the_key(key, value, message):
    config = smart.default_config()
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        smart.build(config, _task(0.0))


def test_the_clean_pass_is_the_task_losses_own():
    """One training-mode forward on the batch's ids (the task loss's, reused), T + 1 on perturbed embeddings."""
    calls = []
    task = _task(0.1)
    forward = task.forward

    def counted(params, batch, rng=None, *, deterministic=True, **options):
        calls.append(("embeds" if "inputs_embeds" in options else "ids", deterministic))
        return forward(params, batch, rng, deterministic=deterministic, **options)

    task = dataclasses.replace(task, forward=counted)
    config = smart.default_config()
    config.update(enabled=True, steps=2, proximal_weight=0.0)
    technique = smart.build(config, task)
    task, _, _ = apply_techniques(task, [technique], tiny_config().optimizer)
    jax.eval_shape(technique.wrap_loss(task.loss_fn), task.initial_params, BATCHES[0], jax.random.key(0), {})
    assert sorted(calls) == [("embeds", False)] * 3 + [("ids", False)]
