"""The multitask task end to end on tiny generated files with a random tiny encoder: the heads in their
three forms, config errors, and `qajax.run.train` with its schedules, PCGrad, predictions and compile counts."""

import functools

import jax
import numpy as np
import pytest

from qajax import tree
from qajax.errors import ConfigError
from qajax.run import train
from qajax.tasks import build_task
from qajax.tasks.multitask import data
from qajax.techniques import apply_techniques
from tests.tasks.multitask.tiny import tiny_config

SLOW = pytest.mark.slow  # each form builds and compiles its own model: ~20 s apiece on a busy 2-core machine


@pytest.mark.parametrize("form", [pytest.param("concat", marks=SLOW), "cosine", pytest.param("cross", marks=SLOW)])
def test_heads_in_each_form(tmp_path, form):
    config = tiny_config(
        tmp_path, f"task.quora.form={form}", f"task.sts.form={form}", "task.shared_layers=1", "task.task_layers=2"
    )
    task = build_task(config)
    paths = set(tree.flatten(task.initial_params))
    assert "bert/encoder/layer/0/attention/self/query/kernel" in paths  # the encoder where freezing looks
    assert {"shared/dense_0/kernel", "sst/layers/dense_1/kernel", "sst/output/kernel"} <= paths
    assert ("quora/logit_scale" in paths) == (form == "cosine")
    # The affine cut of quora's cosine learns at a multiple of the learning rate; the config's rules go first.
    expected = (("quora/logit_(scale|bias)", 1000.0),) if form == "cosine" else ()
    assert task.lr_multipliers == expected
    optimizer = config.optimizer.copy_and_resolve_references()
    optimizer.lr_multipliers = (("sst/.*", 2.0),)
    _, merged, _ = apply_techniques(task, [], optimizer)
    assert merged.lr_multipliers == (("sst/.*", 2.0), *expected)
    assert merged.no_decay == (*config.optimizer.no_decay, *(pattern for pattern, _ in expected))
    batches = task.train_batches(global_batch_size=4, seed=0)
    for _ in range(3):
        batch = next(batches)
        (name,) = {k.split("/")[0] for k in batch}
        outputs = task.forward(task.initial_params, batch)
        assert set(outputs) == {name}
        assert outputs[name]["score"].shape == ((4, 5) if name == "sst" else (4,))
        assert ("cosine" in outputs[name]) == (name != "sst" and form != "cross")
        loss, aux = task.loss_fn(task.initial_params, batch, jax.random.key(0), {})
        assert np.isfinite(loss) and aux["weight"] == 4


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="task.quora.form='cross' encodes the pair together"):
        build_task(tiny_config(tmp_path, "task.quora.loss=mnr"))
    with pytest.raises(ConfigError, match=r"task.sts.loss='bce': expected one of \('mse'"):
        build_task(tiny_config(tmp_path, "task.sts.loss=bce"))
    with pytest.raises(ConfigError, match="task.schedule='random'"):
        build_task(tiny_config(tmp_path, "task.schedule=random"))
    with pytest.raises(ConfigError, match="no such folder"):
        build_task(tiny_config(tmp_path, f"task.data_dir={tmp_path / 'absent'}"))


def test_train_together_with_pcgrad(tmp_path):
    """One step shape (all three tasks), so one compile; PCGrad on; predictions and confusion PNGs written."""
    out = tmp_path / "pred"
    config = tiny_config(
        tmp_path,
        "task.schedule=together",
        "techniques.pcgrad.enabled=true",
        "task.quora.form=cosine",
        "task.quora.loss=cosine_embedding",
        "task.sts.form=concat",
        f"task.predictions_dir={out}",
        "train.steps=8",
    )
    summary = train(config, tmp_path / "run")
    assert summary["compilations"] == 1
    for key in ("train/sst_loss", "train/quora_loss", "train/sts_loss"):
        assert np.isfinite(summary[key])
    composite = (
        summary["eval/sst_accuracy"] + summary["eval/quora_accuracy"] + (summary["eval/sts_pearson"] + 1) / 2
    ) / 3
    assert summary["eval/composite"] == pytest.approx(composite)
    predicted = data.read(out / "sst-predictions.csv", "sst")
    assert len(predicted) == 24 and all(0 <= e.label <= 4 for e in predicted)
    assert (out / "sst-confusion.png").stat().st_size > 0 and (out / "quora-confusion.png").is_file()
    assert len(data.read(out / "sts-predictions.csv", "sts", skipped=[])) <= 24


@pytest.mark.slow
def test_shuffled_schedule_learns_and_compiles_once_per_task(tmp_path):
    # ~60 SST steps of batch 8 under the shuffled schedule (60 steps in all left SST at 0.125 on 24 dev rows).
    config = tiny_config(tmp_path, "train.steps=180", "train.log_every=1", "train.eval_every=0")
    summary = train(config, tmp_path / "run")
    assert summary["compilations"] == 3  # one step shape per task
    assert summary["eval/sst_accuracy"] > 0.5  # 5 classes, each marked by its word: chance is 0.2


def test_smart_and_freezing_apply_to_multitask(tmp_path):
    """SMART perturbs every task's inputs (the divergences of classes, a binary logit and a regression) and
    freezing keeps the embeddings and the bottom layer bitwise as they started."""
    from qajax.checkpoints.saved import _training_params

    config = tiny_config(
        tmp_path,
        "task.schedule=together",
        "task.quora.form=cosine",
        "task.sts.form=cross",
        "techniques.smart.enabled=true",
        "techniques.smart.eps=1e-3",
        "techniques.freeze.enabled=true",
        "techniques.freeze.num_frozen_layers=1",
        "train.steps=4",
        "train.log_every=1",
        "checkpoint.every_steps=4",
    )
    summary = train(config, tmp_path / "run")
    assert summary["train/smart_loss"] > 0 and np.isfinite(summary["train/smart_proximal"])
    assert np.isfinite(summary["train/loss"])
    initial = build_task(config).initial_params
    trained = _training_params(tmp_path / "run" / "checkpoints", 4)  # the raw params (no multitask spec reload yet)
    frozen = [("bert", "embeddings"), ("bert", "encoder", "layer", "0")]
    moved = [("bert", "encoder", "layer", "1")]
    pick = lambda tree, path: functools.reduce(lambda t, k: t[k], path, tree)
    for path in frozen:
        for a, b in zip(jax.tree.leaves(pick(initial, path)), jax.tree.leaves(pick(trained, path)), strict=True):
            np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for path in moved
        for a, b in zip(jax.tree.leaves(pick(initial, path)), jax.tree.leaves(pick(trained, path)), strict=True)
    )


def test_self_distillation_trains_multitask(tmp_path):
    """SDV's K teachers vote on a dict of logits per task; the MSE averages the tasks' own."""
    config = tiny_config(
        tmp_path,
        "task.schedule=together",  # one step shape: one compile
        "techniques.sdv.enabled=true",
        "techniques.sdv.window=2",
        "train.steps=4",
        "train.log_every=1",
        "train.eval_every=0",
    )
    summary = train(config, tmp_path / "run")
    assert np.isfinite(summary["train/loss"]) and summary["train/distill_loss"] > 0
