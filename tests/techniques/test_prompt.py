"""Prompt tuning: the prompt's initialisation, the forward against PyTorch transformers fed the prompt as
`inputs_embeds` (positions, token types, the attention mask of padded rows), the sequence budget, training
that moves only the prompt and the head, export without the prompt, and LoRA with prompt tuning together."""

import functools
import types

import jax
import numpy as np
import pytest

import qajax.hf
from qajax import tree
from qajax.errors import CheckpointError, ConfigError
from qajax.models.config import EncoderConfig
from qajax.models.heads import build_model, init_params
from qajax.models.spec import ModelSpec
from qajax.tasks.span import make_forward
from qajax.tasks.synthetic import generate
from qajax.techniques import apply_techniques, lora, prompt
from qajax.train.optim import make_optimizer
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.reference import batch as reference_batch
from tests.train.tiny import tiny_config, tiny_task

SMALL = dict(vocab_size=64, hidden_size=32, num_heads=4, intermediate_size=48, max_position_embeddings=32,
             num_layers=2, hidden_dropout=0.0, attention_dropout=0.0)  # fmt: skip
FAMILIES = {"bert": {}, "electra-proj": dict(family="electra", embedding_size=16)}
_task = functools.lru_cache(tiny_task)  # techniques replace the task, never mutate it


def _config(**values):
    config = prompt.default_config()
    config.update(enabled=True, **values)
    return config


def _model(name):
    """(task stand-in, model, params drawn in numpy: no compiled init)."""
    encoder = EncoderConfig(**{**SMALL, **FAMILIES[name]})
    model = build_model(encoder, "qa")
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(0)
    draw = lambda path, s: rng.normal(float(path.endswith("scale")), 0.1, s.shape).astype(s.dtype)
    return types.SimpleNamespace(spec=ModelSpec(encoder)), model, tree.map_with_path(draw, shapes)


def test_initialisation_copies_vocabulary_rows_or_draws_at_their_scale():
    task, _, params = _model("electra-proj")  # the prompt lives in the embedding size (16), not the hidden (32)
    table = params["electra"]["embeddings"]["word_embeddings"]["embedding"]
    vocab = prompt.build(_config(num_tokens=20), task).prepare_params(params)["prompt"]["embedding"]
    assert vocab.shape == (20, 16)
    rows = [np.flatnonzero((table == row).all(axis=1)) for row in vocab]
    ids = [int(r[0]) for r in rows if len(r) == 1]
    assert len(set(ids)) == 20 and 0 not in ids  # distinct rows of the table, never padding
    again = prompt.build(_config(num_tokens=20), task).prepare_params(params)["prompt"]["embedding"]
    other = prompt.build(_config(num_tokens=20, seed=1), task).prepare_params(params)["prompt"]["embedding"]
    assert np.array_equal(again, vocab) and not np.array_equal(other, vocab)
    normal = prompt.build(_config(num_tokens=20, init="normal"), task).prepare_params(params)["prompt"]["embedding"]
    assert normal.shape == (20, 16) and abs(normal.std() / table.std() - 1) < 0.15


@pytest.mark.parametrize(
    "values, tokens_per_example, message",
    [
        ({"num_tokens": 0}, None, r"num_tokens=0: expected an int >= 1"),
        ({"init": "uniform"}, None, r"init='uniform': expected one of \('vocab', 'normal'\)"),
        ({"num_tokens": 5}, 28, r"num_tokens=5: 28 tokens per example \+ 5 prompt tokens exceed the model's "
                                r"max_position_embeddings=32"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(values, tokens_per_example, message):
    task, _, _ = _model("bert")
    task.tokens_per_example = tokens_per_example
    with pytest.raises(ConfigError, match=rf"techniques\.prompt\.{message}"):
        prompt.build(_config(**values), task)
    task.tokens_per_example = 28
    prompt.build(_config(num_tokens=4), task)  # exactly fits


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_forward_matches_transformers_fed_the_prompt_as_input_embeddings(name, tmp_path):
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs the test extra")
    transformers = pytest.importorskip("transformers")
    task, model, params = _model(name)
    technique = prompt.build(_config(num_tokens=5), task)
    prepared = technique.prepare_params(params)
    ids, mask, types_ = reference_batch(64, shape=(3, 11))  # rows 1 and 2 padded at the end
    mask[0, 2:] = 0  # row 0: [CLS] and one token; its real tokens must still see all 5 prompt tokens
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types_}
    forward = make_forward(model)
    ours, plain = jax.jit(lambda p, q: (technique.wrap_forward(forward)(p, batch), forward(q, batch)))(prepared, params)
    assert ours.start_logits.shape == (3, 11)  # outputs for the input tokens only: no offset shift
    assert np.abs(ours.start_logits - plain.start_logits).max(axis=1).min() > 1e-3  # every row sees the prompt

    # The reference: the prompt prepended by hand, attended in every row, positions 0..P+T-1, type 0.
    out = qajax.hf.save_pretrained(model, params, task.spec, tmp_path / "out", formats=("pt",))
    pt = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    soft = torch.tensor(np.asarray(prepared["prompt"]["embedding"]))[None].expand(3, -1, -1)
    with torch.no_grad():
        embeds = torch.cat([soft, pt.get_input_embeddings()(torch.tensor(ids).long())], dim=1)
        theirs = pt(
            inputs_embeds=embeds,
            attention_mask=torch.cat([torch.ones(3, 5, dtype=torch.long), torch.tensor(mask).long()], dim=1),
            token_type_ids=torch.cat([torch.zeros(3, 5, dtype=torch.long), torch.tensor(types_).long()], dim=1),
        )
    np.testing.assert_allclose(ours.start_logits, theirs.start_logits[:, 5:].numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.end_logits, theirs.end_logits[:, 5:].numpy(), atol=1e-4)


def _train(techniques, steps=3):
    """(task, optimizer config, start params, trained params) after `steps` updates, as the loop wires it."""
    config = tiny_config("optimizer.learning_rate=1e-2", "optimizer.warmup_steps=0")
    task, optimizer_config, init_extras = apply_techniques(_task(0.0), techniques, config.optimizer)
    params = task.initial_params
    tx, _ = make_optimizer(optimizer_config, params, total_steps=10, steps_per_epoch=10)
    step = jax.jit(make_train_step(task.loss_fn, tx))
    state = TrainState.create(params, tx, seed=0, extras=init_extras(params))
    for seed in range(steps):
        state, _ = step(state, generate(8, 32, 64, 4, seed=seed))
    return task, optimizer_config, params, jax.device_get(state.params)


def test_training_moves_only_the_prompt_and_the_head_and_export_drops_the_prompt():
    technique = prompt.build(_config(num_tokens=20), _task(0.0))
    task, optimizer_config, params, trained = _train([technique])
    start = tree.flatten(params)
    for path, value in tree.flatten(trained).items():
        moves = path == "prompt/embedding" or path.startswith("qa_outputs/")
        assert np.array_equal(value, start[path]) != moves, path
    sizes = {p: v.size for p, v in start.items()}
    fraction = (20 * 32 + 32 * 2 + 2) / sum(sizes.values())  # tiny: embedding 32
    assert lora.trainable_fraction(params, optimizer_config.frozen) == pytest.approx(fraction)

    exported = technique.finalize_params(trained)
    assert tree.flatten(exported).keys() == tree.flatten(_task(0.0).initial_params).keys()
    saved = technique.prompt_only(trained)
    assert set(tree.flatten(saved)) == {"prompt/embedding", "qa_outputs/kernel", "qa_outputs/bias"}
    restored = tree.flatten(technique.load_prompt(_task(0.0).initial_params, saved))
    assert restored.keys() == start.keys()
    assert all(np.array_equal(v, tree.flatten(trained)[p]) for p, v in restored.items())
    with pytest.raises(CheckpointError, match=r"num_tokens=8.*\('prompt/embedding', \(20, 32\), \(8, 32\)\)"):
        prompt.build(_config(num_tokens=8), _task(0.0)).load_prompt(exported, saved)


def test_lora_and_prompt_tuning_combine():
    plain = _task(0.0)
    config = lora.default_config()
    config.enabled = True
    techniques = [lora.build(config, plain), prompt.build(_config(num_tokens=4), plain)]
    task, optimizer_config, params, trained = _train(techniques, steps=2)
    start = tree.flatten(params)
    added = {p for p in start if "lora_" in p or p.startswith(("prompt/", "qa_outputs/"))}
    assert len(added) == 2 * 2 * 2 + 1 + 2  # query/value A and B in 2 layers, the prompt, the head
    frozen = tree.flatten(tree.mask(params, optimizer_config.frozen))
    assert {p for p, hit in frozen.items() if not hit} == added
    # A's gradient, scale * dW' B^T, is zero at step 1 (B = 0): step 2 moves it by the gradient too.
    for path, value in tree.flatten(trained).items():
        assert np.array_equal(value, start[path]) != (path in added), path
