"""Layer freezing: which params freeze, exact zero gradients, a backward pass without the frozen layers'
matmuls, and training that leaves the frozen params bitwise alone and the others as the optimizer mask alone."""

import types

import jax
import numpy as np
import pytest

from qajax import tree
from qajax.errors import ConfigError
from qajax.models.config import EncoderConfig
from qajax.models.heads import build_model, init_params
from qajax.models.spec import ModelSpec
from qajax.tasks.span import make_forward, make_output_loss
from qajax.tasks.synthetic import generate
from qajax.techniques import apply_techniques, freeze
from qajax.train.optim import make_optimizer
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_config, tiny_task

SMALL = dict(vocab_size=64, hidden_size=16, num_heads=2, intermediate_size=32, max_position_embeddings=32)


def _config(**values):
    config = freeze.default_config()
    config.enabled = True
    config.update(values)
    return config


def _spec_task(**encoder):
    return types.SimpleNamespace(spec=ModelSpec(EncoderConfig(**{**SMALL, **encoder})))


@pytest.mark.parametrize(
    "encoder, values, message",
    [
        ({}, {}, "set exactly one"),
        ({}, {"num_frozen_layers": 1, "num_trainable_layers": 1}, "set exactly one"),
        ({"num_layers": 4}, {"num_trainable_layers": 5}, r"num_trainable_layers=5: expected 0\.\.4"),
        ({"family": "albert", "num_layers": 4, "num_groups": 2}, {"num_frozen_layers": 3}, "layer groups"),
        ({}, {"num_frozen_layers": 0, "freeze_embeddings": False}, "freezes nothing"),
        ({"num_layers": 4, "scan_layers": True}, {"num_trainable_layers": 1}, "scan_layers=False"),
    ],
)
def test_config_errors_name_the_key(encoder, values, message):
    with pytest.raises(ConfigError, match=rf"techniques\.freeze.*{message}"):
        freeze.build(_config(**values), _spec_task(**encoder))


# (encoder, freeze config, path prefixes that must be exactly the frozen ones)
CASES = {
    "bert-top1": (
        {"num_layers": 4},
        {"num_trainable_layers": 1},
        ["bert/embeddings/", *(f"bert/encoder/layer/{i}/" for i in range(3))],
    ),
    "bert-layers-only": (
        {"num_layers": 3},
        {"num_frozen_layers": 2, "freeze_embeddings": False},
        ["bert/encoder/layer/0/", "bert/encoder/layer/1/"],
    ),
    "electra-proj": (
        {"family": "electra", "embedding_size": 8, "num_layers": 2},
        {"num_frozen_layers": 1},
        ["electra/embeddings/", "electra/embeddings_project/", "electra/encoder/layer/0/"],
    ),
    "albert-2groups": (  # group 0 serves layers 0-1, group 1 layers 2-3
        {"family": "albert", "embedding_size": 8, "num_layers": 4, "num_groups": 2},
        {"num_trainable_layers": 1},
        ["albert/embeddings/", "albert/encoder/embedding_hidden_mapping_in/", "albert/encoder/albert_layer_groups/0/"],
    ),
    "bert-scanned-all": ({"num_layers": 2, "scan_layers": True}, {"num_trainable_layers": 0}, ["bert/"]),
}


def _build(case):
    """(technique, model, params, frozen paths); params from numpy, which needs no compiled init."""
    encoder, values, _ = CASES[case]
    task = _spec_task(**encoder)
    technique = freeze.build(_config(**values), task)
    model = build_model(task.spec.encoder, "qa")
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(0)
    draw = lambda path, s: rng.normal(float(path.endswith("scale")), 0.1, s.shape).astype(s.dtype)
    params = tree.map_with_path(draw, shapes)
    frozen = {p for p, hit in tree.flatten(tree.mask(params, technique.frozen_patterns(params))).items() if hit}
    return technique, model, params, frozen


@pytest.mark.parametrize("case", sorted(CASES))
def test_frozen_params_are_the_embeddings_and_the_bottom_layers(case):
    _, _, params, frozen = _build(case)
    assert frozen == {p for p in tree.flatten(params) if p.startswith(tuple(CASES[case][2]))}


# Embeddings trainable below frozen layers (input gradients must cross them); a shared ALBERT group.
@pytest.mark.parametrize("case", ["bert-layers-only", "albert-2groups"])
def test_frozen_params_get_exactly_zero_gradients_and_the_others_theirs(case):
    technique, model, params, frozen = _build(case)
    batch = generate(4, 16, 64, 4, seed=0)
    forward, output_loss = make_forward(model), make_output_loss()
    grad = lambda fwd: jax.grad(lambda p: output_loss(fwd(p, batch), batch)[0])(params)
    plain, stopped = map(tree.flatten, jax.jit(lambda: (grad(forward), grad(technique.wrap_forward(forward))))())
    for path in plain:
        if path in frozen:
            assert np.any(plain[path]) and not np.any(stopped[path]), path
        else:  # the boundary must not change what reaches the trainable params (float noise aside)
            np.testing.assert_allclose(stopped[path], plain[path], rtol=1e-5, atol=1e-7, err_msg=path)


@pytest.mark.parametrize("num_frozen", [1, 3])
def test_backward_has_no_matmuls_below_the_first_trainable_layer(num_frozen):
    _, model, params, _ = _build("bert-top1")  # 4 layers
    technique = freeze.build(_config(num_frozen_layers=num_frozen), _spec_task(num_layers=4))
    batch = generate(4, 16, 64, 4, seed=0)
    forward, output_loss = make_forward(model), make_output_loss()
    loss = lambda fwd: lambda p: output_loss(fwd(p, batch), batch)[0]
    count = lambda fn, *args: str(jax.make_jaxpr(fn)(*args)).count("dot_general")

    full = count(jax.grad(loss(forward)), params)
    frozen = count(jax.grad(loss(technique.wrap_forward(forward))), params)
    # A BERT layer has 8 matmuls (query, key, value, attention output, scores, context, intermediate,
    # output), each with a weight- and an input-gradient matmul in the backward: 16 per frozen layer, and
    # the first trainable layer needs no input gradient for query, key and value: 3 more.
    assert full - frozen == 16 * num_frozen + 3
    # The same backward as differentiating the trainable params alone, with the frozen ones as constants.
    mask = tree.flatten(tree.mask(params, technique.frozen_patterns(params)))
    flat = tree.flatten(params)
    constants = {p: v for p, v in flat.items() if mask[p]}
    trainable = {p: v for p, v in flat.items() if not mask[p]}
    only_trainable = lambda t, c: loss(forward)(tree.unflatten({**c, **t}))
    assert frozen == count(jax.grad(only_trainable), trainable, constants)


def test_training_leaves_frozen_params_bitwise_and_matches_the_optimizer_mask_alone():
    config = tiny_config()
    task = tiny_task(0.1)  # 2 layers, dropout on: both runs draw the same masks
    technique = freeze.build(_config(num_trainable_layers=1), task)
    frozen_task, optimizer_config, init_extras = apply_techniques(task, [technique], config.optimizer)
    assert init_extras(task.initial_params) == {}
    tx, _ = make_optimizer(optimizer_config, task.initial_params, total_steps=20, steps_per_epoch=20)
    batches = [generate(8, 32, 64, 4, seed=s) for s in range(3)]

    def train(loss_fn):
        step = jax.jit(make_train_step(loss_fn, tx))
        state = TrainState.create(task.initial_params, tx, seed=0)
        for batch in batches:
            state, _ = step(state, batch)
        return tree.flatten(jax.device_get(state.params))

    stopped, masked = train(frozen_task.loss_fn), train(task.loss_fn)
    start = tree.flatten(task.initial_params)
    frozen = tree.flatten(tree.mask(task.initial_params, optimizer_config.frozen))
    assert sum(frozen.values()) == 5 + 16  # embeddings (5) and layer 0 (16)
    for path, value in stopped.items():
        if frozen[path]:
            np.testing.assert_array_equal(value, start[path], err_msg=path)
        else:
            assert not np.array_equal(value, start[path]), path
            np.testing.assert_allclose(value, masked[path], atol=1e-6, err_msg=path)
