"""LoRA: surgery adds exactly the targeted adapters (BERT, ALBERT, scanned), B=0 starts bitwise at the plain
model, training moves only adapters and head, the merge matches numpy, the unmerged forward and transformers
Flax after export, adapter dropout is inverted dropout on the adapter input, and the backward skips the
frozen weight gradients."""

import functools
import types
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

import qajax.hf
from qajax import tree
from qajax.errors import CheckpointError, ConfigError
from qajax.models import layout
from qajax.models.config import EncoderConfig
from qajax.models.heads import build_model, init_params
from qajax.models.spec import ModelSpec
from qajax.tasks.span import make_forward, make_output_loss
from qajax.tasks.synthetic import generate
from qajax.techniques import apply_techniques, lora
from qajax.train.optim import make_optimizer
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_config, tiny_task

SMALL = dict(vocab_size=64, hidden_size=16, num_heads=2, intermediate_size=32, max_position_embeddings=32)
ENCODERS = {
    "bert": dict(num_layers=2),
    "bert-scanned": dict(num_layers=2, scan_layers=True),
    "albert": dict(family="albert", embedding_size=8, num_layers=2),  # one group, shared by both layers
}
BATCH = generate(4, 16, 64, 4, seed=0)


def _config(**values):
    config = lora.default_config()
    config.update(enabled=True, **values)
    return config


@functools.lru_cache
def _model(name, dropout=0.0):
    """(task stand-in, model, params) with params drawn in numpy, which needs no compiled init."""
    encoder = EncoderConfig(**{**SMALL, **ENCODERS[name], "hidden_dropout": dropout, "attention_dropout": dropout})
    model = build_model(encoder, "qa")
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(0)
    draw = lambda path, s: rng.normal(float(path.endswith("scale")), 0.1, s.shape).astype(s.dtype)
    return types.SimpleNamespace(spec=ModelSpec(encoder)), model, tree.map_with_path(draw, shapes)


def _adapted(name, seed=0, **values):
    """(technique, model, params with adapters whose B is random, as after training)."""
    task, model, params = _model(name)
    technique = lora.build(_config(**values), task)
    rng = np.random.default_rng(seed)
    nonzero_b = lambda path, v: rng.normal(0, 0.5, v.shape).astype(v.dtype) if path.endswith("lora_b") else v
    return technique, model, tree.map_with_path(nonzero_b, technique.prepare_params(params))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rank": 0}, r"rank=0: expected an int >= 1"),
        ({"alpha": 0.0}, r"alpha=0.0"),
        ({"dropout": 1.0}, r"dropout=1.0: expected a rate in \[0, 1\)"),
        ({"targets": ()}, r"targets=\(\)"),
        ({"targets": ("(query",)}, r"targets: '\(query' is not a valid regex"),
        ({"targets": (".*/qkv/kernel",)}, r"targets: \['\.\*/qkv/kernel'\] match no parameter"),
        ({"targets": (".*/query/bias",)}, r"targets match .*query/bias.*expected Dense kernels"),
        ({"targets": ("qa_outputs/kernel",)}, r"targets match the head \['qa_outputs/kernel'\] that train_head=True"),
    ],
)
def test_config_errors_name_the_key(values, message):
    task, _, params = _model("bert")
    with pytest.raises(ConfigError, match=rf"techniques\.lora\.{message}"):
        lora.build(_config(**values), task).prepare_params(params)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_surgery_adds_exactly_the_targeted_adapters(name):
    task, _, params = _model(name)
    prepared = lora.build(_config(rank=4), task).prepare_params(params)
    flat, before = tree.flatten(prepared), tree.flatten(params)
    if name == "bert":
        modules = [f"bert/encoder/layer/{i}/attention/self/{m}" for i in range(2) for m in ("query", "value")]
    elif name == "albert":  # one parameter set, applied at both layers
        modules = [f"albert/encoder/albert_layer_groups/0/albert_layers/0/attention/{m}" for m in ("query", "value")]
    else:  # one stacked module per target, the layer axis first
        modules = [f"bert/encoder/layer/scanned/attention/self/{m}" for m in ("query", "value")]
    assert set(flat) - set(before) == {f"{m}/lora_{x}" for m in modules for x in "ab"}
    assert all(np.array_equal(flat[p], before[p]) for p in before)  # the base is untouched
    for m in modules:
        kernel, a, b = (flat[f"{m}/{leaf}"] for leaf in ("kernel", "lora_a", "lora_b"))
        assert a.shape == kernel.shape[:-1] + (4,) and b.shape == kernel.shape[:-2] + (4, kernel.shape[-1])
        assert not b.any()  # B = 0: training starts at the pretrained function
        bound = 1 / np.sqrt(kernel.shape[-2])  # PEFT's kaiming_uniform(a=sqrt(5)) for [in] inputs
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound and a.std() > 0.4 * bound
    again = tree.flatten(lora.build(_config(rank=4), task).prepare_params(params))
    other_seed = tree.flatten(lora.build(_config(rank=4, seed=1), task).prepare_params(params))
    a_path = f"{modules[0]}/lora_a"
    assert np.array_equal(again[a_path], flat[a_path]) and not np.array_equal(other_seed[a_path], flat[a_path])


@pytest.mark.parametrize("train_head", [True, False])
def test_frozen_patterns_freeze_the_model_and_nothing_else(train_head):
    task, _, params = _model("bert")
    technique = lora.build(_config(train_head=train_head), task)
    prepared = technique.prepare_params(params)
    patterns = technique.frozen_patterns(prepared)
    frozen = {p for p, hit in tree.flatten(tree.mask(prepared, patterns)).items() if hit}
    trainable = {p for p in tree.flatten(prepared) if "lora_" in p or (train_head and p.startswith("qa_outputs/"))}
    assert frozen == set(tree.flatten(prepared)) - trainable
    sizes = {p: v.size for p, v in tree.flatten(prepared).items()}
    expected = (2 * 2 * (16 * 8 + 8 * 16) + train_head * (16 * 2 + 2)) / sum(sizes.values())
    assert lora.trainable_fraction(prepared, patterns) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["bert", "bert-scanned"])
def test_wrapped_forward_at_init_is_the_plain_forward_bitwise(name):
    # Model dropout on and adapter dropout on: B = 0 makes the adapter path add exact zeros, and the
    # adapters' dropout draws must leave the model's own dropout masks as they were.
    task, model, params = _model(name, dropout=0.1)
    forward = make_forward(model)
    prepared = lora.build(_config(dropout=0.5), task).prepare_params(params)
    wrapped = lora.build(_config(dropout=0.5), task).wrap_forward(forward)
    rng = jax.random.key(3, impl="rbg")  # compiles faster than threefry on CPU
    both = lambda fwd, p: [fwd(p, BATCH, rng, deterministic=d).start_logits for d in (True, False)]
    plain, ours = jax.jit(lambda p, q: (both(forward, p), both(wrapped, q)))(params, prepared)
    for deterministic, a, b in zip((True, False), plain, ours, strict=True):
        assert np.array_equal(a, b), deterministic


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_merge_matches_numpy_and_the_unmerged_adapter_forward(name):
    technique, model, params = _adapted(name)
    merged = tree.flatten(technique.merge(params))
    flat = tree.flatten(params)
    assert set(merged) == {p for p in flat if "lora_" not in p}
    kernel = next(p for p in flat if p.endswith("value/kernel"))
    module = kernel.rpartition("/")[0]
    a, b = (np.asarray(flat[f"{module}/{x}"], np.float64) for x in ("lora_a", "lora_b"))
    np.testing.assert_allclose(merged[kernel], flat[kernel] + 16 / 8 * (a @ b), rtol=1e-6, atol=1e-6)

    forward = make_forward(model)

    def merged_and_unmerged(p):
        with nn.intercept_methods(lora.adapter_interceptor(technique.scale, 0.0)):
            unmerged = forward(p, BATCH)  # the adapters reach each Dense as extra leaves of its scope
        return technique.wrap_forward(forward)(p, BATCH), unmerged

    ours, unmerged = jax.jit(merged_and_unmerged)(params)
    np.testing.assert_allclose(ours.start_logits, unmerged.start_logits, atol=1e-5)
    if name == "bert-scanned":  # the stacked adapters are per layer: unstacked, they run on a layer loop
        _, loop_model, _ = _model("bert")
        loop = make_forward(loop_model)(technique.merge(layout.unstack_layers(params)), BATCH)
        np.testing.assert_allclose(ours.start_logits, loop.start_logits, atol=1e-5)


def test_adapter_dropout_is_inverted_dropout_on_the_adapter_input():
    # W = 0, b = 0, A = B = I, scale 1: the Dense returns dropout(x) alone.
    eye = np.eye(64, dtype=np.float32)
    params = {"kernel": 0 * eye, "bias": np.zeros(64, np.float32), "lora_a": eye, "lora_b": eye}
    x = np.random.default_rng(0).uniform(1, 2, (64, 64)).astype(np.float32)
    with nn.intercept_methods(lora.adapter_interceptor(1.0, 0.25)):
        y = np.asarray(nn.Dense(64).apply({"params": params}, x, rngs={"dropout": jax.random.key(0)}))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.03

    technique, model, params = _adapted("bert", dropout=0.5)
    wrapped = technique.wrap_forward(make_forward(model))
    run = lambda seed, d: wrapped(params, BATCH, jax.random.key(seed, impl="rbg"), deterministic=d).start_logits
    assert not np.allclose(run(0, False), run(1, False)) and np.array_equal(run(0, True), run(1, True))


def test_backward_skips_the_frozen_weight_gradients():
    technique, model, params = _adapted("bert")
    output_loss = make_output_loss()
    loss = lambda fwd: lambda p: output_loss(fwd(p, BATCH), BATCH)[0]
    count = lambda fn, *args: str(jax.make_jaxpr(fn)(*args)).count("dot_general")
    ours = count(jax.grad(loss(technique.wrap_forward(make_forward(model)))), params)
    # The same backward as differentiating adapters and head alone, with the base as constants.
    frozen = tree.flatten(tree.mask(params, technique.frozen_patterns(params)))
    flat = tree.flatten(params)
    constants = {p: v for p, v in flat.items() if frozen[p]}
    trainable = {p: v for p, v in flat.items() if not frozen[p]}
    merged_loss = lambda t, c: loss(make_forward(model))(technique.merge(tree.unflatten({**c, **t})))
    assert ours == count(jax.grad(merged_loss), trainable, constants)
    # Against full fine-tuning of the merged model: per layer, no weight gradient for key, attention output,
    # intermediate and output (4); below layer 0 nothing trains, so it needs no input gradient for query,
    # key and value (3) nor the key's gradient through the scores (1); each adapted module adds a merge
    # matmul and dA, dB (3).
    full = count(jax.grad(loss(make_forward(model))), technique.merge(params))
    assert ours == full - 2 * 4 - 3 - 1 + 2 * 2 * 3


def test_training_moves_only_adapters_and_head_and_the_export_loads_in_transformers(tmp_path):
    config = tiny_config("optimizer.learning_rate=1e-2", "optimizer.warmup_steps=0")
    task = tiny_task(0.0)
    technique = lora.build(_config(), task)
    lora_task, optimizer_config, init_extras = apply_techniques(task, [technique], config.optimizer)
    params = lora_task.initial_params
    tx, _ = make_optimizer(optimizer_config, params, total_steps=10, steps_per_epoch=10)
    step = jax.jit(make_train_step(lora_task.loss_fn, tx))
    state = TrainState.create(params, tx, seed=0, extras=init_extras(params))
    for seed in range(3):
        state, _ = step(state, generate(8, 32, 64, 4, seed=seed))
    trained, start = tree.flatten(jax.device_get(state.params)), tree.flatten(params)
    for path, value in trained.items():
        moves = "lora_" in path or path.startswith("qa_outputs/")
        assert np.array_equal(value, start[path]) != moves, path
    assert 0.01 < lora.trainable_fraction(params, optimizer_config.frozen) < 0.1

    batch = {k: v[:4] for k, v in task.eval_arrays.items()}
    logits = lambda forward, p: forward(p, batch).start_logits

    @jax.jit
    def merged_and_logits(params):
        merged = technique.finalize_params(params)
        base = {**task.initial_params, "qa_outputs": merged["qa_outputs"]}  # the trained head, no adapters
        return merged, logits(lora_task.forward, params), logits(task.forward, merged), logits(task.forward, base)

    merged, ours, plain, base = merged_and_logits(state.params)
    np.testing.assert_allclose(plain, ours, atol=1e-5)
    assert np.abs(base - ours).max() > 1e-3  # the adapters matter

    saved = tree.flatten(technique.adapters_only(state.params))
    assert set(saved) == {p for p in trained if "lora_" in p or p.startswith("qa_outputs/")}
    reloaded = tree.flatten(technique.load_adapters(task.initial_params, tree.unflatten(saved)))
    assert reloaded.keys() == trained.keys()  # the pretrained base and what trained: the trained params
    assert all(np.array_equal(np.asarray(v), trained[p]) for p, v in reloaded.items())
    with pytest.raises(CheckpointError, match=r"lora \(rank=4.*expected shape\) \[\('bert/"):
        lora.build(_config(rank=4), task).load_adapters(task.initial_params, tree.unflatten(saved))
    no_head = {p: v for p, v in saved.items() if not p.startswith("qa_outputs/")}
    with pytest.raises(
        CheckpointError, match=r"missing \['qa_outputs/bias', 'qa_outputs/kernel'\], unexpected \['x/lora_a'\]"
    ):
        technique.load_adapters(task.initial_params, tree.unflatten({**no_head, "x/lora_a": np.zeros(1)}))

    transformers = pytest.importorskip("transformers")
    out = qajax.hf.save_pretrained(task.model, merged, task.spec, tmp_path / "out", formats=("flax",))
    reference, loaded = transformers.FlaxBertForQuestionAnswering.from_pretrained(out, _do_init=False)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    theirs = jax.jit(lambda p: reference(*inputs, params=p).start_logits)(loaded)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_export_hf_of_a_lora_run_merges_its_adapters_and_a_prompt_run_is_refused(tmp_path):
    from qajax import cli
    from qajax import config as config_lib
    from qajax.checkpoints.saved import TRAINING_CHECKPOINTS, _training_params, load_model
    from qajax.run import train

    def run(name, *overrides):
        base = ("train.steps=3", "train.log_every=1", "checkpoint.asynchronous=false", "log.progress=false",
                "log.tensorboard=false", "optimizer.learning_rate=1e-2", "optimizer.warmup_steps=0")  # fmt: skip
        config = config_lib.load(str(Path(__file__).resolve().parents[2] / "configs" / "tiny.py"), [*base, *overrides])
        train(config, tmp_path / name)
        return tmp_path / name

    # alpha / rank = 3, not the default 16 / 8: the merge must read the run's own config
    workdir = run("lora", "techniques.lora.enabled=true", "techniques.lora.rank=4", "techniques.lora.alpha=12")
    trained = tree.flatten(jax.device_get(_training_params(workdir / TRAINING_CHECKPOINTS, None)))
    _, merged, _ = load_model(workdir)
    merged = tree.flatten(layout.unstack_layers(jax.device_get(merged)))
    adapted = sorted(p.removesuffix("/lora_a") for p in trained if p.endswith("/lora_a"))
    assert adapted and set(merged) == {p for p in trained if "lora_" not in p}
    for module in adapted:  # numpy float64: W + alpha / rank * A @ B
        a, b = (np.asarray(trained[f"{module}/lora_{x}"], np.float64) for x in "ab")
        assert np.abs(b).max() > 0  # trained away from B = 0
        expected = trained[f"{module}/kernel"] + 12 / 4 * a @ b
        np.testing.assert_allclose(merged[f"{module}/kernel"], expected, rtol=1e-5, atol=1e-6)
    assert cli.main(["export-hf", str(workdir), str(tmp_path / "hf"), "--formats", "flax"]) == 0
    assert (tmp_path / "hf" / "flax_model.msgpack").is_file()

    workdir = run("prompt", "techniques.prompt.enabled=true", "techniques.prompt.num_tokens=2")
    with pytest.raises(CheckpointError, match="trained with prompt tuning"):
        load_model(workdir)
