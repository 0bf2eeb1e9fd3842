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

The HF entries (qajax/bench/hf_workload.py) read and featurize with our reader and featurizer, so their data
time is if anything too kind; what every entry shares (settings, measuring) is in workload_timing.py.

Each entry runs ceil(F * steps per epoch) steps. The step is timed to the end of its computation (a sync
after every step, the same for every entry); a call that compiled counts as compile time (its step's run
included); the rest of the run (batching, transfers, logging) is host work. The epoch time is projected
from the measured fraction: set-up (reading, featurizing and packing all the data, loading the model) +
the compiles seen + the rest of the run scaled from the steps that did not compile to the epoch's other
steps; every rate is over that epoch (windows and real, non-padding, tokens of the whole data set). A
bucketed run may meet a length in the rest of the epoch that the fraction did not: one more compile each.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import tempfile
import time
from pathlib import Path

from qajax.bench import hf_workload
from qajax.bench.workload_timing import Measured, TimedStep, Workload, block, counted, model_dir
from qajax.errors import ConfigError

SQUAD_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "squad.py"
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
        f"model.pretrained={model_dir(workload)}",
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
    block(state)
    arrays = task.train_arrays
    measured.epoch_windows = (
        int(arrays["window_weight"].sum()) if "window_weight" in arrays else len(arrays["input_ids"])
    )
    measured.epoch_tokens = int(arrays["attention_mask"].sum())
    measured.steps_per_epoch = prepared.steps_per_epoch
    measured.setup_s = time.perf_counter() - start

    start = time.perf_counter()
    step_fn = prepared.compiled_step()
    timed = TimedStep(step_fn, measured, block, lambda: parallel.compilations(step_fn))
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
                measured = hf_workload.RUNNERS[name](workload)
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
