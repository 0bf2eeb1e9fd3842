"""The transformers references of `qajax bench --workload squad`, each its run script's recipe end to end:

  hf-flax     run_qa_flax's: padded windows, FlaxBertForQuestionAnswering, optax AdamW under jax.jit
  hf-pytorch  run_qa's: padded windows, BertForQuestionAnswering, eager AdamW, gradients clipped at 1

Both read and featurize with our reader and featurizer (the same tokenizer call as run_qa's
`prepare_train_features`, without `datasets.map`'s overhead), so their data time is if anything too kind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np

from qajax.bench.workload_timing import Measured, TimedStep, Workload, block, counted, measured_steps, model_dir


def _padded_windows(workload: Workload, folder: str) -> dict[str, np.ndarray]:
    import transformers

    from qajax.tasks.span import LABELS, MODEL_INPUTS
    from qajax.tasks.squad import data
    from qajax.tasks.squad.features import FeatureConfig, featurize

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    examples, _ = data.load(workload.data)
    windows = FeatureConfig(workload.max_seq_length, workload.doc_stride, workload.max_query_length)
    features = featurize(examples, tokenizer, windows, for_training=True)
    return {k: features[k] for k in MODEL_INPUTS + LABELS}


def _shuffled_batches(arrays: dict, batch_size: int, seed: int) -> Iterator[dict]:
    """run_qa_flax's `train_data_collator`: a permutation per epoch, full batches of it."""
    num_windows = len(arrays["input_ids"])
    for epoch in range(1_000_000):
        order = np.random.default_rng([seed, epoch]).permutation(num_windows)
        for first in range(0, num_windows - batch_size + 1, batch_size):
            rows = order[first : first + batch_size]
            yield {k: v[rows] for k, v in arrays.items()}


def _reference_run(workload: Workload, measured: Measured, arrays: dict, step: TimedStep, state, to_loss, convert):
    """The references' loop: next host batch, its conversion, the step, the loss pulled at log steps."""
    measured.epoch_windows, measured.epoch_tokens = len(arrays["input_ids"]), int(arrays["attention_mask"].sum())
    measured.steps_per_epoch = len(arrays["input_ids"]) // workload.batch_size
    total = measured_steps(workload, measured.steps_per_epoch)
    batches = counted(_shuffled_batches(arrays, workload.batch_size, workload.seed), measured)
    start = time.perf_counter()
    for index in range(1, total + 1):
        state, metrics = step(state, convert(next(batches)))
        if index % workload.log_every == 0 or index == total:
            to_loss(metrics)
    measured.run_s = time.perf_counter() - start


def linear_schedule(workload: Workload, total_steps: int):
    """Linear warmup over warmup_ratio of the run, then linear decay to 0 (run_qa's and run_qa_flax's)."""
    import optax

    warmup = math.ceil(workload.warmup_ratio * total_steps)
    up = optax.linear_schedule(0.0, workload.learning_rate, max(warmup, 1))
    down = optax.linear_schedule(workload.learning_rate, 0.0, max(total_steps - warmup, 1))
    return optax.join_schedules([up, down], [warmup])


def run_hf_flax(workload: Workload) -> Measured:
    import jax
    import optax
    import transformers

    from qajax.tasks.span import span_loss

    measured = Measured()
    start = time.perf_counter()
    folder = model_dir(workload)
    arrays = _padded_windows(workload, folder)
    model = transformers.FlaxBertForQuestionAnswering.from_pretrained(folder, from_pt=True, seed=workload.seed)
    total = measured_steps(workload, len(arrays["input_ids"]) // workload.batch_size)
    decay = lambda params: jax.tree_util.tree_map_with_path(  # run_qa_flax: no decay on biases and LayerNorm
        lambda path, _: not any(getattr(k, "key", "") in ("bias", "scale") for k in path), params
    )
    tx = optax.adamw(linear_schedule(workload, total), weight_decay=workload.weight_decay, mask=decay)

    def step(carry, batch):
        params, opt_state, rng = carry
        rng, dropout_rng = jax.random.split(rng)

        def loss(p):
            inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            out = model(*inputs, params=p, dropout_rng=dropout_rng, train=True)
            return span_loss(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"])[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), {"train/loss": value}

    jitted = jax.jit(step, donate_argnums=0)
    carry = (model.params, tx.init(model.params), jax.random.PRNGKey(workload.seed))
    block(carry)
    measured.setup_s = time.perf_counter() - start
    timed = TimedStep(jitted, measured, block, jitted._cache_size)
    _reference_run(workload, measured, arrays, timed, carry, lambda m: float(m["train/loss"]), lambda b: b)
    measured.compilations = jitted._cache_size()
    return measured


def run_hf_pytorch(workload: Workload) -> Measured:
    import torch
    import transformers

    measured = Measured()
    start = time.perf_counter()
    torch.manual_seed(workload.seed)
    folder = model_dir(workload)
    arrays = _padded_windows(workload, folder)
    model = transformers.BertForQuestionAnswering.from_pretrained(folder).train()
    total = measured_steps(workload, len(arrays["input_ids"]) // workload.batch_size)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    groups = [{"params": decay, "weight_decay": workload.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=workload.learning_rate)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, math.ceil(workload.warmup_ratio * total), total)
    measured.setup_s = time.perf_counter() - start

    def step(state, batch):  # the Trainer's: forward, backward, clip at 1, step, schedule
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return state, {"train/loss": loss.detach()}

    convert = lambda batch: {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
    timed = TimedStep(step, measured, lambda _: None, lambda: 0)
    _reference_run(workload, measured, arrays, timed, None, lambda m: float(m["train/loss"]), convert)
    return measured


RUNNERS = {"hf-flax": run_hf_flax, "hf-pytorch": run_hf_pytorch}
