"""`run`: every entry compiled, warmed up and timed side by side in one process, and the report of it.

A speed claim is the ratio of step times measured here, never an absolute number from another run.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable

import jax

from qajax import host_memory
from qajax.bench.device import describe_device, device_peak_flops, peak_memory_bytes, step_memory_bytes
from qajax.bench.entries import (
    PLAIN_STEP_ENTRIES,
    check_attention_platform,
    entry_builders,
    planned_attention,
    ran_attention,
)
from qajax.bench.shape import Shape
from qajax.compile.hlo import attention_kernel
from qajax.errors import ConfigError


class Timed:
    """One entry's step, compiled and warmed up; `time(steps)` gives the mean seconds of `steps` more."""

    def __init__(self, step: Callable, state, batch, *, warmup: int, sync: Callable):
        self.state, self.batch, self.sync = state, batch, sync
        self.memory_bytes = self.attention_kernel = None
        start = time.perf_counter()
        jitted = hasattr(step, "lower")
        if jitted:  # compile ahead of time, and read the step's memory and attention kernel from XLA
            step = step.lower(state, batch).compile()
            self.memory_bytes = step_memory_bytes(step.memory_analysis())
            self.attention_kernel = attention_kernel(step.as_text() or "")
        self.step = step
        if not jitted:  # eager (PyTorch) or a wrapper: the first call stands for the compile
            self._run(1)
        self.compile_seconds = time.perf_counter() - start
        self._run(warmup)

    def _run(self, steps: int) -> None:
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        if metrics is not None:
            self.sync(metrics)  # one sync at the end: steps are dispatched back to back, as in training

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        self._run(steps)
        return (time.perf_counter() - start) / steps

    def measured(self, seconds: float) -> Measured:
        return Measured(seconds, self.compile_seconds, self.memory_bytes, self.attention_kernel)


@dataclasses.dataclass(frozen=True)
class Measured:
    seconds: float  # per step
    compile_seconds: float
    memory_bytes: int | None  # XLA's, per device; None for eager steps
    attention_kernel: str | None  # read from the compiled HLO (`qajax.compile.hlo`); None for eager steps


def time_entries(builders: dict[str, Callable], *, steps: int, warmup: int, rounds: int) -> dict[str, Measured]:
    """With `rounds` > 1 every entry is built first (all in memory at once), then timed `rounds` times in
    alternating order, and its fastest round counts: what ran before an entry (a busy allocator, a hot cache,
    the other process of a 2-core machine) weighs on every entry alike."""

    def prepare(name: str) -> Timed:
        sync = (lambda m: float(m["train/loss"])) if name == "hf-pytorch" else jax.block_until_ready
        return Timed(*builders[name](), warmup=warmup, sync=sync)

    names, measured = list(builders), {}
    if rounds == 1:  # one entry in memory at a time
        for name in names:
            timed = prepare(name)
            measured[name] = timed.measured(timed.time(steps))
            del timed
        return measured
    entries = {name: prepare(name) for name in names}
    best = dict.fromkeys(names, float("inf"))
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            best[name] = min(best[name], entries[name].time(steps))
    return {name: entries[name].measured(best[name]) for name in names}


def run(
    shape: Shape,
    names: list[str],
    *,
    steps: int = 10,
    warmup: int = 2,
    peak_flops: float | None = None,
    mode="mesh",
    rounds: int = 1,
) -> dict:
    """Times each entry's step (see `time_entries` for `rounds`) and reports throughput, compile time, memory,
    MFU, the attention each ran with, and step times as ratios to the plain qajax step."""
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: expected at least 1")
    builders = entry_builders(shape, mode)
    unknown = sorted(set(names) - set(builders))
    if unknown or not names:
        known = ", ".join(sorted(builders))
        raise ConfigError(f"--entries: unknown entries {unknown or names}; expected some of {known}")
    check_attention_platform(shape)
    flops = shape.train_flops()
    peak, peak_source = device_peak_flops(peak_flops)
    measured = time_entries({name: builders[name] for name in names}, steps=steps, warmup=warmup, rounds=rounds)
    return {
        "device": describe_device(),
        "config": {**dataclasses.asdict(shape), "mode": mode, "steps": steps, "warmup": warmup, "rounds": rounds,
                   "train_flops_per_step": flops, "peak_flops": peak, "peak_flops_source": peak_source,
                   "host_allocator": "keeps freed memory" if host_memory.applied() else "system"},
        "results": result_rows(shape, measured, flops, peak),
        "peak_device_memory_bytes": peak_memory_bytes(),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip


def result_rows(shape: Shape, measured: dict[str, Measured], flops: float, peak: float) -> list[dict]:
    """One row per entry, in the order timed; `ratio` is its step time over the plain qajax step's."""
    rows = []
    for name, m in measured.items():
        step_flops = flops / 3 if name.endswith("-eval") else flops  # forward only
        # MFU counts the plain step's model FLOPs; a technique does more (SDV, SMART) or less (frozen, LoRA)
        # work than that, so its "MFU" would not be a utilization (freeze-top2 would pass 100%).
        mfu = step_flops / m.seconds / peak if name in PLAIN_STEP_ENTRIES else None
        rows.append(
            {
                "name": name,
                "examples_per_sec": shape.batch_size / m.seconds,
                "tokens_per_sec": shape.batch_size * shape.seq_len / m.seconds,
                "step_ms": 1e3 * m.seconds,
                "compile_seconds": m.compile_seconds,
                "step_memory_bytes": m.memory_bytes,
                "mfu": mfu,
                "attention": ran_attention(planned_attention(name, shape), m.attention_kernel),
                "attention_kernel": m.attention_kernel,
            }
        )
    base = next((r["step_ms"] for r in rows if r["name"] == "qajax"), rows[0]["step_ms"])
    for r in rows:
        r["ratio"] = r["step_ms"] / base  # step time relative to the plain qajax train step
    return rows
