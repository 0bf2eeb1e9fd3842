"""qajax/data/packing.py: every window in exactly one row, rows within their width and slot count, nearly
as few rows as the token count allows, unpack(pack(x)) == x on the real tokens, and a step counts its windows."""

import numpy as np
import pytest

from qajax.data.packing import count_fed, pack, pack_windows, unpack, window_lengths

WIDTH = 64


def windows(num_windows=300, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, WIDTH + 1, num_windows)
    mask = (np.arange(WIDTH)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, 1000, (num_windows, WIDTH)).astype(np.int32) * mask
    types = (np.arange(WIDTH)[None, :] >= lengths[:, None] // 3).astype(np.int32) * mask
    starts = rng.integers(0, lengths)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "start_positions": starts}, lengths


@pytest.mark.parametrize("max_per_row", [1, 2, 4])
def test_each_window_in_one_row_within_width_and_slots(max_per_row):
    _, lengths = windows()
    table = pack_windows(lengths, WIDTH, max_per_row)
    placed = table[table >= 0]
    assert sorted(placed.tolist()) == list(range(len(lengths)))
    assert table.shape[1] == max_per_row
    assert (np.where(table >= 0, lengths[np.maximum(table, 0)], 0).sum(1) <= WIDTH).all()
    assert (table[:, 0] >= 0).all()  # no empty row; empty slots only at the end of a row
    assert all((row[row >= 0].size == np.argmin(np.append(row, -1) >= 0)) for row in table)
    if max_per_row == 4:  # best-fit decreasing: within a few rows of the token count's lower bound
        assert len(table) <= np.ceil(lengths.sum() / WIDTH) * 11 / 9 + 1
    np.testing.assert_array_equal(table, pack_windows(lengths, WIDTH, max_per_row))  # deterministic


def test_pack_then_unpack_gives_back_each_window():
    arrays, lengths = windows()
    table = pack_windows(lengths, WIDTH, 4)
    packed = pack(arrays, table, token_keys=("input_ids", "attention_mask", "token_type_ids"),
                  label_keys=("start_positions",))  # fmt: skip
    assert packed["input_ids"].shape == (len(table), WIDTH) and packed["start_positions"].shape == table.shape
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(unpack(packed[key], packed, len(lengths), WIDTH), arrays[key])
    np.testing.assert_array_equal(window_lengths(arrays["attention_mask"]), lengths)
    # Per slot: the label is the window's own position shifted to its start in the row; positions restart.
    real = table >= 0
    np.testing.assert_array_equal(
        packed["start_positions"][real], packed["window_start"][real] + arrays["start_positions"][table[real]]
    )
    np.testing.assert_array_equal(packed["window_weight"], real.astype(np.float32))
    rows, slots = np.nonzero(real)
    for r, k in zip(rows[:50], slots[:50], strict=True):
        tokens = packed["segment_ids"][r] == k + 1
        assert np.flatnonzero(tokens)[0] == packed["window_start"][r, k]
        np.testing.assert_array_equal(packed["position_ids"][r, tokens], np.arange(lengths[table[r, k]]))
    assert (packed["attention_mask"] == (packed["segment_ids"] > 0)).all()


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="window lengths"):
        pack_windows(np.array([3, WIDTH + 1]), WIDTH, 2)
    with pytest.raises(ValueError, match="max_per_row=0"):
        pack_windows(np.array([3]), WIDTH, 0)


def test_a_step_of_packed_rows_counts_its_windows_not_its_rows():
    weight = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)  # 4 rows, 10 windows
    batch = {"window_weight": weight, "input_ids": np.zeros((4, WIDTH), np.int32)}
    assert count_fed(batch, 4, tokens_per_example=WIDTH) == (10, 4 * WIDTH)
    per_device = {k: v.reshape(2, 2, -1) for k, v in batch.items()}  # pmap's placement: [devices, rows, ...]
    assert count_fed(per_device, 4, tokens_per_example=WIDTH) == (10, 4 * WIDTH)
    # pmap over two hosts: this process places half the step's rows, the other half counts alike
    assert count_fed(per_device, 8, tokens_per_example=WIDTH) == (20, 8 * WIDTH)
