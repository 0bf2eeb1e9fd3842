"""A generated span-QA task that a tiny random encoder learns in seconds: the machinery's test bench.

Each example is random tokens with a span somewhere between an opening and a closing marker token
(1 to `answer_length` tokens apart); the answer runs from the opening to the closing marker. Sequences
have random lengths (padding exercises the masks) and two segments.
"""

from __future__ import annotations

import numpy as np

from qajax.checkpoints.factory import load_or_init
from qajax.tasks.span import span_task
from qajax.train.task import Task

PAD, OPEN, CLOSE, FIRST_WORD = 0, 3, 4, 5


def generate(num_examples: int, seq_len: int, vocab_size: int, answer_length: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_WORD, vocab_size, (num_examples, seq_len)).astype(np.int32)
    lengths = rng.integers(seq_len // 2, seq_len + 1, num_examples)
    positions = np.arange(seq_len)
    mask = (positions[None, :] < lengths[:, None]).astype(np.int32)
    span = rng.integers(1, answer_length + 1, num_examples)  # closing marker `span` tokens after the opening
    start = rng.integers(1, lengths - span)  # never at [CLS]; the closing marker fits
    ids[np.arange(num_examples), start] = OPEN
    ids[np.arange(num_examples), start + span] = CLOSE
    ids = np.where(mask > 0, ids, PAD)
    types = (positions[None, :] >= (lengths[:, None] // 2)).astype(np.int32) * mask
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "start_positions": start.astype(np.int32),
        "end_positions": (start + span).astype(np.int32),
    }


def build(config) -> Task:
    t = config.task
    spec, params = load_or_init(config.model, "qa", seed=config.seed, span_head=t.span_head)
    train = generate(t.num_train, t.seq_len, t.vocab_size, t.answer_length, seed=config.seed)
    held_out = generate(t.num_eval, t.seq_len, t.vocab_size, t.answer_length, seed=config.seed + 1)

    def make_predict(forward):
        def predict_fn(params, batch):
            out = forward(params, batch)
            return {"start": out.start_logits.argmax(-1), "end": out.end_logits.argmax(-1)}

        return predict_fn

    def evaluate(outputs, arrays):
        start_ok = outputs["start"] == arrays["start_positions"]
        end_ok = outputs["end"] == arrays["end_positions"]
        return {"eval/exact": float(np.mean(start_ok & end_ok) * 100), "eval/start_accuracy": float(np.mean(start_ok))}

    return span_task(
        spec,
        params,
        start_weight=t.start_weight,
        end_weight=t.end_weight,
        make_predict=make_predict,
        train_arrays=train,
        eval_arrays=held_out,
        evaluate=evaluate,
        tokens_per_example=t.seq_len,
    )


def build_for_shapes(config):
    """The task without data or weights, for ahead-of-time compiles (see `span_task_for_shapes`)."""
    from qajax.tasks.span import span_task_for_shapes

    return span_task_for_shapes(config, config.task.seq_len)
