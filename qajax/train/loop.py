"""The one training loop. It gets a prepared run (`qajax.run.prepare`) and knows no task and no technique:
set-up -> restore -> steps with logging, evaluation and checkpoints -> final save."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax

from qajax import config as config_lib
from qajax.data.batches import Position
from qajax.errors import ConfigError
from qajax.files import atomic_write_text
from qajax.models.spec import SPEC_FILE
from qajax.train.banner import start_banner
from qajax.train.checkpoint import Checkpoints
from qajax.train.logs import MetricLogger

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"


class EarlyStopping:
    def __init__(self, metric: str, mode: str, patience: int):
        if mode not in ("max", "min"):
            raise ConfigError(f"train.early_stopping_mode={mode!r}: expected 'max' or 'min'")
        self.metric, self.sign, self.patience = metric, (1.0 if mode == "max" else -1.0), patience
        self.best, self.bad_evals = -math.inf, 0

    def state(self) -> dict:
        """What a checkpoint keeps so that a resumed run stops where an uninterrupted one would."""
        return {"best": None if self.best == -math.inf else self.best, "bad_evals": self.bad_evals}

    def restore(self, saved: dict | None) -> None:
        if saved:
            self.best = -math.inf if saved["best"] is None else saved["best"]
            self.bad_evals = saved["bad_evals"]

    @property
    def active(self) -> bool:
        return bool(self.metric) and self.patience > 0

    def should_stop(self, metrics: dict) -> bool:
        if not self.active:
            return False
        if self.metric not in metrics:
            raise ConfigError(f"train.early_stopping_metric={self.metric!r} is not among {sorted(metrics)}")
        value = self.sign * metrics[self.metric]
        if value > self.best:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience


def train(prepared, workdir: str | Path) -> dict:
    """Trains a prepared run to its total steps, resuming from the latest checkpoint in `workdir` if any."""
    workdir = Path(workdir)
    config, task, parallel = prepared.config, prepared.task, prepared.parallel
    t = config.train
    is_main = jax.process_index() == 0

    checkpoints = open_checkpoints(config.checkpoint, workdir / CHECKPOINT_DIR)
    stopper = EarlyStopping(t.early_stopping_metric, t.early_stopping_mode, t.patience)
    start_step, state, position = restore_or_create(prepared, checkpoints, stopper)
    if is_main:
        sizes = dict(
            batch_size=t.batch_size, accumulation_steps=t.accumulation_steps, steps_per_epoch=prepared.steps_per_epoch
        )
        log.info("%s", start_banner(parallel, total_steps=prepared.total_steps, start_step=start_step, **sizes))
        workdir.mkdir(parents=True, exist_ok=True)
        config_lib.save(config, workdir)
        atomic_write_text(workdir / SPEC_FILE, task.spec.to_json() + "\n")

    step_fn = prepared.compiled_step()
    evaluator = prepared.evaluator()
    batches = parallel.prefetch(task.train_batches(position=position, **prepared.iterator_args), t.prefetch)
    logger = MetricLogger(
        workdir,
        is_main_process=is_main,
        total_steps=prepared.total_steps,
        tensorboard=config.log.tensorboard,
        progress=config.log.progress,
        resume_step=start_step,
    )
    summary: dict = {"start_step": start_step}
    with logger:
        if evaluator is not None and t.eval_at_start and start_step == 0:
            summary["initial"] = evaluator(state.params)
            logger.write(0, summary["initial"])
        parts = RunParts(prepared, step_fn, evaluator, logger, checkpoints, stopper)
        step = run_steps(parts, state, start_step, batches, summary)
    checkpoints.wait()
    checkpoints.close()
    summary.update(final_step=step, total_steps=prepared.total_steps, workdir=str(workdir))
    summary["compilations"] = parallel.compilations(step_fn)
    return summary


def open_checkpoints(c, directory: Path) -> Checkpoints:
    return Checkpoints(
        directory,
        every_steps=c.every_steps,
        keep_last=c.keep_last,
        best_metric=c.best_metric or None,
        best_mode=c.best_mode,
        keep_best=c.keep_best,
        asynchronous=c.asynchronous,
    )


def restore_or_create(prepared, checkpoints: Checkpoints, stopper: EarlyStopping):
    """(start step, state on the devices, data position): the latest checkpoint's, or a new state built
    where it lives."""
    parallel = prepared.parallel
    start_step = checkpoints.latest_step() or 0
    if not start_step:
        return 0, parallel.create_state(prepared.make_state, prepared.task.initial_params), Position(0, 0)
    restored, data_position = checkpoints.restore(start_step, prepared.abstract_state)
    position = Position.from_json(data_position)
    stopper.restore(data_position.get("early_stopping"))
    return start_step, parallel.place_state(restored), position


@dataclasses.dataclass
class RunParts:
    prepared: object  # qajax.run.Prepared
    step_fn: object  # the compiled step
    evaluator: object  # Evaluator or None
    logger: MetricLogger
    checkpoints: Checkpoints
    stopper: EarlyStopping


def run_steps(parts: RunParts, state, step: int, batches, summary: dict) -> int:
    """The steps from `step` to the end (or an early stop); returns the last step taken."""
    prepared, step_fn, evaluator, logger = parts.prepared, parts.step_fn, parts.evaluator, parts.logger
    checkpoints, stopper = parts.checkpoints, parts.stopper
    t, task, parallel = prepared.config.train, prepared.task, prepared.parallel
    throughput = Throughput()
    last_eval: dict = {}
    while step < prepared.total_steps:
        batch = next(batches)
        throughput.add(*task.fed_size(batch, t.batch_size))
        state, metrics = step_fn(state, batch)
        del batch
        step += 1
        logger.advance(step)
        record = {}
        final = step == prepared.total_steps
        if step % t.log_every == 0 or final:
            record = parallel.metrics_to_host(metrics)  # the only sync with the devices
            record["loss"] = record["train/loss"]
            record.update(throughput.rates())
        eval_metrics = None
        if evaluator is not None and ((t.eval_every and step % t.eval_every == 0) or final):
            eval_metrics = evaluator(state.params)
            record.update(eval_metrics)
            for key in last_eval:  # the summary holds the latest evaluation alone (its keys may vary)
                summary.pop(key, None)
            summary.update(eval_metrics)
            last_eval = eval_metrics
        if record:
            summary.update(logger.write(step, record))
        stop = eval_metrics is not None and stopper.should_stop(eval_metrics)
        data_position = Position(step // prepared.steps_per_epoch, step % prepared.steps_per_epoch).to_json()
        if stopper.active:
            data_position["early_stopping"] = stopper.state()
        checkpoints.save(step, parallel.single_copy(state), data_position, eval_metrics, force=stop or final)
        if stop:
            log.info("early stopping at step %d: %s did not improve", step, t.early_stopping_metric)
            summary["early_stopped"] = True
            break
    return step


class Throughput:
    """Examples and tokens fed since the last log line, as rates. A task's count of examples may be a device
    scalar (packed rows count their windows on the device): they are fetched together at `rates`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.since, self.examples, self.tokens = clock(), [], 0

    def add(self, examples, tokens: int) -> None:
        self.examples.append(examples)
        self.tokens += tokens

    def rates(self) -> dict[str, float]:
        elapsed = self.clock() - self.since
        examples = float(sum(jax.device_get(self.examples)))
        rates = {"examples_per_sec": examples / elapsed, "tokens_per_sec": self.tokens / elapsed}
        self.since, self.examples, self.tokens = self.clock(), [], 0
        return rates
