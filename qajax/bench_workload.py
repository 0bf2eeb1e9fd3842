"""`qajax bench --workload squad`: a fraction of a SQuAD epoch through each implementation's whole path,
end to end, side by side: the reader, the featurizer (384/128 windows), batching, the train step,
host-to-device transfers and logging. Where `qajax bench` times one step on a batch already on the device,
this counts what an epoch costs: padding, host work and compiles included.

Entries (same model, optimizer settings and batch of windows; dropout on):
  qajax           configs/squad.py as it is: the project's default for real SQuAD data
  qajax-padded    every window at 384 tokens (train.length_bucket=0, train.packing=false)
  qajax-bucketed  train.length_bucket=64: batches of similar lengths, trimmed
  qajax-packed    train.packing=true: ~1.9 windows a row of 384, batch_size / 2 rows
  hf-flax         run_qa_flax's recipe: padded windows, FlaxBertForQuestionAnswering, optax AdamW under jax.jit
  hf-pytorch      run_qa's recipe: padded windows, BertForQuestionAnswering, eager AdamW, gradients clipped at 1

The HF entries read and featurize with our reader and featurizer (the same tokenizer call as run_qa's
`prepare_train_features`, without `datasets.map`'s overhead), so their data time is if anything too kind.

Each entry runs ceil(F * steps per epoch) steps. The step is timed to the end of its computation (a sync
after every step, the same for every entry); a call that compiled counts as compile time (its step's run
included); the rest of the run (batching, transfers, logging) is host work. The epoch time is projected
from the measured fraction: set-up (reading, featurizing and packing all the data, loading the model) +
the compiles seen + the rest of the run scaled from the steps that did not compile to the epoch's other
steps; every rate is over that epoch (windows and real, non-padding, tokens of the whole data set). A
bucketed run may meet a length in the rest of the epoch that the fraction did not: one more compile each.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from qajax.errors import ConfigError

DEFAULT_DATA = "../shared/data/squad2/dev-part.json"
SQUAD_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "squad.py"
ENTRIES = ("qajax", "qajax-padded", "qajax-bucketed", "qajax-packed", "hf-flax", "hf-pytorch")
DEFAULT_ENTRIES = ("qajax", "qajax-padded", "qajax-packed", "hf-flax", "hf-pytorch")
QAJAX_OVERRIDES = {
    "qajax": (),
    "qajax-padded": ("train.length_bucket=0", "train.packing=false"),
    "qajax-bucketed": ("train.length_bucket=64", "train.packing=false"),
    "qajax-packed": ("train.length_bucket=0", "train.packing=true"),
}
TARGET = ("hf-flax", 1.8)  # qajax's windows/s end to end must be at least this many times this entry's


class DataAbsent(FileNotFoundError):
    """The workload's data file is not there (the CLI reports the bench as skipped)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    data: str = DEFAULT_DATA  # a SQuAD .json
    model_dir: str = ""  # an HF BERT folder; '' = the real MiniLM (qajax.pretrained)
    epochs_fraction: float = 0.2
    batch_size: int = 32  # windows (packed: batch_size // 2 rows)
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    learning_rate: float = 1e-4  # configs/squad.py's
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    log_every: int = 10
    seed: int = 0


@dataclasses.dataclass
class Measured:
    """One entry's run: set-up, compiles, step computation and the rest, over `steps` of `steps_per_epoch`."""

    setup_s: float = 0.0
    compile_s: float = 0.0
    step_s: float = 0.0
    run_s: float = 0.0  # the whole loop, compiles and steps included
    steps: int = 0
    steps_per_epoch: int = 0
    compilations: int = 0
    windows: int = 0  # fed during the measured steps
    tokens: int = 0  # real tokens fed during the measured steps
    epoch_windows: int = 0  # of the whole data set
    epoch_tokens: int = 0
    # (windows, tokens) of batches read but not yet stepped: prefetching reads ahead
    pending: collections.deque = dataclasses.field(default_factory=collections.deque, repr=False)


class TimedStep:
    """A step that syncs at its end and books its time as compile (the call compiled) or step time."""

    def __init__(self, step: Callable, measured: Measured, sync: Callable, compilations: Callable[[], int]):
        self.step, self.measured, self.sync, self.compilations = step, measured, sync, compilations

    def __call__(self, state, batch):
        before = self.compilations()
        start = time.perf_counter()
        state, metrics = self.step(state, batch)
        self.sync(state)
        seconds = time.perf_counter() - start
        if self.compilations() > before:
            self.measured.compile_s += seconds
        else:
            self.measured.step_s += seconds
        windows, tokens = self.measured.pending.popleft()
        self.measured.steps += 1
        self.measured.windows += windows
        self.measured.tokens += tokens
        return state, metrics


def counted(batches: Iterator[dict], measured: Measured) -> Iterator[dict]:
    """The host batches, noting their windows (packed: real slots) and real tokens for the step that takes them."""
    for batch in batches:
        weight = batch.get("window_weight")
        windows = len(batch["input_ids"]) if weight is None else int(weight.sum())
        measured.pending.append((windows, int(batch["attention_mask"].sum())))
        yield batch


def _model_dir(workload: Workload) -> str:
    if workload.model_dir:
        return workload.model_dir
    from qajax.pretrained import MINILM_INSTALL, minilm_dir

    folder = minilm_dir()
    if folder is None:
        raise ConfigError(f"the workload bench runs the real MiniLM: {MINILM_INSTALL}")
    return str(folder)


def _steps(workload: Workload, steps_per_epoch: int) -> int:
    return max(1, math.ceil(workload.epochs_fraction * steps_per_epoch))


# -- qajax: configs/squad.py through prepare() and the loop's own run_steps ------------------------------


class _NoCheckpoints:
    """The loop's checkpoint hook, writing nothing: saving is not part of an epoch's throughput."""

    def save(self, *args, **kwargs) -> None:
        pass


def run_qajax(workload: Workload, overrides: tuple[str, ...], workdir: Path) -> Measured:
    from qajax import config as config_lib
    from qajax import run
    from qajax.data.batches import START
    from qajax.train import loop
    from qajax.train.logs import MetricLogger

    measured = Measured()
    start = time.perf_counter()
    settings = [
        f"task.train_file={workload.data}",
        "task.eval_file=",
        "task.eval_titles=()",
        "task.dev_titles=()",
        f"task.cache_dir={workdir / 'features'}",  # empty: every entry reads and featurizes
        f"task.max_seq_length={workload.max_seq_length}",
        f"task.doc_stride={workload.doc_stride}",
        f"task.max_query_length={workload.max_query_length}",
        f"model.pretrained={_model_dir(workload)}",
        "train.steps=0",
        f"train.epochs={workload.epochs_fraction}",
        f"train.batch_size={workload.batch_size}",
        f"train.log_every={workload.log_every}",
        f"optimizer.learning_rate={workload.learning_rate}",
        f"optimizer.warmup_ratio={workload.warmup_ratio}",
        f"optimizer.weight_decay={workload.weight_decay}",
        "log.progress=false",
        f"seed={workload.seed}",
        *overrides,
    ]
    config = config_lib.load(str(SQUAD_CONFIG), settings)
    if config.train.packing:  # ~1.9 SQuAD windows a row: about the same windows per step as the others
        config.train.batch_size = workload.batch_size // 2
    prepared = run.prepare(config)
    task, parallel = prepared.task, prepared.parallel
    state = parallel.create_state(prepared.make_state, task.initial_params)
    _block(state)
    arrays = task.train_arrays
    measured.epoch_windows = (
        int(arrays["window_weight"].sum()) if "window_weight" in arrays else len(arrays["input_ids"])
    )
    measured.epoch_tokens = int(arrays["attention_mask"].sum())
    measured.steps_per_epoch = prepared.steps_per_epoch
    measured.setup_s = time.perf_counter() - start

    start = time.perf_counter()
    step_fn = prepared.compiled_step()
    timed = TimedStep(step_fn, measured, _block, lambda: parallel.compilations(step_fn))
    batches = counted(task.train_batches(position=START, **prepared.iterator_args), measured)
    batches = parallel.prefetch(batches, config.train.prefetch)
    logger = MetricLogger(workdir, is_main_process=True, total_steps=prepared.total_steps,
                          tensorboard=config.log.tensorboard, progress=False, resume_step=0)  # fmt: skip
    with logger:
        parts = loop.RunParts(prepared, timed, None, logger, _NoCheckpoints(), loop.EarlyStopping("", "max", 0))
        loop.run_steps(parts, state, 0, batches, {})
    measured.run_s = time.perf_counter() - start
    measured.compilations = parallel.compilations(step_fn)
    return measured


def _block(tree) -> None:
    import jax

    jax.block_until_ready(tree)


# -- the transformers references ------------------------------------------------------------------------


def _padded_windows(workload: Workload, model_dir: str) -> dict[str, np.ndarray]:
    import transformers

    from qajax.tasks.span import LABELS, MODEL_INPUTS
    from qajax.tasks.squad import data
    from qajax.tasks.squad.features import FeatureConfig, featurize

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    examples, _ = data.load(workload.data)
    windows = FeatureConfig(workload.max_seq_length, workload.doc_stride, workload.max_query_length)
    features = featurize(examples, tokenizer, windows, for_training=True)
    return {k: features[k] for k in MODEL_INPUTS + LABELS}


def _shuffled_batches(arrays: dict, batch_size: int, seed: int) -> Iterator[dict]:
    """run_qa_flax's `train_data_collator`: a permutation per epoch, full batches of it."""
    num_windows = len(arrays["input_ids"])
    for epoch in range(1_000_000):
        order = np.random.default_rng([seed, epoch]).permutation(num_windows)
        for first in range(0, num_windows - batch_size + 1, batch_size):
            rows = order[first : first + batch_size]
            yield {k: v[rows] for k, v in arrays.items()}


def _reference_run(workload: Workload, measured: Measured, arrays: dict, step: TimedStep, state, to_loss, convert):
    """The references' loop: next host batch, its conversion, the step, the loss pulled at log steps."""
    measured.epoch_windows, measured.epoch_tokens = len(arrays["input_ids"]), int(arrays["attention_mask"].sum())
    measured.steps_per_epoch = len(arrays["input_ids"]) // workload.batch_size
    total = _steps(workload, measured.steps_per_epoch)
    batches = counted(_shuffled_batches(arrays, workload.batch_size, workload.seed), measured)
    start = time.perf_counter()
    for index in range(1, total + 1):
        state, metrics = step(state, convert(next(batches)))
        if index % workload.log_every == 0 or index == total:
            to_loss(metrics)
    measured.run_s = time.perf_counter() - start


def linear_schedule(workload: Workload, total_steps: int):
    """Linear warmup over warmup_ratio of the run, then linear decay to 0 (run_qa's and run_qa_flax's)."""
    import optax

    warmup = math.ceil(workload.warmup_ratio * total_steps)
    up = optax.linear_schedule(0.0, workload.learning_rate, max(warmup, 1))
    down = optax.linear_schedule(workload.learning_rate, 0.0, max(total_steps - warmup, 1))
    return optax.join_schedules([up, down], [warmup])


def run_hf_flax(workload: Workload) -> Measured:
    import jax
    import optax
    import transformers

    from qajax.tasks.span import span_loss

    measured = Measured()
    start = time.perf_counter()
    model_dir = _model_dir(workload)
    arrays = _padded_windows(workload, model_dir)
    model = transformers.FlaxBertForQuestionAnswering.from_pretrained(model_dir, from_pt=True, seed=workload.seed)
    total = _steps(workload, len(arrays["input_ids"]) // workload.batch_size)
    decay = lambda params: jax.tree_util.tree_map_with_path(  # run_qa_flax: no decay on biases and LayerNorm
        lambda path, _: not any(getattr(k, "key", "") in ("bias", "scale") for k in path), params
    )
    tx = optax.adamw(linear_schedule(workload, total), weight_decay=workload.weight_decay, mask=decay)

    def step(carry, batch):
        params, opt_state, rng = carry
        rng, dropout_rng = jax.random.split(rng)

        def loss(p):
            inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            out = model(*inputs, params=p, dropout_rng=dropout_rng, train=True)
            return span_loss(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"])[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), {"train/loss": value}

    jitted = jax.jit(step, donate_argnums=0)
    carry = (model.params, tx.init(model.params), jax.random.PRNGKey(workload.seed))
    _block(carry)
    measured.setup_s = time.perf_counter() - start
    timed = TimedStep(jitted, measured, _block, jitted._cache_size)
    _reference_run(workload, measured, arrays, timed, carry, lambda m: float(m["train/loss"]), lambda b: b)
    measured.compilations = jitted._cache_size()
    return measured


def run_hf_pytorch(workload: Workload) -> Measured:
    import torch
    import transformers

    measured = Measured()
    start = time.perf_counter()
    torch.manual_seed(workload.seed)
    model_dir = _model_dir(workload)
    arrays = _padded_windows(workload, model_dir)
    model = transformers.BertForQuestionAnswering.from_pretrained(model_dir).train()
    total = _steps(workload, len(arrays["input_ids"]) // workload.batch_size)
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    groups = [{"params": decay, "weight_decay": workload.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=workload.learning_rate)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, math.ceil(workload.warmup_ratio * total), total)
    measured.setup_s = time.perf_counter() - start

    def step(state, batch):  # the Trainer's: forward, backward, clip at 1, step, schedule
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return state, {"train/loss": loss.detach()}

    convert = lambda batch: {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
    timed = TimedStep(step, measured, lambda _: None, lambda: 0)
    _reference_run(workload, measured, arrays, timed, None, lambda m: float(m["train/loss"]), convert)
    return measured


# -- the report -----------------------------------------------------------------------------------------


def summarize(name: str, m: Measured) -> dict:
    """Rates over a projected epoch: set-up + compiles + the rest of the run scaled from the steps measured
    without a compile to the epoch's (a compile's time holds its step's: that step is not counted again)."""
    scale = (m.steps_per_epoch - m.compilations) / max(m.steps - m.compilations, 1)
    epoch_s = m.setup_s + m.compile_s + (m.run_s - m.compile_s) * scale
    step_s = m.step_s * scale
    return {
        "name": name,
        "windows_per_sec": m.epoch_windows / epoch_s,
        "real_tokens_per_sec": m.epoch_tokens / epoch_s,
        "host_share": (epoch_s - step_s - m.compile_s) / epoch_s,
        "compilations": m.compilations,
        "compile_seconds": m.compile_s,
        "epoch_seconds": epoch_s,
        "measured": {k: v for k, v in dataclasses.asdict(m).items() if k != "pending"},
        "measured_windows_per_sec": m.windows / m.run_s,  # the steps run, set-up left out
        "step_ms": 1e3 * m.step_s / max(m.steps - m.compilations, 1),
    }


RUNNERS = {"hf-flax": run_hf_flax, "hf-pytorch": run_hf_pytorch}


def run(workload: Workload, names: tuple[str, ...] = DEFAULT_ENTRIES) -> dict:
    """Each entry's path over `workload`, one after the other in this process (nothing shared but the files)."""
    unknown = sorted(set(names) - set(ENTRIES))
    if unknown or not names:
        raise ConfigError(f"--entries: unknown workload entries {unknown or names}; expected some of {ENTRIES}")
    if not Path(workload.data).is_file():
        raise DataAbsent(f"{workload.data} is absent: the workload bench needs a SQuAD .json (--data FILE)")
    from qajax import host_memory

    host_memory.keep_freed_host_memory()
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"qajax-workload-{name}-") as workdir:
            if name in QAJAX_OVERRIDES:
                measured = run_qajax(workload, QAJAX_OVERRIDES[name], Path(workdir))
            else:
                measured = RUNNERS[name](workload)
        results.append(summarize(name, measured))
        gc.collect()
    base = next((r for r in results if r["name"] == "qajax"), results[0])
    for r in results:
        r["epoch_ratio"] = r["epoch_seconds"] / base["epoch_seconds"]  # > 1: slower than qajax
    return {"workload": dataclasses.asdict(workload), "device": _device(), "results": results}


def _device() -> str:
    import platform

    import jax

    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} x{jax.device_count()} ({platform.processor() or 'cpu'})"


def markdown(report: dict) -> str:
    w = report["workload"]
    lines = [
        f"device: {report['device']}",
        f"workload: {json.dumps(w)}",
        "",
        "| entry | windows/s | real tokens/s | host share | compiles | compile s | step ms | epoch s | epoch / qajax |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['name']} | {r['windows_per_sec']:.2f} | {r['real_tokens_per_sec']:.0f} | "
            f"{100 * r['host_share']:.1f}% | {r['compilations']} | {r['compile_seconds']:.1f} | {r['step_ms']:.0f} | "
            f"{r['epoch_seconds']:.0f} | {r['epoch_ratio']:.2f} |"
        )
    by_name = {r["name"]: r for r in report["results"]}
    reference, bound = TARGET
    if "qajax" in by_name and reference in by_name:
        ratio = by_name["qajax"]["windows_per_sec"] / by_name[reference]["windows_per_sec"]
        verdict = "met" if ratio >= bound else "not met"
        lines += ["", f"qajax / {reference} windows/s: {ratio:.2f} (target >= {bound}: {verdict})"]
    return "\n".join(lines)
