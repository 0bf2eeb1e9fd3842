"""Where the step runs: a `jax.jit` over a device mesh (default) or `jax.pmap`, and multi-host set-up.

Mesh mode: a ("data", "fsdp") mesh over all devices of all processes. The batch is split over both axes;
parameters and optimizer state are replicated, or with fsdp > 1 sharded along their largest divisible
axis over "fsdp" (ZeRO-3 style: XLA gathers them for the matmuls). The step is jitted once with explicit
in/out shardings and the state donated.

Pmap mode: the state is replicated on the local devices, the batch gets a leading device axis, and the
step sums gradients with `lax.psum` over the axis "batch" (see `make_train_step(axis_name=...)`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from qajax.data.batches import make_global_array, prefetch_to_device
from qajax.errors import ConfigError

log = logging.getLogger(__name__)
PMAP_AXIS = "batch"
BATCH_AXES = ("data", "fsdp")


def init_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`jax.distributed.initialize` from config values, else from QAJAX_COORDINATOR / QAJAX_NUM_PROCESSES /
    QAJAX_PROCESS_ID; with neither, a single-process run (TPU pods and SLURM are detected by jax itself when
    QAJAX_AUTO_DISTRIBUTED=1)."""
    address = coordinator_address or os.environ.get("QAJAX_COORDINATOR")
    if address:
        count = num_processes or int(os.environ["QAJAX_NUM_PROCESSES"])
        index = process_id if process_id is not None else int(os.environ["QAJAX_PROCESS_ID"])
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)
    elif os.environ.get("QAJAX_AUTO_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    if jax.process_count() > 1:
        log.info(
            "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
        )


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: every device of every process)."""
    devices = np.array(jax.devices() if devices is None else devices)
    if data == -1:
        if devices.size % fsdp:
            raise ConfigError(f"parallel.fsdp={fsdp} does not divide the {devices.size} devices")
        data = devices.size // fsdp
    if data * fsdp != devices.size:
        raise ConfigError(f"parallel.data={data} x parallel.fsdp={fsdp} != {devices.size} devices")
    return Mesh(devices.reshape(data, fsdp), BATCH_AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Shard the largest axis divisible by `fsdp` (arrays smaller than `min_size` stay replicated)."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


@dataclasses.dataclass
class Parallel:
    """Places the state and batches and compiles the step for one of the two modes."""

    mode: str = "mesh"  # "mesh" | "pmap"
    data: int = -1
    fsdp: int = 1
    fsdp_min_size: int = 2**14
    accumulation_steps: int = 1
    # None: this run's devices. A device list of an absent target (a TPU topology, an H100 description)
    # lets `qajax compile` build the same step ahead of time; such a layout compiles but never runs.
    devices: list | None = None

    def __post_init__(self):
        if self.mode not in ("mesh", "pmap"):
            raise ConfigError(f"parallel.mode={self.mode!r}: expected 'mesh' or 'pmap'")
        if self.mode == "pmap" and self.process_count > 1:
            raise ConfigError("parallel.mode='pmap' is single-host; use 'mesh' on several hosts")
        self.mesh = make_mesh(self.data, self.fsdp, self.devices) if self.mode == "mesh" else None

    @property
    def all_devices(self) -> list:
        return jax.devices() if self.devices is None else list(self.devices)

    @property
    def local_devices(self) -> list:
        """This process's devices (of a target: those of process 0, as its first host would see them)."""
        if self.devices is None:
            return jax.local_devices()
        return [d for d in self.devices if d.process_index == 0]

    @property
    def process_count(self) -> int:
        return jax.process_count() if self.devices is None else len({d.process_index for d in self.devices})

    @property
    def num_batch_shards(self) -> int:
        return len(self.all_devices) if self.mode == "mesh" else len(self.local_devices)

    # -- state ----------------------------------------------------------------------------------------

    def state_shardings(self, abstract_state):
        fsdp = self.mesh.shape["fsdp"]
        return jax.tree.map(
            lambda leaf: NamedSharding(self.mesh, fsdp_spec(tuple(leaf.shape), fsdp, self.fsdp_min_size)),
            abstract_state,
        )

    def create_state(self, make_state, *args):
        """Runs `make_state(*args)` so that the state is born where it will live (no host copy)."""
        if self.mode == "pmap":
            return self.place_state(jax.device_get(jax.jit(make_state)(*args)))
        shardings = self.state_shardings(jax.eval_shape(make_state, *args))
        return jax.jit(make_state, out_shardings=shardings)(*args)

    def place_state(self, host_state):
        """A state restored or built on the host, moved to the devices."""
        if self.mode == "pmap":
            n = jax.local_device_count()
            return _per_device(jax.tree.map(lambda x: np.broadcast_to(x, (n,) + np.shape(x)), host_state))
        return jax.device_put(host_state, self.state_shardings(host_state))

    def single_copy(self, state):
        """The state as one logical copy (what checkpoints and exports see)."""
        return jax.tree.map(lambda x: x[0], state) if self.mode == "pmap" else state

    # -- batches --------------------------------------------------------------------------------------

    def batch_sharding(self, accumulation_steps: int | None = None):
        if self.mode == "pmap":
            return None
        accumulation_steps = self.accumulation_steps if accumulation_steps is None else accumulation_steps
        spec = P(BATCH_AXES) if accumulation_steps == 1 else P(None, BATCH_AXES)
        return NamedSharding(self.mesh, spec)

    def place_batch(self, local_batch: dict, accumulation_steps: int | None = None):
        """This process's batch (numpy) onto the devices, split over the batch axis."""
        accumulation_steps = self.accumulation_steps if accumulation_steps is None else accumulation_steps
        if self.mode == "mesh":
            return make_global_array(self.batch_sharding(accumulation_steps), local_batch)
        devices = jax.local_devices()
        axis = 0 if accumulation_steps == 1 else 1

        def split(x):  # [..., batch, ...] -> [devices, ..., batch / devices, ...]
            if x.shape[axis] % len(devices):
                raise ValueError(f"batch axis {x.shape[axis]} is not divisible by {len(devices)} local devices")
            x = x.reshape(x.shape[:axis] + (len(devices), -1) + x.shape[axis + 1 :])
            return np.moveaxis(x, axis, 0)

        return _per_device({k: split(v) for k, v in local_batch.items()})

    def prefetch(self, iterator, size: int):
        return prefetch_to_device(iterator, size, put=self.place_batch)

    def gather_outputs(self, outputs) -> dict[str, np.ndarray]:
        """Per-example outputs of a predict call as host arrays in global batch order."""
        outputs = jax.device_get(outputs)
        if self.mode == "pmap":
            outputs = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), outputs)
        return {k: np.asarray(v) for k, v in outputs.items()}

    # -- the step -------------------------------------------------------------------------------------

    def abstract_state(self, make_state, *args):
        """Shapes, dtypes and shardings of `make_state(*args)` (what a checkpoint restores into)."""
        shapes = jax.eval_shape(make_state, *args)
        if self.mode == "pmap":
            device = jax.sharding.SingleDeviceSharding(self.local_devices[0])
            shardings = jax.tree.map(lambda _: device, shapes)
        else:
            shardings = self.state_shardings(shapes)
        return jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d), shapes, shardings)

    def param_shardings(self, abstract_state):
        return None if self.mode == "pmap" else jax.tree.map(lambda s: s.sharding, abstract_state.params)

    def compile_predict(self, predict_fn, param_shardings):
        if self.mode == "pmap":
            return jax.pmap(predict_fn)
        replicated = NamedSharding(self.mesh, P())
        jitted = jax.jit(predict_fn, in_shardings=(param_shardings, self.batch_sharding(1)), out_shardings=replicated)
        return UnderMesh(jitted, self.mesh)

    @staticmethod
    def compilations(compiled_fn) -> int | None:
        """How many times a jitted function compiled (1: no recompilation); None for pmap (not exposed)."""
        return compiled_fn._cache_size() if hasattr(compiled_fn, "_cache_size") else None

    def compile_step(self, step_fn, abstract_state):
        if self.mode == "pmap":
            return jax.pmap(step_fn, axis_name=PMAP_AXIS, donate_argnums=0)
        state_shardings = jax.tree.map(lambda s: s.sharding, abstract_state)
        replicated = NamedSharding(self.mesh, P())
        jitted = jax.jit(
            step_fn,
            in_shardings=(state_shardings, self.batch_sharding()),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )
        return UnderMesh(jitted, self.mesh)

    def metrics_to_host(self, metrics) -> dict:
        """One transfer for the whole dict, at log intervals only."""
        metrics = jax.device_get(metrics)
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)  # identical on every device after psum
        return {k: np.asarray(v).item() for k, v in metrics.items()}


class UnderMesh:
    """A jitted function traced with its mesh as the context mesh: kernels that cannot be partitioned
    automatically (Pallas TPU attention) then run per device over the mesh's batch axes."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
            return self.jitted(*args)  # called inside another trace (the bench's jit): the mesh is the caller's
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args)

    def _cache_size(self) -> int:
        return self.jitted._cache_size()


def _per_device(stacked):
    """Host arrays with a leading [local devices] axis -> one slice on each local device (pmap's input)."""
    devices = np.array(jax.local_devices())
    sharding = NamedSharding(Mesh(devices, ("local",)), P("local"))
    return jax.device_put(stacked, sharding)
