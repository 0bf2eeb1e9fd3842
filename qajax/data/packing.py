"""Sequence packing: several right-padded windows share one row, kept apart by segment ids.

A packed row of `width` tokens holds up to K windows back to back, each with its own real tokens only:
`segment_ids [rows, width]` says which slot (1..K) a token belongs to (0 = padding) and
`position_ids [rows, width]` restart at 0 at every window, so an encoder that attends only within equal
segment ids (qajax.models.attention) computes each window exactly as it would alone. Per slot, `[rows, K]`
arrays carry the window's labels shifted to row offsets, `window_weight` (1 real, 0 empty slot),
`window_index` (the window's row in the unpacked arrays, -1 empty) and `window_start` (its first token's
offset in the row). K is fixed so that every array keeps one shape and the step compiles once.

The packing is computed once from the windows' lengths, before training: the rows are then ordinary
examples for `BatchIterator`, which shuffles them per (seed, epoch), splits them over hosts and resumes at a
saved position exactly. Repacking every epoch would change the number of rows (so the steps of an epoch),
which the loop's positions cannot follow; the cost is that windows sharing a row share every epoch's batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import numpy as np

PACKING_KEYS = ("segment_ids", "position_ids")  # per token, added to the model inputs of a packed row
SLOT_KEYS = ("window_weight", "window_index", "window_start")  # per slot [rows, K]


def pack_windows(lengths: np.ndarray, width: int, max_per_row: int) -> np.ndarray:
    """[rows, max_per_row] window indices (-1 = empty slot): every window in exactly one row, in the order
    it was placed, with the lengths in a row summing to at most `width`.

    Best-fit decreasing: windows from the longest down (ties in index order) each go to the open row whose
    room fits them most tightly, else a new row. Like first-fit decreasing it stays within 11/9 of the
    fewest possible rows (+1), and with rows kept by their room (at most `width` distinct values) it costs
    O(log width) per window, where first fit scans the rows. It depends on the lengths alone: deterministic.
    """
    lengths = np.asarray(lengths, np.int64)
    if max_per_row < 1:
        raise ValueError(f"max_per_row={max_per_row}: a row holds at least one window")
    if len(lengths) and (lengths.min() < 1 or lengths.max() > width):
        raise ValueError(f"window lengths must be in [1, width={width}]; found [{lengths.min()}, {lengths.max()}]")
    rows: list[list[int]] = []
    rooms: list[int] = []  # sorted distinct rooms of the open rows
    open_rows: dict[int, list[int]] = {}  # room -> open rows with that much room
    for window in np.argsort(-lengths, kind="stable"):
        need = int(lengths[window])
        i = bisect.bisect_left(rooms, need)
        if i == len(rooms):
            row, room = len(rows), width
            rows.append([])
        else:
            room = rooms[i]
            row = open_rows[room].pop()
            if not open_rows[room]:
                del open_rows[room], rooms[i]
        rows[row].append(int(window))
        room -= need
        if room > 0 and len(rows[row]) < max_per_row:
            if room not in open_rows:
                bisect.insort(rooms, room)
                open_rows[room] = []
            open_rows[room].append(row)
    table = np.full((len(rows), max_per_row), -1, np.int32)
    for row, windows in enumerate(rows):
        table[row, : len(windows)] = windows
    return table


def window_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """[windows] real tokens of right-padded windows: the last nonzero of the mask + 1."""
    mask = np.asarray(attention_mask) != 0
    return np.where(mask.any(1), mask.shape[1] - np.argmax(mask[:, ::-1], axis=1), 0)


def _moves(table: np.ndarray, lengths: np.ndarray):
    """For every real token: (window, position in the window, row, position in the row, slot), flat, and
    [rows, K] window starts in their rows."""
    slot_lengths = np.where(table >= 0, lengths[np.maximum(table, 0)], 0)  # [rows, K]
    starts = np.cumsum(slot_lengths, axis=1) - slot_lengths  # [rows, K]
    real = table >= 0
    row, slot = np.nonzero(real)
    count = slot_lengths[real]
    first = np.cumsum(count) - count
    within = np.arange(int(count.sum())) - np.repeat(first, count)
    window = np.repeat(table[real], count)
    position = np.repeat(starts[real], count) + within
    return window, within, np.repeat(row, count), position, np.repeat(slot, count), starts


def pack(
    arrays: Mapping[str, np.ndarray],
    table: np.ndarray,
    *,
    token_keys: tuple[str, ...],
    label_keys: tuple[str, ...] = (),
    width: int | None = None,
) -> dict[str, np.ndarray]:
    """Packed rows of `table` (`pack_windows`): `token_keys` arrays [windows, L] become [rows, width] with
    only each window's real tokens (lengths from `attention_mask`), plus PACKING_KEYS; `label_keys` arrays
    [windows] of token positions become [rows, K] row offsets (0 in empty slots); plus SLOT_KEYS."""
    lengths = window_lengths(arrays["attention_mask"])
    width = width or np.shape(arrays["attention_mask"])[1]
    window, within, row, position, slot, starts = _moves(table, lengths)
    num_rows = len(table)
    out = {}
    for key in token_keys:
        value = np.asarray(arrays[key])
        out[key] = np.zeros((num_rows, width), value.dtype)
        out[key][row, position] = value[window, within]
    out["segment_ids"] = np.zeros((num_rows, width), np.int32)
    out["segment_ids"][row, position] = slot + 1
    out["position_ids"] = np.zeros((num_rows, width), np.int32)
    out["position_ids"][row, position] = within
    real = table >= 0
    for key in label_keys:
        value = np.asarray(arrays[key])
        out[key] = np.where(real, starts + value[np.maximum(table, 0)], 0).astype(np.int32)
    out["window_weight"] = real.astype(np.float32)
    out["window_index"] = table
    out["window_start"] = np.where(real, starts, 0).astype(np.int32)
    return out


def unpack(values: np.ndarray, packed: Mapping[str, np.ndarray], num_windows: int, width: int, fill=0) -> np.ndarray:
    """[num_windows, width] per-window values from per-token values of packed rows [rows, T] (the rows of
    `packed` in order): each window's tokens back at positions 0.., `fill` after its last token."""
    table = np.asarray(packed["window_index"])
    segment_ids = np.asarray(packed["segment_ids"])
    lengths = np.zeros(num_windows, np.int64)
    slots = np.arange(1, table.shape[1] + 1)
    slot_lengths = (segment_ids[:, None, :] == slots[None, :, None]).sum(-1)  # [rows, K]
    lengths[table[table >= 0]] = slot_lengths[table >= 0]
    window, within, row, position, _, _ = _moves(table, lengths)
    out = np.full((num_windows, width), fill, np.asarray(values).dtype)
    out[window, within] = np.asarray(values)[row, position]
    return out


def count_fed(batch: Mapping, batch_size: int, tokens_per_example: int) -> tuple:
    """(windows, tokens) of one step of `batch_size` packed rows (the Task's `count_fed`): the real slots of
    `window_weight`, not the rows, so that examples/s counts SQuAD windows as an unpacked run does; tokens
    are the rows' (every row is fed at full width). The windows stay a device scalar: summing is dispatched,
    not waited for, and the loop reads it at log steps, where it syncs anyway."""
    weight = batch["window_weight"]
    # The placed batch's leading axes differ by parallel mode (pmap: [devices, rows, K] of this process's
    # rows only): its real slots are scaled to the step's `batch_size` rows (exact unless pmap spans hosts).
    rows = weight.size // weight.shape[-1]
    windows = weight.sum() if rows == batch_size else weight.sum() * (batch_size / rows)
    return windows, batch_size * batch["input_ids"].shape[-1]
