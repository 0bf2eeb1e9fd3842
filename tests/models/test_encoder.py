"""Our encoders against transformers' Flax models, and the run-time options against the plain encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qajax import tree
from qajax.hf.config_map import encoder_config_from_hf
from qajax.models import layout
from qajax.models.encoder import lookup_word_embeddings
from qajax.models.heads import build_model, init_params
from tests.reference import CASES, batch, case_params, hf_class, hf_config

FLAX_TOLERANCE = 1e-5


def _reference(case, head="qa", num_labels=2):
    family, values = CASES[case]
    hf_cfg = hf_config(family, num_labels=num_labels, **values)
    hf_model = hf_class(family, head, flax=True)(hf_cfg, seed=1)
    ours = encoder_config_from_hf(hf_cfg.to_dict())
    return hf_cfg, hf_model, ours


@pytest.mark.parametrize("case", case_params())
def test_qa_logits_hidden_states_and_attentions_match_hf_flax(case):
    hf_cfg, hf_model, config = _reference(case)
    model = build_model(config, "qa")
    # Same tree, path for path and shape for shape: porting is the identity here.
    ours_shapes = {p: v.shape for p, v in tree.flatten(init_params(model, jax.random.key(0))).items()}
    assert ours_shapes == {p: v.shape for p, v in tree.flatten(hf_model.params).items()}

    ids, mask, types = batch(hf_cfg.vocab_size, hf_cfg.type_vocab_size)
    out = model.apply({"params": hf_model.params}, ids, mask, types, output_hidden_states=True, output_attentions=True)
    ref = hf_model(ids, mask, types, output_hidden_states=True, output_attentions=True)
    np.testing.assert_allclose(out.start_logits, ref.start_logits, atol=FLAX_TOLERANCE)
    np.testing.assert_allclose(out.end_logits, ref.end_logits, atol=FLAX_TOLERANCE)
    np.testing.assert_allclose(out.hidden_states, np.stack(ref.hidden_states), atol=FLAX_TOLERANCE)
    np.testing.assert_allclose(out.attentions, np.stack(ref.attentions), atol=FLAX_TOLERANCE)
    # The fused attention path (no probabilities requested) gives the same logits.
    fused = model.apply({"params": hf_model.params}, ids, mask, types)
    np.testing.assert_allclose(fused.start_logits, ref.start_logits, atol=FLAX_TOLERANCE)


@pytest.mark.parametrize("case", ["bert-3l-gelunew", "electra-proj", "albert-2groups-2inner"])
def test_classification_and_encoder_heads_match_hf_flax(case):
    hf_cfg, hf_model, config = _reference(case, head="classification", num_labels=3)
    ids, mask, types = batch(hf_cfg.vocab_size, hf_cfg.type_vocab_size)
    out = build_model(config, "classification", num_labels=3).apply({"params": hf_model.params}, ids, mask, types)
    np.testing.assert_allclose(out.logits, hf_model(ids, mask, types).logits, atol=FLAX_TOLERANCE)

    _, hf_base, _ = _reference(case, head="encoder")
    family = config.family
    ours = build_model(config, "encoder").apply({"params": {family: hf_base.params}}, ids, mask, types)
    ref = hf_base(ids, mask, types)
    np.testing.assert_allclose(ours.last_hidden_state, ref.last_hidden_state, atol=FLAX_TOLERANCE)
    if family != "electra":
        np.testing.assert_allclose(ours.pooler_output, ref.pooler_output, atol=FLAX_TOLERANCE)


def _loss_and_grads(model, params, ids, mask, types, rng=None):
    def loss(p):
        out = model.apply(
            {"params": p}, ids, mask, types, deterministic=rng is None, rngs={"dropout": rng} if rng else {}
        )
        return jnp.sum(out.start_logits**2) + jnp.sum(jnp.sin(out.end_logits))

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("case", ["bert-2l", "albert-1group"])
@pytest.mark.parametrize(
    "options",
    [
        dict(remat=True),
        dict(scan_layers=True),
        dict(scan_layers=True, remat=True),
        dict(recompute_activation=True),
        dict(recompute_activation=True, scan_layers=True),
    ],
)
def test_remat_and_scan_give_the_plain_encoders_values_and_gradients(case, options):
    _, hf_model, config = _reference(case)
    ids, mask, types = batch(config.vocab_size, config.type_vocab_size)
    plain = build_model(config, "qa")
    variant_config = config.replace(**options)
    variant = build_model(variant_config, "qa")
    params = hf_model.params
    variant_params = layout.for_config(params, variant_config)
    if options.get("scan_layers") and config.family != "albert":
        assert layout.is_scanned(variant_params)
        # The stacked tree is what the scanned model initialises.
        fresh = init_params(variant, jax.random.key(0))
        assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, variant_params)

    loss, grads = _loss_and_grads(plain, params, ids, mask, types)
    variant_loss, variant_grads = _loss_and_grads(variant, variant_params, ids, mask, types)
    np.testing.assert_allclose(variant_loss, loss, rtol=1e-5)
    flat, variant_flat = tree.flatten(grads), tree.flatten(layout.unstack_layers(variant_grads))
    assert flat.keys() == variant_flat.keys()
    for path in flat:
        # Gradients reach ~100 here: compare relative to their scale.
        scale = float(np.abs(flat[path]).max()) + 1.0
        np.testing.assert_allclose(variant_flat[path], flat[path], atol=1e-6 * scale, rtol=1e-4, err_msg=path)


def test_scan_stacking_round_trips_bitwise():
    _, hf_model, _ = _reference("bert-3l-gelunew")
    stacked = layout.stack_layers(hf_model.params)
    assert stacked["bert"]["encoder"]["layer"]["scanned"]["output"]["dense"]["kernel"].shape[0] == 3
    back = tree.flatten(layout.unstack_layers(stacked))
    for path, value in tree.flatten(hf_model.params).items():
        np.testing.assert_array_equal(back[path], value)


def test_dropout_is_seeded_and_off_when_deterministic():
    _, hf_model, config = _reference("bert-2l")
    model = build_model(config, "qa")
    ids, mask, types = batch(config.vocab_size)
    apply = lambda rng: (
        model.apply(
            {"params": hf_model.params}, ids, mask, types, deterministic=False, rngs={"dropout": rng}
        ).start_logits
    )
    a, b, c = apply(jax.random.key(1)), apply(jax.random.key(1)), apply(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    evaluated = model.apply({"params": hf_model.params}, ids, mask, types).start_logits
    assert np.abs(a - evaluated).max() > 1e-3


def test_inputs_embeds_replace_the_word_lookup():
    _, hf_model, config = _reference("electra-proj")
    model = build_model(config, "qa")
    ids, mask, types = batch(config.vocab_size)
    embeds = lookup_word_embeddings(hf_model.params, config, ids)
    from_ids = model.apply({"params": hf_model.params}, ids, mask, types)
    from_embeds = model.apply({"params": hf_model.params}, None, mask, types, inputs_embeds=embeds)
    np.testing.assert_allclose(from_embeds.start_logits, from_ids.start_logits, atol=1e-6)


@pytest.mark.parametrize("case", ["bert-2l", "albert-1group"])
def test_soft_prompt_matches_pytorch_with_prompt_prepended_to_inputs_embeds(case, tmp_path):
    """Prompt tuning as PEFT does it: vectors before the word embeddings, always attended, logits for the
    real tokens only. PyTorch's inputs_embeds path is the reference."""
    torch = pytest.importorskip("torch")
    import qajax.hf

    family, values = CASES[case]
    torch.manual_seed(0)
    pt = hf_class(family, "qa", flax=False)(hf_config(family, **values)).eval()
    pt.save_pretrained(tmp_path)
    model, params, spec = qajax.hf.from_pretrained(tmp_path, head="qa")
    ids, mask, types = batch(values["vocab_size"])
    prompt = np.random.RandomState(3).normal(size=(4, spec.encoder.embedding_dim)).astype(np.float32)

    out = model.apply({"params": params}, ids, mask, types, prompt_embeds=prompt, output_hidden_states=True)
    assert out.start_logits.shape == ids.shape and out.hidden_states.shape[2] == ids.shape[1]
    with torch.no_grad():
        words = pt.base_model.embeddings.word_embeddings(torch.tensor(ids, dtype=torch.long))
        prompts = torch.tensor(prompt)[None].expand(ids.shape[0], -1, -1)
        ref = pt(
            inputs_embeds=torch.cat([prompts, words], 1),
            attention_mask=torch.tensor(np.concatenate([np.ones((3, 4), np.int32), mask], 1)),
            token_type_ids=torch.tensor(np.concatenate([np.zeros((3, 4), np.int32), types], 1)),
        )
    np.testing.assert_allclose(out.start_logits, ref.start_logits[:, 4:].numpy(), atol=1e-4)
    np.testing.assert_allclose(out.end_logits, ref.end_logits[:, 4:].numpy(), atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_half_precision_compute_keeps_float32_params_and_stays_close(dtype):
    _, hf_model, config = _reference("bert-3l-gelunew")
    ids, mask, types = batch(config.vocab_size, config.type_vocab_size)
    half = build_model(config.replace(dtype=dtype), "qa")
    fresh = init_params(half, jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(fresh)} == {jnp.dtype("float32")}
    out = half.apply({"params": hf_model.params}, ids, mask, types)
    ref = build_model(config, "qa").apply({"params": hf_model.params}, ids, mask, types)
    assert out.start_logits.dtype == jnp.float32  # logits are always float32 for the loss
    # bf16 keeps 8 bits of mantissa: logits of order 0.1 agree to about 1e-2.
    np.testing.assert_allclose(out.start_logits, ref.start_logits, atol=3e-2)


def test_sequence_longer_than_positions_is_refused():
    _, hf_model, config = _reference("bert-2l")
    ids = np.ones((1, 10), np.int32)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        build_model(config, "qa").apply(
            {"params": hf_model.params}, ids, prompt_embeds=np.zeros((60, config.hidden_size), np.float32)
        )
