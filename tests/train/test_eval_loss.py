"""The loop's evaluation reports eval/loss: the example-weighted task loss over the whole eval set."""

import jax
import numpy as np

from qajax.run import train
from qajax.tasks import build_task
from qajax.train.logs import read_metrics
from tests.train.tiny import tiny_config


def test_eval_loss_at_start_equals_the_task_loss_of_the_initial_model(tmp_path):
    overrides = [
        "train.steps=1",
        "optimizer.warmup_steps=0",
        "train.eval_at_start=true",
        "train.eval_batch_size=48",
        "log.progress=false",
        "log.tensorboard=false",
        "task.num_eval=100",
        "checkpoint.asynchronous=false",
    ]
    config = tiny_config(*overrides)
    train(config, tmp_path)
    logged = next(r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 0)

    task = build_task(tiny_config(*overrides))
    arrays = task.eval_arrays  # 100 examples: the last eval batch of 48 is padded, padding must not count
    outputs = task.forward(task.initial_params, arrays)
    expected, _ = jax.jit(task.output_loss)(outputs, arrays)
    np.testing.assert_allclose(logged["eval/loss"], float(expected), rtol=1e-5)
