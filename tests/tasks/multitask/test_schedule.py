"""Schedules: deterministic per seed, the proportions they promise, and exact resume mid-epoch."""

import collections

import numpy as np
import pytest

from qajax.data.batches import START
from qajax.tasks.multitask.schedule import SCHEDULES, MultitaskBatches, epoch_plan

SIZES = {"sst": 10, "quora": 25, "sts": 5}  # examples; batches of 2 -> 5, 12, 2 per epoch


def datasets():
    return {name: {"ids": np.arange(n) + 1000 * i, "labels": np.arange(n)} for i, (name, n) in enumerate(SIZES.items())}


def make(schedule, seed=0, position=START):
    return MultitaskBatches(datasets(), schedule=schedule, global_batch_size=2, seed=seed, position=position)


def stream(batches, steps):
    return [{k: v.tolist() for k, v in next(batches).items()} for _ in range(steps)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_deterministic_and_resumable_mid_epoch(schedule):
    steps = 3 * make(schedule).steps_per_epoch + 5  # several epochs of the schedule and of each task
    reference = stream(make(schedule), steps)
    assert reference == stream(make(schedule), steps)
    for cut in (1, 7, make(schedule).steps_per_epoch + 3, steps - 2):
        first = make(schedule)
        head = stream(first, cut)
        resumed = make(schedule, position=first.position)  # what a checkpoint saves
        assert head + stream(resumed, steps - cut) == reference, cut


@pytest.mark.parametrize("schedule", ["shuffled", "proportional"])
def test_seed_changes_the_order(schedule):
    assert stream(make(schedule, seed=0), 20) != stream(make(schedule, seed=1), 20)


def test_plans():
    batches = {"sst": 5, "quora": 12, "sts": 2}
    assert epoch_plan("sequential", batches, 0, 0) == [("sst",)] * 5 + [("quora",)] * 12 + [("sts",)] * 2
    assert epoch_plan("round_robin", batches, 0, 0)[:4] == [("sst",), ("quora",), ("sts",), ("sst",)]
    assert len(epoch_plan("round_robin", batches, 0, 0)) == 36
    assert epoch_plan("together", batches, 0, 3) == [("sst", "quora", "sts")] * 12
    shuffled = epoch_plan("shuffled", batches, 0, 0)
    assert sorted(shuffled) == sorted(epoch_plan("sequential", batches, 0, 0))
    assert shuffled != epoch_plan("shuffled", batches, 0, 1)  # a new order each epoch


def test_proportional_sampling_follows_the_sizes():
    batches = {"a": 10, "b": 30, "c": 60}
    counts = collections.Counter(t for e in range(30) for (t,) in epoch_plan("proportional", batches, 3, e))
    total = sum(counts.values())
    for name, size in batches.items():
        assert counts[name] / total == pytest.approx(size / 100, abs=0.02)


def test_every_example_once_per_task_epoch():
    batches = make("sequential")
    seen = collections.defaultdict(list)
    for batch in stream(batches, batches.steps_per_epoch):
        for key, values in batch.items():
            if key.endswith("/ids"):
                seen[key].extend(values)
    assert len(seen["quora/ids"]) == 24 and len(set(seen["quora/ids"])) == 24  # 12 batches of 2, no repeats
    assert {k.split("/")[0] for k in seen} == set(SIZES)
