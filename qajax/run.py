"""The one composition point: `prepare(config)` builds the task, applies the techniques, and builds the
optimizer, the state, the step and the evaluator, once. `qajax train`, `compile`, the demo and the Python API
start here; the engine below (`qajax.train`) gets the result and knows no task and no technique.

The order in which techniques apply is stated in `qajax.techniques.apply_techniques`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import jax

from qajax.errors import ConfigError
from qajax.tasks import build_task, build_task_for_shapes
from qajax.techniques import apply_techniques, build_techniques
from qajax.train import optim
from qajax.train.evaluator import Evaluator
from qajax.train.parallel import PMAP_AXIS, Parallel, init_distributed
from qajax.train.state import TrainState
from qajax.train.step import make_train_step
from qajax.train.task import Task


def resolve_steps(train_config, steps_per_epoch: int) -> int:
    """train.steps, or train.epochs converted to steps (durations become steps before the loop)."""
    if train_config.steps > 0 and train_config.epochs > 0:
        raise ConfigError("set train.steps or train.epochs, not both")
    if train_config.steps > 0:
        return int(train_config.steps)
    if train_config.epochs > 0:
        return max(1, math.ceil(train_config.epochs * steps_per_epoch))
    raise ConfigError("one of train.steps or train.epochs must be positive")


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built once from a config; `qajax.train.loop.train` consumes it."""

    config: object  # the resolved ConfigDict
    task: Task  # with the techniques applied (prepared params, wrapped forward and predict)
    parallel: Parallel
    tx: object  # optax.GradientTransformation
    schedule: Callable  # step -> learning rate
    total_steps: int
    steps_per_epoch: int
    iterator_args: dict  # BatchIterator's arguments (global batch, seed, processes, accumulation, bucketing)
    make_state: Callable  # params -> TrainState
    abstract_state: object  # TrainState of ShapeDtypeStructs with shardings
    train_step: Callable  # (state, batch) -> (state, metrics), not yet compiled

    def compiled_step(self):
        return self.parallel.compile_step(self.train_step, self.abstract_state)

    def evaluator(self) -> Evaluator | None:
        task = self.task
        if task.predict_fn is None or (task.eval_arrays is None and not task.eval_sets):
            return None
        param_shardings = self.parallel.param_shardings(self.abstract_state)
        return Evaluator(task, self.parallel, self.config.train.eval_batch_size, param_shardings)


def make_parallel(config, devices=None) -> Parallel:
    """The parallel layout of `config.parallel`, checked against the batch before any data is read.
    `train.per_device_batch_size` becomes `train.batch_size` here, so the config a run saves holds both."""
    t, p = config.train, config.parallel
    parallel = Parallel(p.mode, p.data, p.fsdp, p.fsdp_min_size, t.accumulation_steps, devices=devices)
    if t.per_device_batch_size > 0:
        t.batch_size = t.per_device_batch_size * parallel.num_batch_shards * t.accumulation_steps
    if t.batch_size % (parallel.num_batch_shards * t.accumulation_steps):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must divide into {parallel.num_batch_shards} devices x "
            f"train.accumulation_steps={t.accumulation_steps}"
        )
    if t.length_bucket < 0:
        raise ConfigError(f"train.length_bucket={t.length_bucket}: expected 0 (off) or a positive multiple")
    return parallel


def start_processes(config) -> None:
    """`jax.distributed` for a multi-host run (once per process, before any device is looked at)."""
    p = config.parallel
    init_distributed(
        p.coordinator_address or None, p.num_processes or None, p.process_id if p.process_id >= 0 else None
    )


def prepare(config, *, parallel: Parallel | None = None) -> Prepared:
    """Builds a run from its config: processes and devices (unless `parallel` was made already), task,
    techniques, optimizer, state and step."""
    if parallel is None:
        start_processes(config)
        parallel = make_parallel(config)
    task = build_task(config)
    iterator_args = dict(
        global_batch_size=config.train.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        accumulation_steps=config.train.accumulation_steps,
    )
    if config.train.length_bucket:
        iterator_args["length_bucket"] = config.train.length_bucket
    steps_per_epoch = task.train_batches(**iterator_args).steps_per_epoch
    return _assemble(config, task, parallel, iterator_args, steps_per_epoch)


def prepare_for_shapes(config, devices) -> tuple[Prepared, Callable]:
    """`prepare` for devices that are not here (a TPU topology, a GPU description): the same task, techniques,
    optimizer, state and step, built from shapes alone (no data, no weights). Returns the run and
    `batch_shapes(num_examples)`, one batch's ShapeDtypeStructs. A duration in epochs counts one step each."""
    parallel = make_parallel(config, devices=devices)
    task, batch_shapes = build_task_for_shapes(config)
    iterator_args = dict(global_batch_size=config.train.batch_size, seed=config.seed)
    return _assemble(config, task, parallel, iterator_args, steps_per_epoch=1), batch_shapes


def _assemble(config, task: Task, parallel: Parallel, iterator_args: dict, steps_per_epoch: int) -> Prepared:
    """Techniques, optimizer, state and step around a built task (the part `prepare` and
    `prepare_for_shapes` share)."""
    t = config.train
    techniques = build_techniques(config, task)
    task, optimizer_config, init_extras = apply_techniques(task, techniques, config.optimizer)
    total_steps = resolve_steps(t, steps_per_epoch)
    tx, schedule = optim.make_optimizer(
        optimizer_config, task.initial_params, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    fp16 = task.spec.encoder.dtype == "float16"

    def make_state(params):
        return TrainState.create(params, tx, seed=config.seed, extras=init_extras(params), fp16=fp16)

    train_step = make_train_step(
        task.loss_fn,
        tx,
        schedule=schedule,
        techniques=techniques,
        accumulation_steps=t.accumulation_steps,
        axis_name=PMAP_AXIS if parallel.mode == "pmap" else None,
    )
    return Prepared(
        config=config,
        task=task,
        parallel=parallel,
        tx=tx,
        schedule=schedule,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        iterator_args=iterator_args,
        make_state=make_state,
        abstract_state=parallel.abstract_state(make_state, task.initial_params),
        train_step=train_step,
    )


def train(config, workdir: str | Path, *, allow_config_change: bool = False) -> dict:
    """Trains a config to its end in `workdir`, resuming from the workdir's latest checkpoint; a resume that
    would change what the run computes is refused before anything is built, unless `allow_config_change`
    (`qajax.train.resume`)."""
    from qajax.train.loop import train as train_prepared
    from qajax.train.resume import check_resume

    start_processes(config)
    parallel = make_parallel(config)  # resolves the batch as the saved config.json has it
    check_resume(config, workdir, allow_changes=allow_config_change)
    return train_prepared(prepare(config, parallel=parallel), workdir)
