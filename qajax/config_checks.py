"""Values a user can type wrong, checked when the config loads (before any data is read or a device is
touched): choice keys against their choices, dtype spellings, and the window settings of span QA.

Each check applies where the config has the key, so one table serves every task and technique section.
"""

from __future__ import annotations

import difflib

from qajax.errors import ConfigError

DTYPE_KEYS = ("model.dtype", "model.param_dtype")
# Spellings other tools use for the same dtypes (PyTorch, HF `--bf16`, numpy's short names).
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "f16": "float16",
                 "fp32": "float32", "f32": "float32", "float": "float32"}  # fmt: skip


def _choices() -> dict[str, tuple[str, ...]]:
    """Key -> allowed values, from the modules that define them (imported here: they import jax)."""
    from qajax.models.config import ATTENTION_IMPLEMENTATIONS, DTYPES, FAMILIES
    from qajax.models.layer_heads import SPAN_HEADS
    from qajax.train.optim import NAMES, SCHEDULES

    return {
        "model.dtype": tuple(DTYPES),
        "model.param_dtype": tuple(DTYPES),
        "model.family": FAMILIES,
        "model.attention_implementation": ATTENTION_IMPLEMENTATIONS,
        "parallel.mode": ("mesh", "pmap"),
        "optimizer.name": NAMES,
        "optimizer.schedule": SCHEDULES,
        "checkpoint.best_mode": ("max", "min"),
        "train.early_stopping_mode": ("max", "min"),
        "task.span_head": SPAN_HEADS,
        "task.version": ("v1.1", "v2.0"),
    }


def normalize(key: str, value):
    """A dtype alias (`bf16`) as the name the config uses (`bfloat16`); anything else unchanged."""
    if key in DTYPE_KEYS and isinstance(value, str):
        return DTYPE_ALIASES.get(value.strip().lower(), value)
    return value


def check(flat: dict) -> None:
    """Raises ConfigError naming the key, the value and the choices for the first bad value in `flat`
    (dotted key -> value, as `config.flatten` gives)."""
    for key, allowed in _choices().items():
        if key in flat and flat[key] is not None and flat[key] not in allowed:
            close = difflib.get_close_matches(str(flat[key]), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}={flat[key]!r}: expected one of {allowed}{hint}")
    _check_windows(flat)
    _check_packing(flat)
    for key in ("parallel.data", "parallel.fsdp"):
        value = flat.get(key)
        if isinstance(value, int) and not (value >= 1 or (key == "parallel.data" and value == -1)):
            raise ConfigError(f"{key}={value}: expected a number of devices >= 1 (parallel.data also -1: all)")


def _check_windows(flat: dict) -> None:
    """Span QA windows: the tokenizer cannot make a window that overlaps its neighbour by all of itself."""
    length, stride = flat.get("task.max_seq_length"), flat.get("task.doc_stride")
    query = flat.get("task.max_query_length")
    if isinstance(length, int) and isinstance(stride, int) and not 0 <= stride < length:
        raise ConfigError(
            f"task.doc_stride={stride} must be in [0, task.max_seq_length={length}): it is the overlap between "
            f"windows of one context; e.g. --set task.doc_stride={length // 4}"
        )
    if isinstance(length, int) and isinstance(query, int) and not 0 < query < length:
        raise ConfigError(
            f"task.max_query_length={query} must be in (0, task.max_seq_length={length}): the question and "
            "its context share one window"
        )


def _check_packing(flat: dict) -> None:
    """Packing needs windows to pack (span QA on SQuAD) and fixed rows (neither trimmed nor remade per epoch)."""
    if not flat.get("train.packing"):
        return
    if flat.get("task.name") != "squad":
        raise ConfigError(f"train.packing=true packs SQuAD windows; task.name={flat.get('task.name')!r} has none")
    if flat.get("train.length_bucket"):
        raise ConfigError(
            "train.packing=true with train.length_bucket: choose one (packed rows have no padding to trim)"
        )
    if flat.get("techniques.eda.enabled"):
        raise ConfigError("train.packing=true with techniques.eda.enabled: EDA remakes the windows every epoch, "
                          "packing packs them once")  # fmt: skip
    # Distillation and SMART compare softmaxes over a row's tokens, which would mix its windows; a soft prompt
    # would join one window of the row.
    mixed = [name for name in ("sda", "sdv", "smart", "prompt") if flat.get(f"techniques.{name}.enabled")]
    if mixed:
        raise ConfigError(f"train.packing=true with techniques {mixed}: they do not compare packed windows yet")
    rows = flat.get("train.windows_per_row")
    if not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"train.windows_per_row={rows!r}: expected a number of windows >= 1")
