"""Batches from an in-memory dataset: deterministic, resumable, split across hosts, prefetched to device.

A dataset is a dict of numpy arrays sharing their leading length N (`input_ids [N, seq]`, `start_positions [N]`).
Epoch e's order depends only on (seed, e), so an iterator rebuilt at a saved `Position` yields exactly what
the uninterrupted one would have. Positions count global batches, so a run may resume on another host count.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping

import jax
import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Position:
    """Where an iterator stands: the next batch it yields. Saved in checkpoints as JSON."""

    epoch: int
    batch_in_epoch: int

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    @classmethod
    def from_json(cls, d: Mapping) -> Position:
        return cls(epoch=int(d["epoch"]), batch_in_epoch=int(d["batch_in_epoch"]))


START = Position(0, 0)


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
    if not arrays:
        raise ValueError("the dataset has no arrays")
    lengths = {key: (np.shape(value)[0] if np.ndim(value) else None) for key, value in arrays.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise ValueError(f"dataset arrays must share their leading length; found {lengths}")
    return next(iter(lengths.values()))


def _share(global_batch_size: int, process_index: int, process_count: int, what: str) -> int:
    """Rows per process; every process reads the same global order and keeps its contiguous slice."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ValueError(f"{what} {global_batch_size} does not divide by process_count {process_count}")
    return global_batch_size // process_count


class BatchIterator:
    """This process's share of each global batch, forever (epochs roll over).

    With `accumulation_steps=k` a batch is [k, per_process_batch / k, ...]: the global batch is cut into k
    micro-batches in order and each process keeps its slice of every micro-batch, so micro-batch j as a
    global array (sharded on axis 1) holds the same examples on any number of hosts.
    `drop_remainder=False` completes an epoch's last batch by wrapping to the start of that epoch's order:
    every example is seen each epoch and shapes stay static (a short batch would recompile the step).

    `length_bucket=m` (> 0) cuts padding: each pool of `bucket_pool` batches of the shuffled order is sorted
    by length (the last nonzero of `length_key` + 1) and cut into batches, the epoch's batches are shuffled,
    and each batch is trimmed to its longest row rounded up to a multiple of m. Every array whose rows have
    the shape of `length_key`'s rows is trimmed along its last axis. The step then compiles once per
    length (at most width / m times) and skips the padding that dominates short examples.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        global_batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        accumulation_steps: int = 1,
        position: Position = START,
        length_bucket: int = 0,
        length_key: str = "attention_mask",
        bucket_pool: int = 50,
    ):
        self._arrays = {key: np.asarray(value) for key, value in arrays.items()}
        self._num_examples = _num_examples(self._arrays)
        per_process = _share(global_batch_size, process_index, process_count, "global_batch_size")
        if accumulation_steps < 1 or per_process % accumulation_steps:
            raise ValueError(
                f"the per-process batch {per_process} (global_batch_size {global_batch_size} / process_count "
                f"{process_count}) does not divide into accumulation_steps {accumulation_steps}"
            )
        if drop_remainder:
            self.steps_per_epoch = self._num_examples // global_batch_size
        else:
            self.steps_per_epoch = -(-self._num_examples // global_batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {self._num_examples} examples, fewer than one global batch of "
                f"{global_batch_size} (drop_remainder={drop_remainder})"
            )
        if position.epoch < 0 or not 0 <= position.batch_in_epoch < self.steps_per_epoch:
            raise ValueError(f"{position} is outside epochs of {self.steps_per_epoch} batches")
        self.global_batch_size = global_batch_size
        self.accumulation_steps = accumulation_steps
        self.position = position
        self._seed = seed
        self._shuffle = shuffle
        micro_per_process = per_process // accumulation_steps
        self._columns = slice(process_index * micro_per_process, (process_index + 1) * micro_per_process)
        self._order_epoch, self._order = -1, np.empty(0, np.int64)
        self._length_bucket, self._bucket_pool = length_bucket, bucket_pool
        if length_bucket:
            self._lengths, self._trimmed = _row_lengths(self._arrays, length_key, length_bucket, bucket_pool)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:  # one permutation per epoch, not per batch
            rng = np.random.default_rng([self._seed, epoch])
            self._order = rng.permutation(self._num_examples) if self._shuffle else np.arange(self._num_examples)
            if self._length_bucket:
                self._order = self._bucketed(self._order, np.random.default_rng([self._seed, epoch, 1]))
            self._order_epoch = epoch
        return self._order

    def _bucketed(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The epoch's slots (wrap included), sorted by length within pools, batches in a shuffled order."""
        b = self.global_batch_size
        slots = order[np.arange(self.steps_per_epoch * b) % self._num_examples]
        pool = self._bucket_pool * b
        pools = [slots[i : i + pool] for i in range(0, len(slots), pool)]
        slots = np.concatenate([p[np.argsort(-self._lengths[p], kind="stable")] for p in pools])
        batches = slots.reshape(self.steps_per_epoch, b)
        if self._shuffle:
            batches = batches[rng.permutation(self.steps_per_epoch)]
        return batches.reshape(-1)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        epoch, batch = self.position.epoch, self.position.batch_in_epoch
        slots = batch * self.global_batch_size + np.arange(self.global_batch_size)
        order = self._epoch_order(epoch)
        rows = order[slots % len(order)]  # modulo: the wrap of drop_remainder=False (bucketed orders hold it)
        width = None
        if self._length_bucket:  # every process sees the whole global batch, so all trim to one width
            m = self._length_bucket
            width = max(m, -(-int(self._lengths[rows].max()) // m) * m)
        rows = rows.reshape(self.accumulation_steps, -1)[:, self._columns]  # [k, micro_per_process]
        if self.accumulation_steps == 1:
            rows = rows[0]
        batch += 1
        self.position = Position(epoch + 1, 0) if batch == self.steps_per_epoch else Position(epoch, batch)
        out = {key: value[rows] for key, value in self._arrays.items()}
        if width is not None:
            for key in self._trimmed:
                out[key] = np.ascontiguousarray(out[key][..., :width])
        return out


def _row_lengths(arrays: Mapping[str, np.ndarray], length_key: str, multiple: int, pool: int):
    """Each row's length (its last nonzero `length_key` entry + 1) and the keys trimmed with it."""
    if multiple < 0 or pool < 1:
        raise ValueError(f"length_bucket={multiple} must be >= 0 and bucket_pool={pool} >= 1")
    if length_key not in arrays or np.ndim(arrays[length_key]) < 2:
        raise ValueError(
            f"length bucketing reads the lengths from {length_key!r} [rows, ..., seq]; the dataset has "
            f"{ {k: np.shape(v) for k, v in arrays.items()} }"
        )
    mask = arrays[length_key] != 0
    row_shape = mask.shape[1:]
    width = row_shape[-1]
    last = np.where(mask.any(-1), width - np.argmax(mask[..., ::-1], axis=-1), 0)  # [rows, ...]
    lengths = last.reshape(len(mask), -1).max(1)
    trimmed = [key for key, value in arrays.items() if np.shape(value)[1:] == row_shape]
    return lengths, trimmed


def eval_batches(
    arrays: Mapping[str, np.ndarray], *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """One pass in order, in global batches of `batch_size`, each process yielding its contiguous slice.

    The last batch is padded to full size with copies of row 0 so that evaluation compiles once; the added
    `example_weight [batch]` float32 (1 real, 0 padding) lets metrics ignore the copies. Every process
    yields the same number of batches, as collectives across hosts require.
    """
    if "example_weight" in arrays:
        raise ValueError("the dataset already has an 'example_weight' array; eval_batches adds its own")
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    num_examples = _num_examples(arrays)
    per_process = _share(batch_size, process_index, process_count, "batch_size")
    for start in range(0, num_examples, batch_size):
        slots = start + process_index * per_process + np.arange(per_process)
        real = slots < num_examples
        rows = np.where(real, slots, 0)
        batch = {key: value[rows] for key, value in arrays.items()}
        batch["example_weight"] = real.astype(np.float32)
        yield batch


def make_global_array(sharding: jax.sharding.Sharding, local_batch):
    """One global jax.Array per leaf from each process's rows; processes' slices concatenate on the sharded axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_device(
    iterator: Iterable, size: int = 2, sharding: jax.sharding.Sharding | None = None, put: Callable | None = None
) -> Iterator:
    """Yields batches already on device: while the step uses one, `size - 1` more are being transferred.

    No thread is needed: `device_put` returns at once and the copy overlaps the running computation.
    With several processes each passes its own rows and gets the global array (see `make_global_array`).
    `put` replaces the placement (pmap mode splits each batch over the local devices itself).
    """
    if size < 1:
        raise ValueError(f"prefetch size must be at least 1, got {size}")
    if put is not None:  # the caller places batches itself (pmap's per-device split)
        pass
    elif sharding is None:
        put = jax.device_put
    elif jax.process_count() == 1:
        put = lambda batch: jax.device_put(batch, sharding)
    else:
        put = lambda batch: make_global_array(sharding, batch)
    iterator = iter(iterator)
    queue = collections.deque(map(put, itertools.islice(iterator, size)))
    while queue:
        yield queue.popleft()
        # Refilled after the yield: the caller has dispatched its step by now, so slicing the next host batch
        # overlaps the device's work.
        queue.extend(map(put, itertools.islice(iterator, 1)))
