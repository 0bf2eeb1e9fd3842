"""The multitask parity experiment: the torch arm's heads and losses are qajax's, its report tells every row."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tests.experiment_scripts import load_script

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _task_section():
    """configs/multitask.py's task section with multitask_minilm.py's head choices (mean pooling, STS cosine)."""
    from qajax.tasks.multitask.task import default_config

    t = default_config()
    t.pooling, t.sts.form = "mean", "cosine"
    return t


def _tiny(seed: int = 0):
    """A 1-layer BertModel (hidden 8) with the three heads, and the same encoder as qajax's EncoderConfig."""
    from qajax.models.config import EncoderConfig
    from qajax.tasks.multitask.task import head_specs

    tm = load_script("torch_multitask")
    t = _task_section()
    sizes = dict(vocab_size=50, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)
    hf = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16)  # fmt: skip
    torch.manual_seed(seed)
    specs = head_specs(t)
    model = tm.TorchMultitask(transformers.BertModel(hf), specs, pooling=t.pooling, head_dropout=t.head_dropout,
                              initializer_range=0.02)  # fmt: skip
    return tm, t, specs, model, EncoderConfig(**sizes)


def _batch(rng, n: int = 4, seq: int = 6) -> dict:
    def inputs(shape):
        lengths = rng.integers(2, seq + 1, size=shape[:-1])
        mask = (np.arange(seq) < lengths[..., None]).astype(np.int32)
        return {"input_ids": rng.integers(1, 50, size=shape) * mask, "attention_mask": mask,
                "token_type_ids": np.zeros(shape, np.int32)}  # fmt: skip

    batch = {}
    for name, shape in (("sst", (n, seq)), ("quora", (n, seq)), ("sts", (n, 2, seq))):
        batch.update({f"{name}/{k}": v for k, v in inputs(shape).items()})
    batch["sst/labels"] = rng.integers(0, 5, n).astype(np.int32)
    batch["quora/labels"] = rng.integers(0, 2, n).astype(np.float32)
    batch["sts/labels"] = rng.uniform(0, 5, n).astype(np.float32)
    return batch


def test_torch_heads_have_qajax_shapes_scheme_and_weight_decay_mask():
    from qajax.train import optim

    tm, t, specs, model, encoder = _tiny()
    assert set(model.heads) == {"sst", "quora"}  # STS's cosine head has no parameters
    assert model.heads["sst"].weight.shape == (5, 8) and model.heads["quora"].weight.shape == (1, 8)
    assert all(float(h.bias.detach().abs().sum()) == 0.0 for h in model.heads.values())
    # Every parameter and every weight-decayed one has its twin in qajax's tree (pooler included).
    no_decay = optim.default_config().no_decay
    assert tm.torch_counts(model) == tm.qajax_counts(encoder, specs, t, no_decay)


def test_torch_forward_and_loss_match_qajax_pooling_cosine_and_losses():
    from qajax.tasks.multitask import losses
    from qajax.tasks.multitask.model import cosine, pool

    tm, t, specs, model, _ = _tiny()
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int32)
    ours = tm.pool(torch.from_numpy(hidden), torch.from_numpy(mask), None, "mean").numpy()
    np.testing.assert_allclose(ours, pool(jnp.asarray(hidden), jnp.asarray(mask), None, "mean"), rtol=1e-6)
    u, v = hidden[:, 0], hidden[:, 1]
    np.testing.assert_allclose(tm.cosine(torch.from_numpy(u), torch.from_numpy(v)).numpy(), cosine(u, v), rtol=1e-5)

    batch = tm.to_torch(_batch(rng))
    model.eval()
    outputs = model(batch)
    assert outputs["sst"].shape == (4, 5) and outputs["quora"].shape == (4,) and outputs["sts"].shape == (4,)
    assert float(outputs["sts"].abs().max()) <= 5.0  # 5 x a cosine
    options = {s.name: (t[s.name].loss, 1.0 + i) for i, s in enumerate(specs)}  # weights 1, 2, 3
    total, parts = tm.total_loss(outputs, batch, options)
    expected = 0.0
    for i, spec in enumerate(specs):
        score = jnp.asarray(outputs[spec.name].detach().numpy())
        labels = jnp.asarray(batch[f"{spec.name}/labels"].numpy())
        value = losses.task_loss(spec, t[spec.name].loss, {"score": score}, labels, margin=0.0, scale=20.0,
                                 positive_threshold=3.0)  # fmt: skip
        np.testing.assert_allclose(parts[f"{spec.name}_loss"], value, rtol=1e-5)
        expected += (1.0 + i) * float(value)
        np.testing.assert_array_equal(
            tm.predict(spec, outputs[spec.name].detach()),
            losses.predict(spec, t[spec.name].loss, {"score": score}, t.cosine_threshold),
        )
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    total.backward()
    assert (
        model.heads["sst"].weight.grad is not None and model.encoder.embeddings.word_embeddings.weight.grad is not None
    )


def test_clip_is_qajax_clip():
    tm = load_script("torch_multitask")
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert tm.clip_by_global_norm(params, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(params[0].grad.numpy(), [0.6, 0, 0], rtol=1e-6)  # x 1/5
    assert tm.clip_by_global_norm(params, 2.0) == pytest.approx(1.0)  # below the limit: unchanged
    np.testing.assert_allclose(params[1].grad.numpy(), [0, 0.8, 0, 0], rtol=1e-6)


def _row(arm: str, seed: int, sst: float, composite: float) -> dict:
    scores = {"eval/sst_accuracy": sst, "eval/quora_accuracy": 0.77, "eval/sts_pearson": 0.8,
              "eval/composite": composite}  # fmt: skip
    return dict(arm=arm, seed=seed, steps=300, scores=scores, seconds=420, seconds_per_step=1.1, date="2026-12-07",
                started="06:30 UTC", command=f"one --arm {arm} --seed {seed}", commit="abc", launched_by="run",
                hyperparameters={"pooling": "mean"}, arm_details={"framework": arm})  # fmt: skip


def test_parity_report_has_every_run_the_means_and_the_paired_differences(tmp_path):
    parity = load_script("parity_multitask")
    rows = [_row("qajax", 0, 0.40, 0.70), _row("pytorch", 0, 0.38, 0.69), _row("qajax", 1, 0.36, 0.68),
            _row("pytorch", 1, 0.38, 0.70), _row("qajax", 2, 0.38, 0.69)]  # fmt: skip
    report = tmp_path / "parity.md"
    parity.write_report(rows, report)
    text = report.read_text()
    runs = [line for line in text.splitlines() if line.startswith("| 2026-12-07 |")]
    assert len(runs) == 5 and "| pytorch | 0 | 7.0 | 1.10 | 0.380 | 0.770 | 0.800 | 0.690 |" in runs[1]
    # qajax SST (0.40, 0.36, 0.38) -> 0.380 ± 0.020; pytorch (0.38, 0.38) -> 0.380 ± 0.000
    assert "| qajax | 0, 1, 2 | 7.0 | 0.380 ± 0.020 |" in text and "| pytorch | 0, 1 | 7.0 | 0.380 ± 0.000 |" in text
    # Paired over seeds 0 and 1 (seed 2 has one arm): composite +0.01, -0.02 -> -0.005, within sd 0.014
    assert "(seeds 0, 1)" in text
    assert "| composite | -0.005 | [-0.196, +0.186] | +0.010, -0.020 | 0.010 / 0.007 | within (|d| <= 0.010) |" in text
    assert "| pooling | mean |" in text and "| framework | qajax | pytorch |" in text
    assert "    one --arm qajax --seed 0" in text and "started by:" in text
    assert text.rstrip().endswith("(parity.png)") and (tmp_path / "parity.png").stat().st_size > 5000
    assert parity.spread_verdict(-0.05, [0.01, 0.02]) == "qajax worse beyond the spread (0.020)"
