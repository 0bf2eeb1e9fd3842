"""Examples -> padded token arrays, keyed as the model reads them.

A sentence task gives `input_ids [N, seq]` (and its mask and token types). A pair task gives either the
cross-encoded pair `[CLS] a [SEP] b [SEP]` as `[N, seq]` (form "cross"), or each sentence encoded alone,
stacked as `[N, 2, seq]` (forms "concat" and "cosine"): the leading axis stays the example axis, so the
batch iterator, sharding and padding treat both alike. Labels are `labels [N]`.
"""

from __future__ import annotations

import numpy as np

from qajax.tasks.multitask.data import Example

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _encode(tokenizer, first, second, max_seq_length: int) -> dict[str, np.ndarray]:
    encoded = tokenizer(
        first,
        second,
        max_length=max_seq_length,
        truncation="longest_first" if second is not None else True,
        padding="max_length",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    return {k: np.asarray(encoded[k], np.int32) for k in INPUTS}


def featurize(examples: list[Example], tokenizer, *, max_seq_length: int, separate: bool, label_dtype) -> dict:
    """Token arrays and labels for one task. `separate`: encode the two sentences of a pair alone."""
    num_texts = len(examples[0].texts)
    columns = [[e.texts[i] for e in examples] for i in range(num_texts)]
    if num_texts == 1:
        arrays = _encode(tokenizer, columns[0], None, max_seq_length)
    elif separate:
        first = _encode(tokenizer, columns[0], None, max_seq_length)
        second = _encode(tokenizer, columns[1], None, max_seq_length)
        arrays = {k: np.stack([first[k], second[k]], axis=1) for k in INPUTS}  # [N, 2, seq]
    else:
        arrays = _encode(tokenizer, columns[0], columns[1], max_seq_length)
    if examples[0].label is not None:
        arrays["labels"] = np.asarray([e.label for e in examples], label_dtype)
    return arrays
