"""Which task(s) each step trains on, and the batches that follow: deterministic per seed and resumable.

Each task has its own endless stream of batches (a `BatchIterator` over its arrays: its own epochs and
shuffles). A schedule cuts training into epochs of a fixed number of steps and says, per step, which
streams give a batch:

    sequential     every batch of task 1, then every batch of task 2, ...   (report 003's "naive" order)
    round_robin    1, 2, 3, 1, 2, 3, ... for len(tasks) x the largest task's batches (small tasks repeat)
    shuffled       the sequential epoch in a random order (report 003's best)
    proportional   each step one task drawn with probability proportional to its number of batches
    together       every step one batch of every task (what PCGrad needs: all task gradients in one step)

With n_t batches per epoch of task t, an epoch has sum(n_t) steps (sequential, shuffled, proportional),
len(tasks) * max(n_t) (round_robin) or max(n_t) (together). A batch is one flat dict whose keys carry the
task's name (`sst/input_ids`, ...), so that placement, prefetch and pmap's split treat it like any other.

Resuming at a `Position(epoch, batch_in_epoch)` replays the plans before it (a few thousand small ints per
epoch) to count how many batches each stream has given, and restarts each stream exactly there: the
resumed run sees what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qajax.data.batches import START, BatchIterator, Position
from qajax.errors import ConfigError

SCHEDULES = ("sequential", "round_robin", "shuffled", "proportional", "together")


def epoch_plan(schedule: str, batches_per_task: Mapping[str, int], seed: int, epoch: int) -> list[tuple[str, ...]]:
    """The tasks of every step of one epoch; a pure function of its arguments."""
    names = list(batches_per_task)
    sizes = [batches_per_task[n] for n in names]
    in_order = [(name,) for name, size in zip(names, sizes, strict=True) for _ in range(size)]
    rng = np.random.default_rng([seed, epoch, 7])  # its own stream: the batch iterators use [seed, epoch]
    if schedule == "sequential":
        return in_order
    if schedule == "shuffled":
        return [in_order[i] for i in rng.permutation(len(in_order))]
    if schedule == "round_robin":
        return [(name,) for _ in range(max(sizes)) for name in names]
    if schedule == "proportional":
        drawn = rng.choice(len(names), size=sum(sizes), p=np.asarray(sizes) / sum(sizes))
        return [(names[i],) for i in drawn]
    if schedule == "together":
        return [tuple(names)] * max(sizes)
    raise ConfigError(f"task.schedule={schedule!r}: expected one of {SCHEDULES}")


class MultitaskBatches:
    """The batches of a schedule, forever; the same interface as `BatchIterator` (`steps_per_epoch`,
    `position`), so the training loop saves and restores it the same way."""

    def __init__(
        self,
        datasets: Mapping[str, Mapping[str, np.ndarray]],
        *,
        schedule: str,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        accumulation_steps: int = 1,
        position: Position = START,
        length_bucket: int = 0,
    ):
        self.schedule, self.seed = schedule, seed
        stream_args = dict(
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
            accumulation_steps=accumulation_steps,
            length_bucket=length_bucket,
        )
        # Each task its own shuffle seed, so that two tasks of equal size do not share an order.
        make_stream = lambda i, arrays, at=START: BatchIterator(
            arrays, seed=seed * 1009 + i, position=at, **stream_args
        )
        self.batches_per_task = {
            name: make_stream(i, a).steps_per_epoch for i, (name, a) in enumerate(datasets.items())
        }
        self.steps_per_epoch = len(epoch_plan(schedule, self.batches_per_task, seed, 0))
        if not 0 <= position.batch_in_epoch < self.steps_per_epoch or position.epoch < 0:
            raise ValueError(f"{position} is outside epochs of {self.steps_per_epoch} steps")
        self.position = position
        counts = self.batches_before(position)
        self._streams = {}
        for i, (name, arrays) in enumerate(datasets.items()):
            n = self.batches_per_task[name]
            self._streams[name] = make_stream(i, arrays, Position(counts[name] // n, counts[name] % n))
        self._plan_epoch, self._plan = position.epoch, epoch_plan(schedule, self.batches_per_task, seed, position.epoch)

    def batches_before(self, position: Position) -> dict[str, int]:
        """How many batches each task's stream has given before `position`."""
        counts = dict.fromkeys(self.batches_per_task, 0)
        for epoch in range(position.epoch + 1):
            plan = epoch_plan(self.schedule, self.batches_per_task, self.seed, epoch)
            for tasks in plan if epoch < position.epoch else plan[: position.batch_in_epoch]:
                for name in tasks:
                    counts[name] += 1
        return counts

    def __iter__(self) -> MultitaskBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, step = self.position.epoch, self.position.batch_in_epoch
        if epoch != self._plan_epoch:
            self._plan_epoch, self._plan = epoch, epoch_plan(self.schedule, self.batches_per_task, self.seed, epoch)
        batch = {}
        for name in self._plan[step]:
            batch.update({f"{name}/{key}": value for key, value in next(self._streams[name]).items()})
        step += 1
        self.position = Position(epoch + 1, 0) if step == self.steps_per_epoch else Position(epoch, step)
        return batch
