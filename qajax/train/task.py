"""The Task contract: what a task hands the engine. Data as arrays, a model, a loss, an evaluation; the
engine (loop, step, evaluator, checkpoints) reads these fields and knows nothing else about the task."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import numpy as np

from qajax.data.batches import BatchIterator
from qajax.models.spec import ModelSpec
from qajax.train.step import MODEL_OUTPUTS, LossFn


def count_input_ids(batch: dict, batch_size: int, tokens_per_example: int) -> tuple[int, int]:
    """(examples, tokens) of one step as fed: `batch_size` examples at the width of `input_ids` (batches
    trimmed by length count their own width; widths only, since the placed arrays' leading axes differ by
    parallel mode); a batch without `input_ids` counts `batch_size` examples of `tokens_per_example`."""
    if "input_ids" not in batch:
        return batch_size, batch_size * tokens_per_example
    return batch_size, batch_size * batch["input_ids"].shape[-1]


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
    # (outputs gathered in order, eval_arrays) -> {"eval/...": value}
    evaluate: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, float]] | None
    predict_fn: Callable | None  # params, batch -> per-example outputs (jit-able)
    tokens_per_example: int  # padded sequence length, for tokens/sec
    # Batch keys only the loss reads (labels): eval data that carries them also reports eval/loss.
    label_keys: tuple[str, ...] = ()
    # (batch, batch_size, tokens_per_example) -> (examples, tokens) fed to one step, for examples/s; the
    # examples may be a device scalar, read at log steps (packed rows count their windows: data.packing).
    count_fed: Callable[[dict, int, int], tuple] = count_input_ids
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
    # Techniques this task applies itself from `config.techniques.<name>` (EDA to its batches, PCGrad in its
    # loss): the others refuse to be enabled for it (qajax.techniques.base.AppliedByTask).
    applies_techniques: tuple[str, ...] = ()

    def train_batches(self, **iterator_args):
        """The training batches, from `BatchIterator`'s arguments (global_batch_size, seed, position, ...)."""
        if self.make_train_batches is not None:
            return self.make_train_batches(**iterator_args)
        return BatchIterator(self.train_arrays, **iterator_args)

    def fed_size(self, batch: dict, batch_size: int) -> tuple[int, int]:
        return self.count_fed(batch, batch_size, self.tokens_per_example)

    @property
    def has_labelled_eval(self) -> bool:
        return bool(self.label_keys) and self.eval_arrays is not None and set(self.label_keys) <= set(self.eval_arrays)

    @property
    def loss_fn(self) -> LossFn:
        """The plain task loss as the step wants it, its model outputs in aux for the transforms around it;
        techniques wrap this."""

        def loss_fn(params, batch, rng, extras):
            outputs = self.forward(params, batch, rng, deterministic=False)
            loss, aux = self.output_loss(outputs, batch)
            return loss, {**aux, MODEL_OUTPUTS: outputs}

        return loss_fn
