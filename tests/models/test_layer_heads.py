"""Layer-combination span heads (report 004): numpy reference math on a tiny random encoder's hidden states,
training through the loop, checkpoint reload, HF import (fresh head) and export (refused)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from qajax import config as config_lib
from qajax import run, tree
from qajax.checkpoints.factory import load_or_init
from qajax.checkpoints.saved import load_model, save_model
from qajax.errors import CheckpointError, ConfigError
from qajax.models.config import EncoderConfig
from qajax.models.heads import build_model, init_params
from qajax.models.layer_heads import SPAN_HEADS, attend_over_layers
from qajax.models.spec import ModelSpec
from qajax.tasks import build_task
from qajax.tasks.span import LABELS, MODEL_INPUTS

TINY = dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32, max_position_embeddings=32)
LAYER_HEADS = SPAN_HEADS[1:]


def _inputs(batch=3, seq=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, TINY["vocab_size"], (batch, seq)).astype(np.int32)
    mask = (np.arange(seq)[None] < rng.integers(4, seq + 1, (batch, 1))).astype(np.int32)
    mask[0] = 1  # one unpadded row
    types = (np.arange(seq)[None] >= 3).astype(np.int32) * mask
    return ids, mask, types


def _random_params(model, seed=1):
    """Init, then every leaf redrawn so that no head parameter sits at a special value (0 scores, gamma 1)."""
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(np.float32), params)


def _run(span_head, params=None, config=None):
    config = config or EncoderConfig(**TINY, hidden_dropout=0.0, attention_dropout=0.0)
    model = build_model(config, "qa", span_head=span_head)
    params = _random_params(model) if params is None else params
    ids, mask, types = _inputs()
    out = model.apply({"params": params}, ids, mask, types, output_hidden_states=True)
    return model, params, out


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _project(reps_start, reps_end, params):
    kernel, bias = np.asarray(params["qa_outputs"]["kernel"]), np.asarray(params["qa_outputs"]["bias"])
    return reps_start @ kernel[:, 0] + bias[0], reps_end @ kernel[:, 1] + bias[1]


def test_scalar_mix_matches_numpy():
    _, params, out = _run("scalar_mix")
    blocks = np.asarray(out.hidden_states)[1:].astype(np.float64)  # h_1..h_L
    assert blocks.shape == (3, 3, 9, 16)
    scores = np.asarray(params["span_head"]["layer_scores"])  # [2, L]
    gamma = np.asarray(params["span_head"]["gamma"])  # [2]
    reps = [gamma[s] * np.einsum("l,lbth->bth", _softmax(scores[s]), blocks) for s in (0, 1)]
    start, end = _project(*reps, params)
    np.testing.assert_allclose(out.start_logits, start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.end_logits, end, rtol=1e-5, atol=1e-5)


def test_scalar_mix_with_equal_weights_is_gamma_times_the_mean_of_the_layers():
    model, params, _ = _run("scalar_mix")
    params = dict(params, span_head={"layer_scores": np.zeros((2, 3), np.float32), "gamma": np.float32([2.0, -0.5])})
    _, _, out = _run("scalar_mix", params)
    mean = np.asarray(out.hidden_states)[1:].astype(np.float64).mean(0)
    start, end = _project(2.0 * mean, -0.5 * mean, params)
    np.testing.assert_allclose(out.start_logits, start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.end_logits, end, rtol=1e-5, atol=1e-5)


def _attention_reference(blocks, queries):
    """Per token and query, softmax over layers of q . h_i, then the weighted sum of the layers."""
    reps = []
    for q in queries:
        weights = _softmax(np.einsum("h,lbth->btl", q, blocks))  # [B, T, L]
        assert np.allclose(weights.sum(-1), 1.0)
        reps.append(np.einsum("btl,lbth->bth", weights, blocks))
    return reps


def test_layer_attention_uses_the_start_and_end_vectors_as_queries():
    _, params, out = _run("layer_attention")
    assert "span_head" not in params  # report 004: the dot-product model has no parameters of its own
    blocks = np.asarray(out.hidden_states)[1:].astype(np.float64)
    kernel = np.asarray(params["qa_outputs"]["kernel"], np.float64)
    start, end = _project(*_attention_reference(blocks, kernel.T), params)
    np.testing.assert_allclose(out.start_logits, start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.end_logits, end, rtol=1e-5, atol=1e-5)


def test_bilinear_layer_attention_matches_numpy():
    _, params, out = _run("bilinear_layer_attention")
    blocks = np.asarray(out.hidden_states)[1:].astype(np.float64)
    kernel = np.asarray(params["qa_outputs"]["kernel"], np.float64)
    w = np.asarray(params["span_head"]["bilinear"], np.float64)  # [H, H]
    assert w.shape == (16, 16)
    queries = [kernel[:, s] @ w for s in (0, 1)]  # q^T W h_i = (q^T W) . h_i
    start, end = _project(*_attention_reference(blocks, queries), params)
    np.testing.assert_allclose(out.start_logits, start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.end_logits, end, rtol=1e-5, atol=1e-5)


def test_attention_weights_sum_to_one_over_layers():
    layers = jax.random.normal(jax.random.key(0), (4, 2, 5, 8)) * 3
    queries = jax.random.normal(jax.random.key(1), (2, 8))
    reps, weights = attend_over_layers(queries, layers)
    assert reps.shape == (2, 2, 5, 8) and weights.shape == (2, 2, 5, 4)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert float(weights.max()) < 1.0 and float(weights.min()) > 0.0


def test_extra_layer_is_one_more_encoder_layer_under_the_linear_head():
    """Reference: a BERT of L + 1 layers whose top layer holds the head's layer, with the plain linear head
    (the encoder itself is checked against transformers in tests/models/test_encoder.py)."""
    _, params, out = _run("extra_layer")
    deeper = EncoderConfig(**{**TINY, "num_layers": 4}, hidden_dropout=0.0, attention_dropout=0.0)
    layers = dict(params["bert"]["encoder"]["layer"], **{"3": params["span_head"]})
    linear_params = {
        "bert": {**params["bert"], "encoder": {"layer": layers}},
        "qa_outputs": params["qa_outputs"],
    }
    ids, mask, types = _inputs()
    ref = build_model(deeper, "qa").apply({"params": linear_params}, ids, mask, types)
    np.testing.assert_allclose(out.start_logits, ref.start_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.end_logits, ref.end_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("span_head", SPAN_HEADS)
def test_shapes_dtypes_and_hidden_states_only_when_asked(span_head):
    config = EncoderConfig(**TINY, dtype="bfloat16")
    model = build_model(config, "qa", span_head=span_head)
    params = init_params(model, jax.random.key(0))
    ids, mask, types = _inputs()
    out = model.apply({"params": params}, ids, mask, types)
    assert out.start_logits.shape == out.end_logits.shape == (3, 9)
    assert out.start_logits.dtype == out.end_logits.dtype == jnp.float32
    assert out.hidden_states is None
    assert np.isfinite(np.asarray(out.start_logits)).all()
    assert {p.split("/")[0] for p in tree.flatten(params)} <= {"bert", "qa_outputs", "span_head"}


def test_bad_span_head_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        build_model(EncoderConfig(**TINY), "qa", span_head="mean")
    with pytest.raises(ValueError, match="span-QA head"):
        build_model(EncoderConfig(**TINY), "classification", span_head="scalar_mix")
    with pytest.raises(CheckpointError, match="span_head"):
        ModelSpec(EncoderConfig(**TINY), "qa", span_head="nope")


def test_spec_round_trip_keeps_the_head_and_old_specs_read_as_linear():
    spec = ModelSpec(EncoderConfig(**TINY), "qa", span_head="layer_attention")
    assert ModelSpec.from_json(spec.to_json()).span_head == "layer_attention"
    old = spec.to_json().replace('"span_head": "layer_attention",', "")
    assert "span_head" not in old
    assert ModelSpec.from_json(old).span_head == "linear"


@pytest.mark.parametrize("span_head", LAYER_HEADS)
def test_saved_and_reloaded_model_gives_identical_logits(span_head, tmp_path):
    spec = ModelSpec(EncoderConfig(**TINY), "qa", span_head=span_head)
    model, params, out = _run(span_head)
    save_model(tmp_path / "saved", spec, params)
    again_model, again_params, again_spec = load_model(tmp_path / "saved")
    assert again_spec.span_head == span_head
    ids, mask, types = _inputs()
    again = again_model.apply({"params": again_params}, ids, mask, types)
    np.testing.assert_array_equal(again.start_logits, out.start_logits)
    np.testing.assert_array_equal(again.end_logits, out.end_logits)


def test_hf_import_loads_qa_outputs_and_initialises_the_head_and_export_refuses(tmp_path):
    torch = pytest.importorskip("torch", reason="the HF folder is written by transformers' PyTorch model")
    import transformers

    import qajax.hf

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertForQuestionAnswering(hf_config).save_pretrained(tmp_path / "hf")
    model, params, spec = qajax.hf.from_pretrained(tmp_path / "hf", span_head="bilinear_layer_attention")
    _, plain, _ = qajax.hf.from_pretrained(tmp_path / "hf")
    assert spec.span_head == "bilinear_layer_attention"
    np.testing.assert_array_equal(params["qa_outputs"]["kernel"], plain["qa_outputs"]["kernel"])
    assert params["span_head"]["bilinear"].shape == (16, 16)
    with pytest.raises(CheckpointError, match="no layer-combination QA head"):
        qajax.hf.save_pretrained(model, params, spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_linear_checkpoint_takes_a_new_span_head_and_a_layer_head_checkpoint_keeps_its_own(tmp_path):
    linear = ModelSpec(EncoderConfig(**TINY), "qa")
    model = linear.build()
    params = jax.tree.map(np.asarray, init_params(model, jax.random.key(3)))
    save_model(tmp_path / "linear", linear, params)
    section = ml_collections.ConfigDict({"pretrained": str(tmp_path / "linear")})
    spec, mixed = load_or_init(section, "qa", span_head="scalar_mix")
    assert spec.span_head == "scalar_mix"
    np.testing.assert_array_equal(
        mixed["bert"]["embeddings"]["word_embeddings"]["embedding"],
        params["bert"]["embeddings"]["word_embeddings"]["embedding"],
    )
    np.testing.assert_array_equal(mixed["qa_outputs"]["kernel"], params["qa_outputs"]["kernel"])
    np.testing.assert_array_equal(mixed["span_head"]["layer_scores"], np.zeros((2, 3)))
    save_model(tmp_path / "mixed", spec, mixed)
    section = ml_collections.ConfigDict({"pretrained": str(tmp_path / "mixed")})
    with pytest.raises(ConfigError, match="its span head is 'scalar_mix'"):
        load_or_init(section, "qa", span_head="layer_attention")


# ~20 s each on two busy cores: the report's best head runs by default, the others with -m slow.
TRAINED = [h if h == "layer_attention" else pytest.param(h, marks=pytest.mark.slow) for h in LAYER_HEADS]


@pytest.mark.parametrize("span_head", TRAINED)
def test_training_lowers_the_loss_and_the_checkpoint_reproduces_the_final_eval(span_head, tmp_path):
    overrides = [
        f"task.span_head={span_head}",
        "task.num_train=256",
        "task.num_eval=64",
        "train.steps=40",
        "train.batch_size=32",
        "train.eval_every=0",
        "train.eval_at_start=true",
        "log.progress=false",
        "log.tensorboard=false",
        "optimizer.learning_rate=3e-3",
    ]
    config = config_lib.load("configs/tiny.py", overrides)
    summary = run.train(config, tmp_path)
    assert summary["eval/loss"] < 0.8 * summary["initial"]["eval/loss"], summary

    # The saved training checkpoint reloads with its head and gives the loop's final eval loss.
    model, params, spec = load_model(tmp_path)
    assert spec.span_head == span_head
    task = build_task(config)
    batch = {k: task.eval_arrays[k] for k in MODEL_INPUTS + LABELS}
    loss, _ = task.output_loss(model.apply({"params": params}, *(batch[k] for k in MODEL_INPUTS)), batch)
    np.testing.assert_allclose(float(loss), summary["eval/loss"], rtol=1e-4)
