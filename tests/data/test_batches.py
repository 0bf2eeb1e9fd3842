import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from qajax.data.batches import BatchIterator, Position, eval_batches, prefetch_to_device

NUM_EXAMPLES, SEQ = 26, 5


def dataset(num_examples=NUM_EXAMPLES):
    # `index` names each row, so a batch's rows can be checked against numpy's permutation directly.
    index = np.arange(num_examples, dtype=np.int32)  # int32: jax without x64 would narrow int64 on device
    return {
        "index": index,
        "input_ids": (index[:, None] * 100 + np.arange(SEQ)).astype(np.int32),  # [N, seq]
        "start_positions": (index % SEQ).astype(np.int32),  # [N]
    }


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.keys() == e.keys()
        for key in e:
            assert a[key].dtype == e[key].dtype
            np.testing.assert_array_equal(a[key], e[key])


def test_epoch_order_is_numpy_permutation_of_seed_and_epoch():
    it = BatchIterator(dataset(), global_batch_size=4, seed=7)
    assert it.steps_per_epoch == NUM_EXAMPLES // 4  # 6; the last 2 examples of each epoch are dropped
    for epoch in range(3):
        seen = np.concatenate([b["index"] for b in take(it, it.steps_per_epoch)])
        expected = np.random.default_rng([7, epoch]).permutation(NUM_EXAMPLES)[: 6 * 4]
        np.testing.assert_array_equal(seen, expected)
    assert it.position == Position(3, 0)
    batch = next(BatchIterator(dataset(), global_batch_size=4, seed=7, shuffle=False))
    np.testing.assert_array_equal(batch["index"], [0, 1, 2, 3])
    np.testing.assert_array_equal(batch["input_ids"], dataset()["input_ids"][:4])


def test_restart_at_saved_position_continues_bitwise():
    uninterrupted = BatchIterator(dataset(), global_batch_size=4, seed=3)
    take(uninterrupted, 7)  # crosses the boundary after batch 6
    saved = json.loads(json.dumps(uninterrupted.position.to_json()))
    assert saved == {"epoch": 1, "batch_in_epoch": 1}
    restarted = BatchIterator(dataset(), global_batch_size=4, seed=3, position=Position.from_json(saved))
    assert_batches_equal(take(restarted, 10), take(uninterrupted, 10))


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_process_shares_concatenate_to_the_global_batch(process_count, accumulation_steps):
    config = dict(global_batch_size=8, seed=5, accumulation_steps=accumulation_steps, position=Position(2, 1))
    reference = take(BatchIterator(dataset(), **config), 5)
    shares = [
        take(BatchIterator(dataset(), process_index=p, process_count=process_count, **config), 5)
        for p in range(process_count)
    ]
    batch_axis = 0 if accumulation_steps == 1 else 1  # with accumulation, micro-batch j is sharded on axis 1
    joined = [
        {key: np.concatenate([s[step][key] for s in shares], axis=batch_axis) for key in reference[0]}
        for step in range(5)
    ]
    assert_batches_equal(joined, reference)


def test_accumulation_splits_the_batch_into_micro_batches_in_order():
    plain = take(BatchIterator(dataset(), global_batch_size=8, seed=1), 4)
    split = take(BatchIterator(dataset(), global_batch_size=8, seed=1, accumulation_steps=4), 4)
    assert split[0]["input_ids"].shape == (4, 2, SEQ) and split[0]["start_positions"].shape == (4, 2)
    merged = [{key: value.reshape(-1, *value.shape[2:]) for key, value in b.items()} for b in split]
    assert_batches_equal(merged, plain)


def test_keep_remainder_wraps_to_the_start_of_the_epoch():
    it = BatchIterator(dataset(10), global_batch_size=4, seed=0, drop_remainder=False)
    assert it.steps_per_epoch == 3
    order = np.random.default_rng([0, 0]).permutation(10)
    epoch = np.concatenate([b["index"] for b in take(it, 3)])
    np.testing.assert_array_equal(epoch, np.concatenate([order, order[:2]]))
    assert it.position == Position(1, 0)
    # A dataset smaller than one batch still fills it, when nothing is dropped.
    small = next(BatchIterator(dataset(3), global_batch_size=8, seed=0, shuffle=False, drop_remainder=False))
    np.testing.assert_array_equal(small["index"], [0, 1, 2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize(
    "arrays, kwargs, message",
    [
        (dataset(), dict(global_batch_size=6, process_count=4), "global_batch_size 6 .* process_count 4"),
        (
            dataset(),
            dict(global_batch_size=8, process_count=2, accumulation_steps=3),
            "batch 4 .* accumulation_steps 3",
        ),
        (dataset(), dict(global_batch_size=8, process_index=2, process_count=2), "process_index 2"),
        (dataset(5), dict(global_batch_size=8), "5 examples.* 8"),
        (dataset(), dict(global_batch_size=4, position=Position(0, 6)), "epochs of 6 batches"),
        (
            {"input_ids": np.zeros((4, 2)), "labels": np.zeros(3)},
            dict(global_batch_size=2),
            "'input_ids': 4, 'labels': 3",
        ),
    ],
)
def test_invalid_configurations_name_the_numbers(arrays, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchIterator(arrays, seed=0, **kwargs)


def test_eval_batches_cover_every_example_once_with_padding_weighted_zero():
    batches = list(eval_batches(dataset(10), batch_size=4))
    assert [b["input_ids"].shape for b in batches] == [(4, SEQ)] * 3
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), list(range(10)) + [0, 0])
    np.testing.assert_array_equal(batches[-1]["example_weight"], [1, 1, 0, 0])
    assert batches[-1]["example_weight"].dtype == np.float32
    real = np.concatenate([b["start_positions"][b["example_weight"] == 1] for b in batches])
    np.testing.assert_array_equal(real, dataset(10)["start_positions"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_eval_shares_concatenate_to_the_global_batch(process_count):
    reference = list(eval_batches(dataset(10), batch_size=8))
    shares = [
        list(eval_batches(dataset(10), batch_size=8, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    assert {len(s) for s in shares} == {len(reference)}  # same count on every host, or collectives hang
    joined = [{key: np.concatenate([s[i][key] for s in shares]) for key in reference[0]} for i in range(len(reference))]
    assert_batches_equal(joined, reference)


def test_prefetch_round_trips_values_in_order():
    expected = list(eval_batches(dataset(10), batch_size=4))
    fetched = list(prefetch_to_device(eval_batches(dataset(10), batch_size=4), size=2))
    assert all(isinstance(v, jax.Array) for b in fetched for v in b.values())
    assert_batches_equal([jax.device_get(b) for b in fetched], expected)
    endless = prefetch_to_device(BatchIterator(dataset(), global_batch_size=4, seed=2), size=3)
    assert_batches_equal(
        jax.device_get(take(endless, 8)), take(BatchIterator(dataset(), global_batch_size=4, seed=2), 8)
    )
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetch_to_device(iter([]), size=0))


SHARDED = """
import json
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from qajax.data.batches import BatchIterator, make_global_array, prefetch_to_device
from tests.data.test_batches import dataset

mesh = jax.make_mesh((8,), ("data",))
report = {"devices": jax.device_count()}
for name, steps, spec in [("plain", 1, PartitionSpec("data")), ("accumulated", 2, PartitionSpec(None, "data"))]:
    config = dict(global_batch_size=16, seed=4, accumulation_steps=steps)
    batch = next(prefetch_to_device(BatchIterator(dataset(), **config), sharding=NamedSharding(mesh, spec)))
    expected = next(BatchIterator(dataset(), **config))
    ids = batch["input_ids"]
    report[name] = {
        "equal": all(np.array_equal(np.asarray(batch[k]), expected[k]) for k in expected),
        "spec": [str(ids.sharding.spec[i]) for i in range(len(ids.sharding.spec))],
        "shard_shape": list(ids.sharding.shard_shape(ids.shape)),
        "shard_devices": len({s.device for s in ids.addressable_shards}),
    }
# The multi-host path, run here with one process: its local rows are the whole global batch.
local = next(BatchIterator(dataset(), global_batch_size=16, seed=4))
made = make_global_array(NamedSharding(mesh, PartitionSpec("data")), local)
report["global_equal"] = all(np.array_equal(np.asarray(made[k]), local[k]) for k in local)
print(json.dumps(report))
"""


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_python(code, *args, devices):
    """A fresh interpreter with `devices` simulated CPU devices (the flag must precede importing jax)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_json_line(process):
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def test_prefetch_shards_the_batch_axis_over_eight_simulated_devices():
    report = last_json_line(start_python(SHARDED, devices=8))
    assert report["devices"] == 8
    assert report["plain"] == {"equal": True, "spec": ["data"], "shard_shape": [2, SEQ], "shard_devices": 8}
    assert report["accumulated"] == {
        "equal": True,
        "spec": ["None", "data"],
        "shard_shape": [2, 1, SEQ],
        "shard_devices": 8,
    }
    assert report["global_equal"]


TWO_HOSTS = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from qajax.data.batches import BatchIterator, Position, prefetch_to_device
from tests.data.test_batches import dataset

mesh = jax.make_mesh((jax.device_count(),), ("data",))
replicate = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))
report = {"devices": jax.device_count()}
for steps, spec in [(1, PartitionSpec("data")), (2, PartitionSpec(None, "data"))]:
    config = dict(global_batch_size=8, seed=4, accumulation_steps=steps, position=Position(1, 2))
    local = BatchIterator(dataset(), process_index=jax.process_index(), process_count=jax.process_count(), **config)
    batches = prefetch_to_device(local, sharding=NamedSharding(mesh, spec))
    single_host = BatchIterator(dataset(), **config)  # crosses into epoch 2 within the 4 batches compared
    report[steps] = all(
        np.array_equal(np.asarray(replicate(value)), expected[key])
        for batch, expected in zip(batches, [next(single_host) for _ in range(4)], strict=False)
        for key, value in batch.items()
    )
print(json.dumps(report))
"""


def test_two_processes_build_the_single_process_global_batch():
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    hosts = [start_python(TWO_HOSTS, index, port, devices=2) for index in range(2)]
    reports = [last_json_line(host) for host in hosts]
    assert reports == [{"devices": 4, "1": True, "2": True}] * 2
