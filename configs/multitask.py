"""Multitask fine-tuning of the real pretrained MiniLM on SST-5, Quora and STS-B (reports 002 and 003).

Data: the minBERT files of ../shared/data/minbert (run from the repo root; a missing folder is a clear error).

    qajax train configs/multitask.py --workdir runs/multitask

Per-task curves: `qajax.tasks.multitask.report.plot_task_curves(workdir)` (qajax plot with report.CURVE_KEYS).

Defaults follow report 003's best model: cross-encoded pairs for Quora and STS, a shuffled batch order, and
plain cross-entropy / BCE / MSE. Report 002's variants are config keys: task.quora.form=concat|cosine,
task.shared_layers, task.task_layers, techniques.freeze (top layers only). PCGrad: task.schedule=together
techniques.pcgrad.enabled=true. Predictions (input format) and confusion matrices:
task.predictions_dir=runs/multitask/pred.

Reference numbers: scripts/experiments/multitask_minilm.py (a short subset run on 2 CPU cores) and the
majority/zero baseline it prints beside them.
"""

import ml_collections

from qajax.checkpoints.factory import pretrained_section
from qajax.defaults import add_engine_sections
from qajax.tasks.multitask.task import default_config as multitask_task


def get_config():
    config = add_engine_sections(ml_collections.ConfigDict())
    config.task = multitask_task()
    # quora-train.csv and quora-dev.csv each hold one row whose quoting swallows a field (no label): the
    # minBERT project's loader drops such rows too.
    config.task.skip_invalid = True
    config.model = pretrained_section("minilm")

    config.train.steps = 0
    config.train.epochs = 1.0  # an epoch of the schedule: every batch of every task once (shuffled)
    config.train.batch_size = 32
    config.train.log_every = 20
    config.train.eval_every = 500
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_ratio = 0.1
    config.checkpoint.every_steps = 500
    config.checkpoint.best_metric = "eval/composite"
    return config
