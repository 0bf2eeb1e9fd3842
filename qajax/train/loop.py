"""The one training loop. It knows no task and no technique: it gets them from `build_task` and the
step, and does set-up -> restore -> steps with logging, evaluation and checkpoints -> final save."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import jax
import numpy as np

from qajax import config as config_lib
from qajax.data.batches import Position, eval_batches
from qajax.errors import ConfigError
from qajax.files import atomic_write_text
from qajax.models.saved import SPEC_FILE
from qajax.tasks.base import Task, build_task
from qajax.tasks.span import LABELS
from qajax.techniques import apply_techniques, build_techniques
from qajax.train import optim
from qajax.train.banner import start_banner
from qajax.train.checkpoint import Checkpoints
from qajax.train.logs import MetricLogger
from qajax.train.parallel import PMAP_AXIS, Parallel, init_distributed
from qajax.train.resume import check_resume
from qajax.train.state import TrainState
from qajax.train.step import make_train_step

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"


def resolve_steps(train_config, steps_per_epoch: int) -> int:
    """train.steps, or train.epochs converted to steps (durations become steps before the loop)."""
    if train_config.steps > 0 and train_config.epochs > 0:
        raise ConfigError("set train.steps or train.epochs, not both")
    if train_config.steps > 0:
        return int(train_config.steps)
    if train_config.epochs > 0:
        return max(1, math.ceil(train_config.epochs * steps_per_epoch))
    raise ConfigError("one of train.steps or train.epochs must be positive")


def fed_size(batch: dict, batch_size: int, tokens_per_example: int) -> tuple[int, int]:
    """(examples, tokens) of one step as fed: `batch_size` examples for every `input_ids` of the batch (a
    multitask batch of schedule "together" has one per task: `sst/input_ids`, ...), each at its own width
    (batches trimmed by length); a batch without one counts `batch_size` examples of `tokens_per_example`.
    Widths only: the placed arrays' leading axes differ by parallel mode, and a pair encoded apart
    ([N, 2, T]) counts one sentence."""
    widths = [v.shape[-1] for k, v in batch.items() if k == "input_ids" or k.endswith("/input_ids")]
    if not widths:
        return batch_size, batch_size * tokens_per_example
    return batch_size * len(widths), batch_size * sum(widths)


class Evaluator:
    """Runs `task.predict_fn` over the eval set on every device (last batch padded) and scores it."""

    def __init__(self, task: Task, parallel: Parallel, batch_size: int, param_shardings):
        self.task, self.parallel, self.batch_size = task, parallel, batch_size
        # labelled eval data: also report eval/loss
        self.with_loss = task.eval_arrays is not None and set(LABELS) <= set(task.eval_arrays)

        def predict(params, batch):
            outputs = task.predict_fn(params, batch)
            if not self.with_loss:
                return outputs, {}
            loss, aux = task.output_loss(task.forward(params, batch), batch)  # same forward: XLA shares it
            return outputs, {"loss_sum": loss * aux["weight"], "weight": aux["weight"]}

        self.predict = parallel.compile_predict(predict, param_shardings)

    def __call__(self, params) -> dict[str, float]:
        if self.task.eval_sets:  # several sets (one per task of a multitask run, or eval + dev), scored together
            predicted = {name: self._predict_all(params, arrays) for name, arrays in self.task.eval_sets.items()}
            metrics = self.task.evaluate({name: p[0] for name, p in predicted.items()}, self.task.eval_sets)
            if self.with_loss and "eval" in predicted:  # eval_arrays among the sets as "eval"
                metrics["eval/loss"] = predicted["eval"][1] / max(predicted["eval"][2], 1.0)
            return metrics
        joined, loss_sum, weight = self._predict_all(params, self.task.eval_arrays)
        metrics = self.task.evaluate(joined, self.task.eval_arrays)
        if self.with_loss:
            metrics["eval/loss"] = loss_sum / max(weight, 1.0)
        return metrics

    def _predict_all(self, params, arrays) -> tuple[dict[str, np.ndarray], float, float]:
        """(outputs of every example in order, summed eval loss, its weight)."""
        outputs = []
        batches = eval_batches(
            arrays,
            batch_size=self.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        loss_sum = weight = 0.0
        for batch in batches:
            predicted, loss_terms = self.predict(params, self.parallel.place_batch(batch, accumulation_steps=1))
            outputs.append(self.parallel.gather_outputs(predicted))
            if loss_terms:
                loss_terms = self.parallel.gather_outputs(loss_terms)  # pmap: one value per device
                loss_sum += float(np.sum(loss_terms["loss_sum"]))
                weight += float(np.sum(loss_terms["weight"]))
        num_examples = len(next(iter(arrays.values())))
        joined = {k: np.concatenate([o[k] for o in outputs])[:num_examples] for k in outputs[0]}
        return joined, loss_sum, weight


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


def train(config, workdir: str | Path, *, allow_config_change: bool = False) -> dict:
    """Trains to `train.steps`, resuming from the latest checkpoint in `workdir` if there is one (refused if
    `config` changes what the run computes, unless `allow_config_change`: `qajax.train.resume`)."""
    workdir = Path(workdir)
    check_resume(config, workdir, allow_changes=allow_config_change)
    t, p, c = config.train, config.parallel, config.checkpoint

    # -- processes, devices, task ---------------------------------------------------------------------
    init_distributed(
        p.coordinator_address or None, p.num_processes or None, p.process_id if p.process_id >= 0 else None
    )
    is_main = jax.process_index() == 0
    parallel = Parallel(p.mode, p.data, p.fsdp, p.fsdp_min_size, t.accumulation_steps)
    if t.batch_size % (parallel.num_batch_shards * t.accumulation_steps):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must divide into {parallel.num_batch_shards} devices x "
            f"train.accumulation_steps={t.accumulation_steps}"
        )
    task = build_task(config)
    techniques = build_techniques(config, task)
    task, optimizer_config, init_extras = apply_techniques(task, techniques, config.optimizer)

    # -- durations and optimizer ----------------------------------------------------------------------
    iterator_args = dict(
        global_batch_size=t.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        accumulation_steps=t.accumulation_steps,
    )
    length_bucket = t.get("length_bucket", 0)  # configs saved before the option have none
    if length_bucket < 0:
        raise ConfigError(f"train.length_bucket={length_bucket}: expected 0 (off) or a positive multiple")
    if length_bucket:
        iterator_args["length_bucket"] = length_bucket
    steps_per_epoch = task.train_batches(**iterator_args).steps_per_epoch
    total_steps = resolve_steps(t, steps_per_epoch)
    tx, schedule = optim.make_optimizer(
        optimizer_config, task.initial_params, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )

    # -- state: restored, or built where it lives -----------------------------------------------------
    fp16 = task.spec.encoder.dtype == "float16"
    make_state = lambda params: TrainState.create(params, tx, seed=config.seed, extras=init_extras(params), fp16=fp16)
    abstract_state = parallel.abstract_state(make_state, task.initial_params)
    checkpoints = Checkpoints(
        workdir / CHECKPOINT_DIR,
        every_steps=c.every_steps,
        keep_last=c.keep_last,
        best_metric=c.best_metric or None,
        best_mode=c.best_mode,
        keep_best=c.keep_best,
        asynchronous=c.asynchronous,
    )
    start_step = checkpoints.latest_step() or 0
    stopper = EarlyStopping(t.early_stopping_metric, t.early_stopping_mode, t.patience)
    if start_step:
        restored, data_position = checkpoints.restore(start_step, abstract_state)
        state = parallel.place_state(restored)
        position = Position.from_json(data_position)
        stopper.restore(data_position.get("early_stopping"))
    else:
        state = parallel.create_state(make_state, task.initial_params)
        position = Position(0, 0)
    if is_main:
        sizes = dict(batch_size=t.batch_size, accumulation_steps=t.accumulation_steps, steps_per_epoch=steps_per_epoch)
        log.info("%s", start_banner(parallel, total_steps=total_steps, start_step=start_step, **sizes))
        workdir.mkdir(parents=True, exist_ok=True)
        config_lib.save(config, workdir)
        atomic_write_text(workdir / SPEC_FILE, task.spec.to_json() + "\n")

    # -- compiled functions ---------------------------------------------------------------------------
    step_fn = make_train_step(
        task.loss_fn,
        tx,
        schedule=schedule,
        techniques=techniques,
        accumulation_steps=t.accumulation_steps,
        axis_name=PMAP_AXIS if p.mode == "pmap" else None,
    )
    step_fn = parallel.compile_step(step_fn, abstract_state)
    evaluator = None
    if task.predict_fn is not None and (task.eval_arrays is not None or task.eval_sets):
        evaluator = Evaluator(task, parallel, t.eval_batch_size, parallel.param_shardings(abstract_state))

    # -- the loop -------------------------------------------------------------------------------------
    batches = task.train_batches(position=position, **iterator_args)
    batches = parallel.prefetch(batches, t.prefetch)
    logger = MetricLogger(
        workdir,
        is_main_process=is_main,
        total_steps=total_steps,
        tensorboard=config.log.tensorboard,
        progress=config.log.progress,
        resume_step=start_step,
    )
    summary: dict = {"start_step": start_step}
    last_time = time.perf_counter()
    step = start_step
    with logger:
        if evaluator is not None and t.eval_at_start and start_step == 0:
            summary["initial"] = evaluator(state.params)
            logger.write(0, summary["initial"])
        last_eval: dict = {}
        examples = tokens = 0  # as fed to the step: batches trimmed by length count their own width
        while step < total_steps:
            batch = next(batches)
            fed_examples, fed_tokens = fed_size(batch, t.batch_size, task.tokens_per_example)
            examples, tokens = examples + fed_examples, tokens + fed_tokens
            state, metrics = step_fn(state, batch)
            del batch
            step += 1
            logger.advance(step)
            record = {}
            if step % t.log_every == 0 or step == total_steps:
                record = parallel.metrics_to_host(metrics)  # the only sync with the devices
                elapsed = time.perf_counter() - last_time
                record["loss"] = record["train/loss"]
                record["examples_per_sec"] = examples / elapsed
                record["tokens_per_sec"] = tokens / elapsed
                last_time, examples, tokens = time.perf_counter(), 0, 0
            eval_metrics = None
            if evaluator is not None and ((t.eval_every and step % t.eval_every == 0) or step == total_steps):
                eval_metrics = evaluator(state.params)
                record.update(eval_metrics)
                for key in last_eval:  # the summary holds the latest evaluation alone (its keys may vary)
                    summary.pop(key, None)
                summary.update(eval_metrics)
                last_eval = eval_metrics
            if record:
                summary.update(logger.write(step, record))
            stop = eval_metrics is not None and stopper.should_stop(eval_metrics)
            data_position = Position(step // steps_per_epoch, step % steps_per_epoch).to_json()
            if stopper.active:
                data_position["early_stopping"] = stopper.state()
            checkpoints.save(
                step, parallel.single_copy(state), data_position, eval_metrics, force=stop or step == total_steps
            )
            if stop:
                log.info("early stopping at step %d: %s did not improve", step, t.early_stopping_metric)
                summary["early_stopped"] = True
                break
    checkpoints.wait()
    checkpoints.close()
    summary.update(final_step=step, total_steps=total_steps, workdir=str(workdir))
    summary["compilations"] = parallel.compilations(step_fn)
    return summary
