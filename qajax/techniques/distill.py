"""Self-distillation (Xu et al., 2020, "Improving BERT Fine-Tuning via Self-Ensemble and Self-Distillation";
report section 2.4): the student learns from a teacher built from its own recent past,

    loss = task_loss + weight * MSE(student_logits, stop_gradient(teacher_logits))       (Eq. 1 and 2)

SDA averages parameters: one teacher whose params are the mean of the last `window` snapshots (or an EMA).
SDV averages outputs: the mean of the logits of the last `window` snapshot models, run with one `jax.vmap`.
Logits are `task.logits(outputs)` ([batch, 2, seq] for span QA); the teacher runs without dropout on the same
batch. The MSE is over every position of the logits but padding tokens (span logits [batch, 2, seq] with the
batch's attention mask), as the task's softmax is, so that batches trimmed by length distil as padded ones;
padded examples (`example_weight` 0) are left out; dict logits (multitask: {task: logits}) average the
per-task MSEs. `distill_loss` in the metrics is the MSE before `weight`, the
quantity the report compares between SDA and SDV.

Snapshots. Snapshot s is the params after update s, taken when s % snapshot_every == 0, into a ring buffer
in `state.extras[name]["snapshots"]` ([window, ...] per param, float32) with `count`, the snapshots taken so
far; the teacher averages the min(count, window) newest. Until the first snapshot the teacher is the initial
params (`init_extras` fills the buffer with them). With snapshot_every=1 the newest snapshot is the current
student, so the teacher averages theta_t..theta_{t-K+1} rather than the paper's theta_{t-1}..theta_{t-K}:
keeping that lag would cost one more copy of the params, as `update_extras` sees only the updated ones.
The SDA average is derived from the buffer in each step rather than kept as a running sum: a running sum
still needs the buffer to know what leaves the window, costs one more copy of the params and drifts in
float32 over thousands of add/subtract pairs; the average is one elementwise pass over K copies (BERT-base,
K=3: ~1.3 GB read, well under a millisecond of an accelerator's step).
Memory: `window` float32 copies of the params in the state and in checkpoints (BERT-base: 0.44 GB each).

Reusing the student's outputs. Distillation needs the student's logits from the same dropout pass as the
task loss: the task loss returns its model outputs in aux (`MODEL_OUTPUTS`), and every loss transform inside
this one passes them on, so the student runs forward and backward once. A loss without them (multitask's
PCGrad makes one pass per task) gets the student pass run again here: right, at the cost of a second pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from qajax.errors import ConfigError
from qajax.techniques.base import Technique
from qajax.train.step import MODEL_OUTPUTS

MODES = ("window", "ema")


def default_config_sda() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "weight": 1.0,  # multiplies the MSE (Eq. 1 adds it with weight 1)
            "mode": "window",  # one of MODES: mean of the last `window` snapshots, or an EMA of every step
            "window": 3,  # K snapshots averaged (the report: K=3 and K=5 within 0.01 F1)
            "snapshot_every": 1,  # steps between snapshots (the paper: every step)
            "decay": 0.999,  # mode="ema": teacher = decay * teacher + (1 - decay) * params after each step
        }
    )


def default_config_sdv() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "weight": 1.0,  # multiplies the MSE (Eq. 2 adds it with weight 1)
            "window": 5,  # K snapshot models voting (the report's best: K=5, F1 78.27 vs 78.13 at K=3)
            "snapshot_every": 1,  # steps between snapshots (the paper: every step)
        }
    )


def _ring_weights(count, window: int) -> jax.Array:
    """[window] weights of the snapshots taken so far: slot i holds snapshot i (mod window), and before
    the first snapshot slot 0 holds the initial params."""
    filled = jnp.clip(count, 1, window)
    return (jnp.arange(window) < filled).astype(jnp.float32) / filled


def _weighted_mean(weights, stacked):  # [K], [K, ...] -> [...]
    # Elementwise, not a dot: an accelerator's default matmul precision would round the params to bf16. And
    # unrolled over K rather than a reduce over axis 0: XLA:CPU emitted that short leading-axis reduce so
    # badly that the SDA step took 90x the plain one (1 layer, K=3); K slices and K-1 adds take microseconds.
    total = weights[0] * stacked[0]
    for k in range(1, stacked.shape[0]):
        total = total + weights[k] * stacked[k]
    return total


def distill_mse(student, teacher, batch) -> jax.Array:
    """The mean over examples (`example_weight` 0 left out) of each example's mean squared difference; span
    logits [batch, 2, seq] leave the attention mask's padding out; dicts: the mean over their entries."""
    if isinstance(student, dict):
        return sum(distill_mse(student[k], teacher[k], {}) for k in sorted(student)) / len(student)
    squared = jnp.square(student - teacher).reshape(student.shape[0], -1)
    mask = batch.get("attention_mask")
    if student.ndim == 3 and mask is not None and mask.shape[-1] == student.shape[-1]:
        real = jnp.broadcast_to((mask != 0)[:, None, :], student.shape).reshape(squared.shape).astype(jnp.float32)
        per_example = jnp.sum(squared * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)
    else:
        per_example = jnp.mean(squared, axis=1)
    example_weight = batch.get("example_weight", jnp.ones(per_example.shape, jnp.float32))
    return jnp.sum(per_example * example_weight) / jnp.maximum(jnp.sum(example_weight), 1.0)


class _SelfDistill(Technique):
    """The loss form and the snapshot ring buffer; subclasses say how snapshots become teacher logits."""

    kind = "loss"

    def __init__(self, task, *, weight: float, window: int, snapshot_every: int):
        self.task, self.weight, self.window, self.snapshot_every = task, weight, window, snapshot_every

    def bind(self, task):
        self.task = task  # the final forward (LoRA merge, prompts): the teacher runs what the student runs

    def init_extras(self, params) -> dict:
        stacked = jax.tree.map(lambda p: jnp.stack([jnp.asarray(p, jnp.float32)] * self.window), params)
        return {"snapshots": stacked, "count": jnp.zeros((), jnp.int32)}

    def update_extras(self, own, params, step):
        take = step % self.snapshot_every == 0
        slot = own["count"] % self.window
        # Only the written slot is selected, so a step without a snapshot costs one param-sized pass.
        put = lambda buffer, p: buffer.at[slot].set(jnp.where(take, p.astype(buffer.dtype), buffer[slot]))
        return {"snapshots": jax.tree.map(put, own["snapshots"], params), "count": own["count"] + take}

    def wrap_loss(self, loss_fn):
        def distilled(params, batch, rng, extras):
            loss, aux = loss_fn(params, batch, rng, extras)
            student = aux.get(MODEL_OUTPUTS)
            if student is None:
                student = self.task.forward(params, batch, rng, deterministic=False)
            student = jax.tree.map(lambda x: x.astype(jnp.float32), self.task.logits(student))  # [batch, 2, seq]
            teacher = jax.lax.stop_gradient(self.teacher_logits(extras[self.name], batch))
            mse = distill_mse(student, teacher, batch)
            if "distill_loss" in aux:
                raise ConfigError("techniques.sda and techniques.sdv are both enabled: expected at most one")
            return loss + self.weight * mse, {**aux, "distill_loss": mse}

        return distilled

    def _logits(self, params, batch) -> jax.Array:
        outputs = self.task.forward(params, batch, None, deterministic=True)
        return jax.tree.map(lambda x: x.astype(jnp.float32), self.task.logits(outputs))


class SDA(_SelfDistill):
    """One teacher with averaged params: the window mean of the snapshots, or an EMA of every step."""

    name = "sda"

    def __init__(self, task, *, mode: str, decay: float, **ring):
        super().__init__(task, **ring)
        self.mode, self.decay = mode, decay

    def init_extras(self, params) -> dict:
        if self.mode == "window":
            return super().init_extras(params)
        return {"ema": jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)}

    def update_extras(self, own, params, step):
        if self.mode == "window":
            return super().update_extras(own, params, step)
        return {"ema": jax.tree.map(lambda e, p: self.decay * e + (1 - self.decay) * p, own["ema"], params)}

    def teacher_params(self, own):
        if self.mode == "ema":
            return own["ema"]
        weights = _ring_weights(own["count"], self.window)
        return jax.tree.map(lambda stacked: _weighted_mean(weights, stacked), own["snapshots"])

    def teacher_logits(self, own, batch) -> jax.Array:
        return self._logits(self.teacher_params(own), batch)


class SDV(_SelfDistill):
    """K teachers voting: the mean of the snapshot models' logits, all K in one vmapped forward."""

    name = "sdv"

    def teacher_logits(self, own, batch) -> jax.Array:
        logits = jax.vmap(self._logits, in_axes=(0, None))(own["snapshots"], batch)  # [K, batch, 2, seq]
        weights = _ring_weights(own["count"], self.window)
        return jax.tree.map(lambda stacked: _weighted_mean(weights, stacked), logits)


def _ring_settings(config, key: str) -> dict:
    for field in ("window", "snapshot_every"):
        if not (isinstance(config[field], int) and config[field] >= 1):
            raise ConfigError(f"{key}.{field}={config[field]!r}: expected an integer >= 1")
    if not config.weight >= 0:
        raise ConfigError(f"{key}.weight={config.weight}: expected a number >= 0")
    return dict(weight=float(config.weight), window=config.window, snapshot_every=config.snapshot_every)


def build_sda(config: ml_collections.ConfigDict, task) -> SDA:
    key = "techniques.sda"
    if config.mode not in MODES:
        raise ConfigError(f"{key}.mode={config.mode!r}: expected one of {MODES}")
    if not 0.0 <= config.decay < 1.0:
        raise ConfigError(f"{key}.decay={config.decay}: expected 0 <= decay < 1")
    return SDA(task, mode=config.mode, decay=float(config.decay), **_ring_settings(config, key))


def build_sdv(config: ml_collections.ConfigDict, task) -> SDV:
    return SDV(task, **_ring_settings(config, "techniques.sdv"))
