"""scripts/experiments/parity_squad.py: the PyTorch reference's batches, loss and schedule on a tiny synthetic
batch, the recipe read from the qajax config, and the report written from fake rows. Seconds, no real data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.experiment_scripts import load_script

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_model(seed: int = 0):
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(seed)
    return transformers.BertForQuestionAnswering(config)


def _windows(num: int = 10, seq: int = 12, seed: int = 0) -> dict:
    """Right-padded windows of lengths 4..seq with span labels inside each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, seq + 1, num)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, rng.integers(1, 40, (num, seq)), 0).astype(np.int32)
    starts = rng.integers(0, lengths - 1)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "start_positions": starts.astype(np.int32), "end_positions": (starts + 1).astype(np.int32)}  # fmt: skip


def test_length_grouped_batches_cover_each_window_once_and_pad_to_the_longest():
    ts = load_script("torch_squad")
    arrays = _windows()
    lengths = ts.window_lengths(arrays["attention_mask"])
    generator = torch.Generator().manual_seed(0)
    first, second = (ts.length_grouped_batches(lengths, 4, generator) for _ in range(2))
    assert [len(b) for b in first] == [4, 4, 2]  # drop_last=False: the short batch stays
    assert sorted(np.concatenate(first).tolist()) == list(range(10))
    assert np.concatenate(first).tolist() != np.concatenate(second).tolist()  # a new order each epoch
    assert lengths[first[0][0]] == lengths.max()  # the Trainer puts the longest window first
    batch = ts.torch_batch(arrays, first[1])
    assert batch["input_ids"].shape == (4, lengths[first[1]].max()) and batch["input_ids"].dtype == torch.int64
    assert batch["start_positions"].tolist() == arrays["start_positions"][first[1]].tolist()


def test_the_diagnostic_loss_leaves_the_padding_out_of_the_softmax():
    ts = load_script("torch_squad")
    arrays, model = _windows(), _tiny_model().eval()
    batch = ts.torch_batch(arrays, np.arange(6))
    with torch.no_grad():
        masked, out = float(ts.masked_span_loss(model, batch)), model(**batch)
    expected = []
    for logits, labels in ((out.start_logits, batch["start_positions"]), (out.end_logits, batch["end_positions"])):
        for row, label in enumerate(labels.tolist()):
            real = logits[row, : int(batch["attention_mask"][row].sum())].double().numpy()
            expected.append(np.log(np.exp(real - real.max()).sum()) + real.max() - real[label])
    assert masked == pytest.approx(np.mean(expected), rel=1e-5)  # the mean over windows of (CE_s + CE_e) / 2
    assert masked < float(out.loss)  # the model's own loss also spreads mass over the padding


def test_the_loss_is_hf_span_loss_over_the_padded_batch_and_predictions_ignore_the_padding():
    ts = load_script("torch_squad")
    arrays, model = _windows(), _tiny_model().eval()
    rows = np.arange(6)
    batch = ts.torch_batch(arrays, rows)
    with torch.no_grad():
        out = model(**batch)
        ce = torch.nn.functional.cross_entropy
        manual = (ce(out.start_logits, batch["start_positions"]) + ce(out.end_logits, batch["end_positions"])) / 2
    assert float(out.loss) == pytest.approx(float(manual), rel=1e-6)
    predicted = ts.predict(model, arrays, batch_size=4)  # length order, each batch cut to its longest
    for i in (0, 5):
        n = int(arrays["attention_mask"][i].sum())
        alone = ts.torch_batch(arrays, np.array([i]), ts.MODEL_INPUTS)
        with torch.no_grad():
            logits = model(**alone).start_logits[0].numpy()
        np.testing.assert_allclose(predicted["start_logits"][i, :n], logits[:n], atol=1e-5)


def test_train_runs_the_trainer_schedule_and_decays_all_but_biases_and_layer_norms():
    ts = load_script("torch_squad")
    recipe = ts.Recipe(learning_rate=1e-2, per_device_train_batch_size=4, num_train_epochs=2.0, warmup_ratio=0.1,
                       weight_decay=0.01, log_every=2)  # fmt: skip
    model = _tiny_model()
    optimizer, schedule = ts.make_optimizer(model, recipe, total_steps=6)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, kept = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0 and optimizer.param_groups[0]["weight_decay"] == 0.01
    assert all(n.endswith("bias") or "LayerNorm" in n for n in kept) and "qa_outputs.weight" in decayed
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in decayed)
    assert (recipe.total_steps(10), recipe.warmup_steps(6)) == (6, 1)  # 2 x ceil(10 / 4); ceil(0.6)
    before = model.qa_outputs.weight.detach().clone()
    result = ts.train(model, _windows(), recipe)
    assert result["steps"] == result["total_steps"] == 6 and [s for s, _ in result["losses"]] == [2, 4, 6]
    assert all(math.isfinite(loss) for _, loss in result["losses"])
    assert not torch.equal(before, model.qa_outputs.weight)


def test_the_pytorch_recipe_is_read_from_the_qajax_config():
    parity = load_script("parity_squad")
    from qajax.errors import ConfigError

    recipe = parity.recipe_of(parity.load_config([*parity.PARITY, "seed=2"]))
    assert (recipe.learning_rate, recipe.per_device_train_batch_size, recipe.num_train_epochs) == (2e-4, 16, 2.0)
    assert (recipe.warmup_ratio, recipe.weight_decay, recipe.max_grad_norm, recipe.seed) == (0.1, 0.01, 1.0, 2)
    assert (recipe.adam_beta1, recipe.adam_beta2, recipe.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert (recipe.hidden_dropout_prob, recipe.attention_probs_dropout_prob) == (0.1, 0.1)
    with pytest.raises(ConfigError, match="optimizer.schedule='cosine'"):
        parity.recipe_of(parity.load_config(["optimizer.schedule=cosine"]))


def _row(arm: str, seed: int, f1: float, seconds: float = 1200.0) -> dict:
    return dict(
        command=f"parity_squad.py --variants {arm} --set seed={seed}", date="2026-12-07", commit="abc", variant=arm,
        arm=arm, seed=seed, steps=422, seconds=seconds, exact=f1 - 3, f1=f1, HasAns_f1=f1 - 20, NoAns_f1=f1 + 20,
        f1_at_0=49.0, always_answer_HasAns_f1=f1 - 10, best_f1=f1 + 1, null_threshold=None if seed else -1.0,
        dev_best_f1=50.0, losses=[[10, 3.0], [20, 2.0], [30, 1.5]], train_windows=3370, max_seq_length=384,
        doc_stride=128, dev_questions=364, eval_questions=1010, baseline_f1=49.21, settings={"batch": 16, arm: "x"},
    )  # fmt: skip


def test_the_report_lists_every_run_and_pairs_the_seeds(tmp_path):
    report = load_script("parity_report")
    rows = [_row("qajax", 0, 50.0), _row("pytorch", 0, 49.0), _row("qajax", 1, 52.0), _row("pytorch", 1, 50.0),
            _row("qajax", 2, 40.0),  # a seed whose pair did not run: in the means, out of the differences
            _row("pytorch-masked", 0, 45.0)]  # the diagnostic arm: listed, outside the pairs and the test  # fmt: skip
    path = tmp_path / "parity.md"
    report.write_report(rows, path)
    text = path.read_text()
    assert sum(line.startswith("| 2026-12-07 |") for line in text.splitlines()) == 6
    assert "| qajax | 0, 1, 2 | 20.00 ± 0.00 | 2.17 ± 0.00 | 47.33 ± 6.43 |" in text  # (50 + 52 + 40) / 3
    assert "| pytorch | 0, 1 | 20.00 ± 0.00 | 2.17 ± 0.00 | 49.50 ± 0.71 |" in text
    assert "## Paired difference qajax - pytorch (seeds 0, 1)" in text
    assert "| F1 | +1.50 [-4.85, +7.85] | +1.00, +2.00 | no: +1.50 is within the seed sd 6.43 |" in text
    assert '| none ("" everywhere) |' in text and "| -1.00 |" in text
    assert "| batch | 16 | 16 |" in text and "| qajax | x |  |" in text
    # always-answer HasAns F1 is f1 - 10 here: 40, 42, 30 for qajax (30 is not above the line), 39, 40 for pytorch
    assert "| qajax | 3 | 2 | 0, 1 |" in text and "| pytorch | 2 | 2 | 0, 1 |" in text
    assert "| pytorch-masked | 1 | 1 | 0 |" in text and "| pytorch-masked | 0 | 20.00 ± n/a |" in text
    assert "qajax's 2/3 against pytorch's 2/2: p = 1.00." in text
    assert (tmp_path / "parity.png").stat().st_size > 5000 and text.rstrip().endswith("(parity.png)")


@pytest.mark.slow  # about 80 s: the real checkpoint and split, one compile, 3 steps of each arm
def test_the_two_arms_take_the_same_training_steps_on_real_windows():
    from qajax.pretrained import MINILM_INSTALL, minilm_dir
    from tests.tasks.squad.test_metric import DEV_PART

    if minilm_dir() is None or not DEV_PART.exists():
        pytest.skip(f"needs the MiniLM checkpoint ({MINILM_INSTALL}) and {DEV_PART}")
    result = load_script("parity_squad").check([])  # raises where the arms differ
    assert len(result["per_step"]) == 3 and result["update_difference_relative"] < 1e-3
