"""What every `qajax bench --workload` entry shares: the workload's settings, the `Measured` record of one
entry's run, and the step and batch wrappers that book step, compile and host time into it (the timing rules
are in qajax/bench/workload.py's docstring)."""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Iterator

from qajax.errors import ConfigError

DEFAULT_DATA = "../shared/data/squad2/dev-part.json"


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


def model_dir(workload: Workload) -> str:
    if workload.model_dir:
        return workload.model_dir
    from qajax.pretrained import MINILM_INSTALL, minilm_dir

    folder = minilm_dir()
    if folder is None:
        raise ConfigError(f"the workload bench runs the real MiniLM: {MINILM_INSTALL}")
    return str(folder)


def measured_steps(workload: Workload, steps_per_epoch: int) -> int:
    """The steps an entry runs: its fraction of the epoch, at least one."""
    return max(1, math.ceil(workload.epochs_fraction * steps_per_epoch))


def block(tree) -> None:
    import jax

    jax.block_until_ready(tree)
