"""One device, a data mesh, a data x fsdp mesh and pmap train to the same parameters (8 simulated CPUs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

# Runs in a subprocess: the device count must be fixed before jax starts.
SCRIPT = r"""
import json, sys
import jax, numpy as np, optax
from qajax import tree
from qajax.tasks.synthetic import generate
from qajax.train.parallel import Parallel, PMAP_AXIS
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from tests.train.tiny import tiny_task

assert jax.device_count() == 8, jax.devices()
task = tiny_task(0.0)  # no dropout: pmap draws its masks per device, the mesh globally
tx = optax.sgd(0.1, momentum=0.9)  # linear in the gradient, so float noise is not amplified as by Adam
data = generate(4 * 32, 16, 64, 4, seed=0)
batches = [{k: v[i * 32:(i + 1) * 32] for k, v in data.items()} for i in range(4)]
make_state = lambda p: TrainState.create(p, tx, seed=0)

def run(mode, data_axis=-1, fsdp=1, accumulation=1):
    parallel = Parallel(mode, data_axis, fsdp, fsdp_min_size=256, accumulation_steps=accumulation)
    abstract = parallel.abstract_state(make_state, task.initial_params)
    step = make_train_step(task.loss_fn, tx, accumulation_steps=accumulation,
                           axis_name=PMAP_AXIS if mode == "pmap" else None)
    step = parallel.compile_step(step, abstract)
    state = parallel.create_state(make_state, task.initial_params)
    losses = []
    for batch in batches:
        if accumulation > 1:
            batch = jax.tree.map(lambda x: x.reshape((accumulation, -1) + x.shape[1:]), batch)
        state, metrics = step(state, parallel.place_batch(batch))
        losses.append(parallel.metrics_to_host(metrics)["train/loss"])
    params = jax.device_get(parallel.single_copy(state).params)
    sharded = sum(len(leaf.sharding.spec) > 0 and any(leaf.sharding.spec)
                  for leaf in jax.tree.leaves(state.params)) if mode == "mesh" else 0
    return tree.flatten(params), losses, sharded

single_step = jax.jit(make_train_step(task.loss_fn, tx))
state = make_state(task.initial_params)
reference_losses = []
for batch in batches:
    state, metrics = single_step(state, batch)
    reference_losses.append(float(metrics["train/loss"]))
reference = tree.flatten(jax.device_get(state.params))

report = {}
for name, args in {"mesh-data8": ("mesh",), "mesh-data4-fsdp2": ("mesh", 4, 2), "pmap": ("pmap",),
                   "mesh-accumulate2": ("mesh", -1, 1, 2), "pmap-accumulate2": ("pmap", -1, 1, 2)}.items():
    params, losses, sharded = run(*args)
    report[name] = {
        "max_param_diff": max(float(np.abs(params[k] - reference[k]).max()) for k in reference),
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses, reference_losses)),
        "sharded_params": int(sharded),
    }
print("REPORT" + json.dumps(report))
"""


def test_single_device_mesh_fsdp_and_pmap_agree():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    print(json.dumps(report, indent=1))
    for name, values in report.items():
        # Sums are reduced in a different order on 8 devices: agreement to float32 rounding, not bitwise.
        assert values["max_param_diff"] < 1e-5, (name, values)
        assert values["max_loss_diff"] < 1e-5, (name, values)
    assert report["mesh-data4-fsdp2"]["sharded_params"] > 0  # fsdp really shards something
    assert report["mesh-data8"]["sharded_params"] == 0
    assert np.isfinite([v["max_param_diff"] for v in report.values()]).all()
