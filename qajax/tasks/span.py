"""What every span-QA task shares: the forward pass over the model inputs, the span loss on its outputs
(start/end cross-entropy, the null answer at the first token, [CLS]), and the logits that techniques
(distillation, SMART) compare."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABELS = ("start_positions", "end_positions")
# Packed rows (qajax.data.packing) add per-token inputs, and labels become [batch, K] slots weighted by this.
PACKED_INPUTS = ("segment_ids", "position_ids")
WINDOW_WEIGHT = "window_weight"


def make_forward(model):
    def forward(params, batch, rng=None, *, deterministic=True, **model_options):
        """Model outputs for a batch; `model_options` reach the encoder (inputs_embeds, prompt_embeds, ...).
        A packed batch also passes its segment and position ids."""
        inputs = [batch[k] for k in MODEL_INPUTS]
        if "inputs_embeds" in model_options:
            inputs[0] = None  # the embeddings replace the ids
        packing = {k: batch[k] for k in PACKED_INPUTS if k in batch}
        rngs = {} if deterministic else {"dropout": rng}
        return model.apply(
            {"params": params}, *inputs, deterministic=deterministic, rngs=rngs, **packing, **model_options
        )

    return forward


def span_loss(
    start_logits,  # [batch, seq] float32
    end_logits,  # [batch, seq]
    start_positions,  # [batch] int; 0 (the [CLS] token) for "no answer in this window"
    end_positions,  # [batch]
    example_weight=None,  # [batch] 1 real, 0 padding
    token_mask=None,  # [batch, seq] nonzero for real tokens: padding takes no part in the softmax
    *,
    start_weight: float = 1.0,
    end_weight: float = 1.0,
) -> tuple[jax.Array, dict]:
    """Weighted mean over examples of (start_weight * CE_start + end_weight * CE_end) / (start_weight +
    end_weight); with equal weights this is HF's (CE_start + CE_end) / 2. Returns (loss, aux) for the step.

    With `token_mask` the softmax runs over real tokens only (HF's runs over padding too), so the loss of
    a window does not depend on how far it is padded: batches trimmed by length train exactly as padded ones."""
    if example_weight is None:
        example_weight = jnp.ones(start_positions.shape, jnp.float32)
    if token_mask is not None:
        start_logits, end_logits = (mask_padding(x, token_mask) for x in (start_logits, end_logits))
    start = optax.softmax_cross_entropy_with_integer_labels(start_logits, start_positions)
    end = optax.softmax_cross_entropy_with_integer_labels(end_logits, end_positions)
    per_example = (start_weight * start + end_weight * end) / (start_weight + end_weight)
    total = jnp.sum(example_weight)
    mean = lambda x: jnp.sum(x * example_weight) / jnp.maximum(total, 1.0)
    return mean(per_example), {"weight": total, "start_loss": mean(start), "end_loss": mean(end)}


def packed_span_loss(
    start_logits,  # [batch, seq] float32 over packed rows
    end_logits,  # [batch, seq]
    segment_ids,  # [batch, seq] slot k + 1 for the tokens of the row's k-th window, 0 padding
    start_positions,  # [batch, K] row offsets; a window's [CLS] (its first token) for "no answer"
    end_positions,  # [batch, K]
    window_weight,  # [batch, K] 1 real window, 0 empty slot
    example_weight=None,  # [batch] 1 real row, 0 a padding copy (evaluation)
    *,
    start_weight: float = 1.0,
    end_weight: float = 1.0,
) -> tuple[jax.Array, dict]:
    """`span_loss` per window of packed rows: each window's softmax runs over its own tokens only, and the
    mean is over real windows, so a packed batch has the loss (and gradients) of its windows unpacked."""
    batch, seq = segment_ids.shape
    slots = start_positions.shape[-1]
    window_mask = segment_ids[:, None, :] == jnp.arange(1, slots + 1)[None, :, None]  # [batch, K, seq]
    weight = window_weight if example_weight is None else window_weight * example_weight[:, None]
    per_window = lambda logits: jnp.broadcast_to(logits[:, None, :], (batch, slots, seq)).reshape(-1, seq)
    return span_loss(
        per_window(start_logits),
        per_window(end_logits),
        start_positions.reshape(-1),
        end_positions.reshape(-1),
        weight.reshape(-1),
        window_mask.reshape(-1, seq),
        start_weight=start_weight,
        end_weight=end_weight,
    )


PADDING_LOGIT = -1e9  # finite: exp underflows to 0 and gradients stay defined


def mask_padding(logits, token_mask):
    """Logits with the positions of padding tokens set to PADDING_LOGIT."""
    return jnp.where(token_mask != 0, logits, jnp.asarray(PADDING_LOGIT, logits.dtype))


def make_output_loss(start_weight: float = 1.0, end_weight: float = 1.0):
    def output_loss(outputs, batch):
        if WINDOW_WEIGHT in batch:  # packed rows
            return packed_span_loss(
                outputs.start_logits,
                outputs.end_logits,
                batch["segment_ids"],
                batch["start_positions"],
                batch["end_positions"],
                batch[WINDOW_WEIGHT],
                batch.get("example_weight"),
                start_weight=start_weight,
                end_weight=end_weight,
            )
        return span_loss(
            outputs.start_logits,
            outputs.end_logits,
            batch["start_positions"],
            batch["end_positions"],
            batch.get("example_weight"),
            batch.get("attention_mask"),
            start_weight=start_weight,
            end_weight=end_weight,
        )

    return output_loss


def span_logits(outputs) -> jax.Array:
    """[batch, 2, seq]: start and end logits together, the quantity a teacher and a student compare."""
    return jnp.stack([outputs.start_logits, outputs.end_logits], axis=1)


def predict_logits(forward):
    def predict(params, batch):
        out = forward(params, batch)
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    return predict


def span_task(spec, params, *, start_weight: float, end_weight: float, make_predict=predict_logits, **task_fields):
    """A Task for a span-QA model: the shared forward, loss and logits, the task's own data and evaluation;
    `make_predict(forward)` gives the per-example outputs evaluation needs."""
    from qajax.train.task import Task

    model = spec.build()
    forward = make_forward(model)
    return Task(
        spec=spec,
        model=model,
        initial_params=params if _is_abstract(params) else jax.tree.map(np.asarray, params),
        forward=forward,
        output_loss=make_output_loss(start_weight, end_weight),
        logits=span_logits,
        predict_fn=make_predict(forward),
        make_predict=make_predict,
        label_keys=LABELS,
        **task_fields,
    )


def _is_abstract(params) -> bool:
    return all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(params))


def span_task_for_shapes(config, seq_len: int):
    """(task, batch_shapes) with no data and no weights: the model from the config's architecture (or a
    pretrained folder's config alone), params as shapes; `batch_shapes(num_examples)` gives one batch's
    ShapeDtypeStructs. What `qajax compile` builds the step from."""
    from qajax.checkpoints.factory import spec_for_shapes
    from qajax.models.heads import init_params

    t = config.task
    spec = spec_for_shapes(config.model, "qa", span_head=t.span_head)
    params = jax.eval_shape(lambda: init_params(spec.build(), jax.random.key(0)))
    task = span_task(
        spec,
        params,
        start_weight=t.start_weight,
        end_weight=t.end_weight,
        train_arrays={},
        eval_arrays=None,
        evaluate=None,
        tokens_per_example=seq_len,
    )

    slots = config.train.windows_per_row if config.train.packing else 0

    def batch_shapes(num_examples: int) -> dict:
        """One batch of windows, or with train.packing of packed rows (`num_examples` rows of `slots` windows)."""
        tokens = jax.ShapeDtypeStruct((num_examples, seq_len), np.int32)
        labels = jax.ShapeDtypeStruct((num_examples, slots) if slots else (num_examples,), np.int32)
        shapes = {**{k: tokens for k in MODEL_INPUTS}, **{k: labels for k in LABELS}}
        if slots:
            shapes.update({k: tokens for k in PACKED_INPUTS})
            shapes[WINDOW_WEIGHT] = jax.ShapeDtypeStruct((num_examples, slots), np.float32)
        return shapes

    return task, batch_shapes
