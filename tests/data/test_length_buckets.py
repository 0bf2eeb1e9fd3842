"""Length bucketing in BatchIterator: every example once per epoch, trimmed only of padding, resumable,
and the same global batch on any number of processes."""

import collections

import numpy as np
import pytest

from qajax.data.batches import BatchIterator, Position
from qajax.data.epochs import PerEpochBatches

WIDTH = 48


def padded_dataset(num_examples=203, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, WIDTH + 1, num_examples)
    mask = (np.arange(WIDTH)[None, :] < lengths[:, None]).astype(np.int32)
    index = np.arange(num_examples, dtype=np.int32)
    return {
        "index": index,
        "input_ids": ((index[:, None] + 1) * 1000 + np.arange(WIDTH)) * mask,
        "attention_mask": mask,
        "token_type_ids": (np.arange(WIDTH)[None, :] >= lengths[:, None] // 2) * mask,
        "pair_mask": np.stack([mask, mask], 1),  # [N, 2, WIDTH]: rows of another shape are left whole
        "start_positions": (lengths - 1).astype(np.int32),
    }, lengths


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_every_example_once_per_epoch_and_only_padding_trimmed(drop_remainder):
    data, lengths = padded_dataset()
    it = BatchIterator(data, global_batch_size=16, seed=3, drop_remainder=drop_remainder, length_bucket=8)
    seen = collections.Counter()
    for batch in (next(it) for _ in range(it.steps_per_epoch)):
        width = batch["input_ids"].shape[1]
        longest = lengths[batch["index"]].max()
        assert width % 8 == 0 and longest <= width < longest + 8
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert batch[key].shape == (16, width)
            np.testing.assert_array_equal(batch[key], data[key][batch["index"], :width])
        assert batch["pair_mask"].shape == (16, 2, WIDTH) and batch["start_positions"].max() < width
        seen.update(batch["index"].tolist())
    assert it.position == Position(1, 0)
    if drop_remainder:
        assert len(seen) == it.steps_per_epoch * 16 and set(seen.values()) == {1}
    else:  # the wrap repeats a few examples of the epoch to fill the last batch, as without bucketing
        assert set(seen) == set(range(203)) and sum(seen.values()) == it.steps_per_epoch * 16


def test_bucketing_cuts_most_padding_and_keeps_batches_shuffled():
    data, lengths = padded_dataset(2000)
    plain = BatchIterator(data, global_batch_size=16, seed=0)
    bucketed = BatchIterator(data, global_batch_size=16, seed=0, length_bucket=8)
    tokens = lambda it: sum(next(it)["input_ids"].size for _ in range(it.steps_per_epoch))
    assert tokens(bucketed) < 0.65 * tokens(plain)  # uniform lengths 3..48: about 55% of the full width
    widths = [next(bucketed)["input_ids"].shape[1] for _ in range(30)]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    epochs = [[next(bucketed)["index"].tolist() for _ in range(bucketed.steps_per_epoch)] for _ in range(2)]
    assert epochs[0][1:] != epochs[1][1:]  # a new order each epoch


def test_resume_at_a_saved_position_continues_bitwise():
    data, _ = padded_dataset()
    args = dict(global_batch_size=8, seed=5, length_bucket=16)
    it = BatchIterator(data, **args)
    for _ in range(37):
        next(it)
    resumed = BatchIterator(data, position=it.position, **args)
    for _ in range(30):
        a, b = next(it), next(resumed)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("process_count, accumulation_steps", [(2, 1), (4, 2)])
def test_process_shares_have_one_width_and_concatenate_to_the_global_batch(process_count, accumulation_steps):
    data, _ = padded_dataset()
    args = dict(global_batch_size=16, seed=1, length_bucket=8, accumulation_steps=accumulation_steps)
    whole = BatchIterator(data, **args)
    shares = [BatchIterator(data, process_index=i, process_count=process_count, **args) for i in range(process_count)]
    for _ in range(whole.steps_per_epoch + 3):
        expected = next(whole)
        parts = [next(s) for s in shares]
        axis = 1 if accumulation_steps > 1 else 0
        for key in expected:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=axis), expected[key])


def test_per_epoch_batches_pass_bucketing_through():
    data, lengths = padded_dataset()
    it = PerEpochBatches(lambda epoch: data, 203, global_batch_size=16, seed=0, length_bucket=8)
    batch = next(it)
    assert batch["input_ids"].shape[1] < WIDTH or lengths[batch["index"]].max() > WIDTH - 8


def test_bad_bucketing_arguments_name_what_is_wrong():
    data, _ = padded_dataset()
    del data["attention_mask"]
    with pytest.raises(ValueError, match="attention_mask"):
        BatchIterator(data, global_batch_size=8, seed=0, length_bucket=8)
    with pytest.raises(ValueError, match="length_bucket=-1"):
        BatchIterator(padded_dataset()[0], global_batch_size=8, seed=0, length_bucket=-1)
