"""The plain transformers + PyTorch reference of span-QA fine-tuning that `parity_squad.py` compares qajax with:
run_qa's recipe as the HF Trainer runs it, written out as a loop, fed qajax's own windows.

- Model: `transformers.BertForQuestionAnswering.from_pretrained(folder)`: the checkpoint's encoder and a fresh
  `qa_outputs` (normal(0, initializer_range), zero bias), drawn after `torch.manual_seed(seed)`.
- Optimizer: `torch.optim.AdamW`, weight decay on the parameters `Trainer.get_decay_parameter_names` returns
  (all but biases and LayerNorm weights); `get_linear_schedule_with_warmup` over ceil(epochs x batches a
  epoch) steps with ceil(warmup_ratio x steps) of warmup; gradients clipped to global norm 1.0; fp32.
- Data: the Trainer's `group_by_length` sampler (`get_length_grouped_indices`: a seeded permutation, megabatches
  of 50 batches sorted by length, longest first) redrawn every epoch, batches padded to their longest window
  (the Trainer's `DataCollatorWithPadding`), the last short batch kept (`dataloader_drop_last=False`).
- Loss: the model's own, (CE_start + CE_end) / 2 over every position of the padded batch.

Nothing here imports JAX: the arrays come in as numpy and the logits go out as numpy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABELS = ("start_positions", "end_positions")
MEGABATCH = 50  # batches per length-sorted megabatch: the Trainer's default (min(50, windows / (4 x batch)))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The training settings of the reference, each named as the Trainer's TrainingArguments name it."""

    learning_rate: float
    per_device_train_batch_size: int
    num_train_epochs: float
    warmup_ratio: float
    weight_decay: float
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    log_every: int = 10  # the loss of every log_every-th step is kept (as qajax's train.log_every)
    # A diagnostic, not run_qa's recipe: the loss with padding out of the softmax, as qajax computes it.
    mask_padding_in_loss: bool = False

    def total_steps(self, num_windows: int) -> int:
        return math.ceil(self.num_train_epochs * math.ceil(num_windows / self.per_device_train_batch_size))

    def warmup_steps(self, total_steps: int) -> int:
        return math.ceil(self.warmup_ratio * total_steps)  # TrainingArguments.get_warmup_steps


def window_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Each right-padded window's length: the tokens before its padding."""
    return np.asarray(attention_mask).astype(bool).sum(1)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, generator) -> list[np.ndarray]:
    """One epoch's batches of row indices, as the Trainer's `group_by_length` sampler orders them and its
    DataLoader (drop_last=False) cuts them: the last batch may be short."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [int(n) for n in lengths]
    multiple = max(1, min(len(lengths) // (batch_size * 4), MEGABATCH))
    order = np.asarray(get_length_grouped_indices(lengths, batch_size, multiple, generator=generator), np.int64)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def torch_batch(arrays: dict, rows: np.ndarray, keys=MODEL_INPUTS + LABELS) -> dict:
    """int64 tensors of `rows`, the token arrays cut to the batch's longest window (padding to the longest)."""
    import torch

    width = max(1, int(window_lengths(arrays["attention_mask"][rows]).max()))
    out = {}
    for key in keys:
        value = arrays[key][rows]
        value = value[:, :width] if value.ndim == 2 else value
        out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64))
    return out


def load_model(folder: str, recipe: Recipe):
    """The checkpoint's encoder with a fresh span head, drawn from the seeded global generator."""
    import torch
    import transformers

    torch.manual_seed(recipe.seed)
    return transformers.BertForQuestionAnswering.from_pretrained(
        folder,
        hidden_dropout_prob=recipe.hidden_dropout_prob,
        attention_probs_dropout_prob=recipe.attention_probs_dropout_prob,
    ).float()


def make_optimizer(model, recipe: Recipe, total_steps: int):
    """(AdamW with the Trainer's two parameter groups, the linear warmup + decay schedule)."""
    import torch
    import transformers

    decayed = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decayed], "weight_decay": recipe.weight_decay},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=recipe.learning_rate, betas=(recipe.adam_beta1, recipe.adam_beta2), eps=recipe.adam_epsilon
    )
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, recipe.warmup_steps(total_steps), total_steps)
    return optimizer, schedule


def masked_span_loss(model, batch: dict):
    """(CE_start + CE_end) / 2 with the padding's logits out of the softmax: qajax's span loss."""
    import torch

    inputs = {k: batch[k] for k in MODEL_INPUTS}
    out = model(**inputs)
    padding = batch["attention_mask"] == 0
    ce = torch.nn.functional.cross_entropy
    start = ce(out.start_logits.masked_fill(padding, float("-inf")), batch["start_positions"])
    end = ce(out.end_logits.masked_fill(padding, float("-inf")), batch["end_positions"])
    return (start + end) / 2


def train_step(model, optimizer, schedule, batch: dict, max_grad_norm: float, mask_padding: bool = False) -> float:
    """The Trainer's step: forward with labels, backward, clip, AdamW, schedule; returns the loss.
    `mask_padding`: qajax's loss instead of the model's (the diagnostic arm)."""
    import torch

    loss = masked_span_loss(model, batch) if mask_padding else model(**batch).loss
    loss.backward()
    if max_grad_norm > 0:  # the Trainer's max_grad_norm=0 turns clipping off
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train(model, arrays: dict, recipe: Recipe, *, max_steps: int | None = None) -> dict:
    """Fine-tunes `model` in place on `arrays` (features of qajax's featurizer) for the recipe's epochs (or
    `max_steps`); returns {steps, total_steps, seconds, losses [[step, loss], ...], widths}."""
    import torch

    num_windows = len(arrays["input_ids"])
    total = recipe.total_steps(num_windows)
    optimizer, schedule = make_optimizer(model, recipe, total)
    generator = torch.Generator().manual_seed(recipe.seed)  # the data order, apart from dropout's stream
    lengths = window_lengths(arrays["attention_mask"])
    model.train()
    step, losses, started = 0, [], time.perf_counter()
    stop = total if max_steps is None else min(total, max_steps)
    while step < stop:
        for rows in length_grouped_batches(lengths, recipe.per_device_train_batch_size, generator):
            batch = torch_batch(arrays, rows)
            loss = train_step(model, optimizer, schedule, batch, recipe.max_grad_norm, recipe.mask_padding_in_loss)
            step += 1
            if step % recipe.log_every == 0 or step == total:
                losses.append([step, loss])
                log.info("torch: step %d/%d loss %.4f lr %.3g (%.0f s)", step, total, loss,
                         schedule.get_last_lr()[0], time.perf_counter() - started)  # fmt: skip
            if step == stop:
                break
    return {"steps": step, "total_steps": total, "seconds": time.perf_counter() - started, "losses": losses}


def predict(model, arrays: dict, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Start and end logits [windows, seq] of every window, in eval mode; windows run in length order, each
    batch cut to its longest, and the logits of padding are 0 (the n-best never reads them)."""
    import torch

    model.eval()
    num, seq = arrays["input_ids"].shape
    out = {k: np.zeros((num, seq), np.float32) for k in ("start_logits", "end_logits")}
    order = np.argsort(-window_lengths(arrays["attention_mask"]), kind="stable")
    with torch.inference_mode():
        for i in range(0, num, batch_size):
            rows = order[i : i + batch_size]
            result = model(**torch_batch(arrays, rows, MODEL_INPUTS))
            width = result.start_logits.shape[1]
            out["start_logits"][rows, :width] = result.start_logits.float().numpy()
            out["end_logits"][rows, :width] = result.end_logits.float().numpy()
    return out
