"""Training data that is remade every epoch (a data transform such as EDA), batched as `BatchIterator` does.

The loop counts positions as (epoch, batch in epoch) with one `steps_per_epoch` for the whole run, so every
epoch must have the same number of rows: `fit_rows` makes it so. Epoch e's arrays are built when its first
batch is asked for, and a resumed run rebuilds exactly the epoch it stopped in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from qajax.data.batches import START, Batch, BatchIterator, Position, _num_examples

ArraysForEpoch = Callable[[int], Mapping[str, np.ndarray]]


class PerEpochBatches:
    """`BatchIterator` over `arrays_for_epoch(epoch)`, rebuilt at each epoch; `num_rows` rows every epoch."""

    def __init__(self, arrays_for_epoch: ArraysForEpoch, num_rows: int, *, position: Position = START, **iterator_args):
        self._arrays_for_epoch, self._num_rows, self._args = arrays_for_epoch, num_rows, iterator_args
        # Sizes only depend on the row count: a stand-in dataset gives steps_per_epoch without building any epoch.
        sizes = {k: v for k, v in iterator_args.items() if k not in ("length_bucket", "length_key", "bucket_pool")}
        self.steps_per_epoch = BatchIterator({"row": np.arange(num_rows)}, **sizes).steps_per_epoch
        self.position = position
        self._iterator, self._epoch = None, -1

    def __iter__(self) -> PerEpochBatches:
        return self

    def __next__(self) -> Batch:
        epoch = self.position.epoch
        if epoch != self._epoch:
            arrays = self._arrays_for_epoch(epoch)
            if _num_examples(arrays) != self._num_rows:
                raise ValueError(f"epoch {epoch}: {_num_examples(arrays)} rows, every epoch must have {self._num_rows}")
            self._iterator = BatchIterator(arrays, position=self.position, **self._args)
            self._epoch = epoch
        batch = next(self._iterator)
        self.position = self._iterator.position
        return batch


def fit_rows(arrays: Mapping[str, np.ndarray], num_rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`num_rows` rows of `arrays`: a random subset in order when there are more, all of them and random
    repeats when there are fewer (an augmented epoch may have a few windows more or less than the plain one)."""
    have = _num_examples(arrays)
    if have == 0:
        raise ValueError("no rows to fit")
    if have > num_rows:
        rows = np.sort(rng.choice(have, num_rows, replace=False))
    else:
        rows = np.concatenate([np.arange(have), rng.choice(have, num_rows - have)])
    return {key: np.asarray(value)[rows] for key, value in arrays.items()}
