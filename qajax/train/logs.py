"""MetricLogger: the one place a training run writes its metrics (metrics.jsonl, TensorBoard, progress bar).

`DIR/metrics.jsonl` holds one JSON object per `write`: `{"step": step, <keys sorted>}`, appended and flushed
line by line so that a killed run keeps what it logged. A run restarted from the checkpoint at step N passes
`resume_step=N`; lines with step > N are dropped first, so the resumed log equals an uninterrupted one.
Only the main process writes; every process converts and checks the values, so all of them raise together.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from qajax.errors import DataError
from qajax.files import atomic_write_text

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_POSTFIX = {"loss": "loss", "examples_per_sec": "ex/s"}  # logged key -> progress-bar label


def _read_lines(path: Path) -> tuple[list[tuple[str, dict]], bool]:
    """([(line, record)], torn): a final line without its newline that does not parse is a torn write."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")  # the last item is "" when the file ends in a newline
    entries, torn = [], False
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last and not line:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if is_last:  # a kill in the middle of `write`: the line never got its "\n"
                torn = True
                break
            raise DataError(f"malformed JSON ({e.msg}): {line[:80]!r}", path=str(path), where=f"line {number}") from e
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(
                f'expected an object with an integer "step", found {line[:80]!r}',
                path=str(path),
                where=f"line {number}",
            )
        entries.append((line, record))
    return entries, torn


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl, in file order; a torn final line is dropped, any other bad line raises."""
    return [record for _, record in _read_lines(Path(path))[0]]


def _to_host(step: int, metrics: Mapping, allow_nonfinite: tuple[str, ...]) -> dict:
    if "step" in metrics:
        raise ValueError(f'metric key "step" is reserved for the step argument (step {step})')
    host = jax.device_get(dict(metrics))  # one transfer for the whole dict
    record: dict = {"step": int(step)}
    for key in sorted(host):
        value = np.asarray(host[key])
        if value.ndim != 0:
            raise ValueError(f"metric {key!r} at step {step} must be a scalar, found shape {value.shape}")
        value = int(value) if np.issubdtype(value.dtype, np.integer) or value.dtype == bool else float(value)
        if not math.isfinite(value) and key not in allow_nonfinite:
            raise FloatingPointError(f"metric {key!r} is {value} at step {step}")
        record[key] = value
    return record


class MetricLogger:
    """Writes metrics to DIR/metrics.jsonl and DIR/tensorboard/ and drives the progress bar.

    The non-finite check applies to the values being logged: `write` raises FloatingPointError for a NaN or
    inf under any key not in `allow_nonfinite`. A step that skips a non-finite update counts it under a key
    such as `train/nonfinite_steps`, which is itself finite, so skipped updates do not trip the check.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        is_main_process: bool = True,
        total_steps: int | None = None,
        tensorboard: bool = True,
        progress: bool = True,
        resume_step: int | None = None,
        allow_nonfinite: tuple[str, ...] = (),
    ):
        self.path = Path(workdir) / METRICS_FILE
        self.allow_nonfinite = tuple(allow_nonfinite)
        self._file = self._tensorboard = self._bar = self._line = None
        if not is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step tells TensorBoard to hide the earlier run's events at steps > resume_step.
            purge_step = None if resume_step is None else resume_step + 1
            self._tensorboard = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR), purge_step=purge_step)
        if progress:
            from tqdm.auto import tqdm

            # disable=None: no bar when stderr is not a terminal (batch jobs' log files).
            self._bar = tqdm(total=total_steps, initial=resume_step or 0, unit="step", dynamic_ncols=True, disable=None)
            if getattr(self._bar, "disable", False):  # tqdm turned itself off: stderr is no terminal
                self._bar = None
        if self._bar is None and total_steps:  # no bar drawn: a plain line per log interval instead
            from qajax.train.banner import StepLine

            self._line = StepLine(total_steps, resume_step or 0)

    def _truncate(self, resume_step: int | None) -> None:
        """Drop a torn final line, and with resume_step=N every line with step > N; rewrite atomically."""
        entries, torn = _read_lines(self.path)
        kept = [line for line, record in entries if resume_step is None or record["step"] <= resume_step]
        if torn or len(kept) < len(entries):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping) -> dict:
        """Pulls `metrics` to the host, checks them and writes one record; returns it (plain floats and ints)."""
        record = _to_host(step, metrics, self.allow_nonfinite)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, global_step=step)
            self._tensorboard.flush()
        if self._bar is not None:
            postfix = {label: f"{record[key]:.4g}" for key, label in _POSTFIX.items() if key in record}
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
        if self._line is not None and step > 0:
            log.info("%s", self._line(step, record))
        return record

    def advance(self, step: int) -> None:
        """Moves the progress bar to `step`; host-side only, no device sync."""
        if self._bar is not None and step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        for handle in (self._bar, self._tensorboard, self._file):
            if handle is not None:
                handle.close()
        self._file = self._tensorboard = self._bar = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
