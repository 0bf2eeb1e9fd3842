"""What a task hands the training loop: data as arrays, a model, a loss, an evaluation. Nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import numpy as np

from qajax.errors import ConfigError
from qajax.models.spec import ModelSpec
from qajax.train.step import LossFn


@dataclasses.dataclass
class Task:
    spec: ModelSpec  # what the model is (saved beside checkpoints, used by export)
    model: nn.Module
    initial_params: dict  # host (numpy) params: pretrained or freshly initialised
    # forward(params, batch, rng, *, deterministic, **model_options) -> model outputs
    forward: Callable
    # output_loss(outputs, batch) -> (mean loss, aux with "weight")
    output_loss: Callable
    # logits(outputs) -> the array techniques compare between models (distillation, SMART)
    logits: Callable
    train_arrays: dict[str, np.ndarray]  # [num_examples, ...] each
    eval_arrays: dict[str, np.ndarray] | None
    # (predict_fn(params, batch) -> outputs, eval_arrays, outputs gathered in order) -> {"eval/...": value}
    evaluate: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, float]] | None
    predict_fn: Callable | None  # params, batch -> per-example outputs (jit-able)
    tokens_per_example: int  # padded sequence length, for tokens/sec
    make_predict: Callable | None = None  # forward -> predict_fn: rebuilt when techniques wrap the forward
    # A task with its own batch order (multitask schedules): make_train_batches(**iterator_args) -> an
    # iterator with `steps_per_epoch` that resumes from `position=` as BatchIterator does. None: BatchIterator
    # over train_arrays.
    make_train_batches: Callable | None = None
    # Several eval sets of different lengths ({name: arrays}), scored together by
    # evaluate({name: outputs gathered in order}, eval_sets); used instead of eval_arrays.
    eval_sets: dict[str, dict[str, np.ndarray]] | None = None
    # Several outputs (multitask): logits(outputs) is {name: array} and this says what each compares as
    # ("classes", "binary" or "regression"), with `{name}/input_ids` the batch's ids (SMART perturbs them).
    output_kinds: dict[str, str] | None = None
    # ((regex, multiplier), ...): learning-rate groups the task's own parameters need; they go after the
    # config's `optimizer.lr_multipliers`, so a config rule for the same path wins.
    lr_multipliers: tuple[tuple[str, float], ...] = ()
    no_decay: tuple[str, ...] = ()  # regexes of the task's own params that weight decay must not pull to 0

    def train_batches(self, **iterator_args):
        """The training batches, from `BatchIterator`'s arguments (global_batch_size, seed, position, ...)."""
        if self.make_train_batches is not None:
            return self.make_train_batches(**iterator_args)
        from qajax.data.batches import BatchIterator

        return BatchIterator(self.train_arrays, **iterator_args)

    @property
    def loss_fn(self) -> LossFn:
        """The plain task loss as the step wants it; techniques wrap this."""

        def loss_fn(params, batch, rng, extras):
            return self.output_loss(self.forward(params, batch, rng, deterministic=False), batch)

        return loss_fn


def build_task(config) -> Task:
    name = config.task.name
    if name == "synthetic_span":
        from qajax.tasks.synthetic import build

        return build(config)
    if name == "squad":
        from qajax.tasks.squad.task import build

        return build(config)
    if name == "multitask":
        from qajax.tasks.multitask.task import build

        return build(config)
    raise ConfigError(f"task.name={name!r}: expected one of ('synthetic_span', 'squad', 'multitask')")
