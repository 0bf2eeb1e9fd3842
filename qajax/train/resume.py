"""Resuming safely: the config a run resumes with is compared with the one its workdir saved.

A key that changes what is computed (the model, the task's data, the optimizer, a technique, the batch, the
seed) would silently continue a run as another experiment, so such changes are refused, each named with its
old and new value, unless the user allows them. Keys that only change how the run is watched or saved, or
extend it, are accepted and reported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_collections

from qajax import config as config_lib
from qajax.errors import ConfigError

log = logging.getLogger(__name__)

# Changes that leave the computation as it was. `train.steps`/`train.epochs` extend (or shorten) the run:
# the learning-rate schedule is rebuilt over the new total, which the banner states.
SAFE_PREFIXES = ("log.", "checkpoint.")
SAFE_KEYS = (
    "train.steps",
    "train.epochs",
    "train.log_every",
    "train.eval_every",
    "train.eval_at_start",
    "train.eval_batch_size",
    "train.prefetch",
    "train.early_stopping_metric",
    "train.early_stopping_mode",
    "train.patience",
    # The device layout of one global batch: the same examples and the same summed gradient.
    "parallel.data",
    "parallel.fsdp",
    "parallel.fsdp_min_size",
    "parallel.coordinator_address",
    "parallel.num_processes",
    "parallel.process_id",
    # Where features are cached and extra outputs written, not what they hold.
    "task.cache_dir",
    "task.predictions_dir",
)
_ABSENT = "(not set)"


def is_safe(key: str) -> bool:
    return key.startswith(SAFE_PREFIXES) or key in SAFE_KEYS


def has_checkpoint(workdir: Path, checkpoint_dir: str = "checkpoints") -> bool:
    """Whether `workdir` holds a committed training checkpoint (a step folder) to resume from."""
    folder = Path(workdir) / checkpoint_dir
    return folder.is_dir() and any(p.name.isdigit() and p.is_dir() for p in folder.iterdir())


def config_changes(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, tuple]:
    """{key: (saved value, new value)} for every key that differs from `workdir/config.json`."""
    saved = _comparable(config_lib.flatten(config_lib.read_saved(workdir)))
    new = _comparable(config_lib.flatten(config))
    return {k: (saved.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(saved.keys() | new.keys())
            if saved.get(k, _ABSENT) != new.get(k, _ABSENT)}  # fmt: skip


def check_resume(config: ml_collections.ConfigDict, workdir: str | Path, *, allow_changes: bool = False) -> None:
    """Raises ConfigError if `workdir` has a checkpoint and `config` changes a key that changes the computation
    (unless `allow_changes`); logs every accepted change. Nothing to check for a new workdir."""
    workdir = Path(workdir)
    if not has_checkpoint(workdir) or not (workdir / config_lib.SAVED_NAME).is_file():
        return
    changes = config_changes(config, workdir)
    refused = {k: v for k, v in changes.items() if not is_safe(k)}
    if refused and not allow_changes:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"{workdir} holds a run with another config, and resuming it would change what it computes: {listed}. "
            "Use a new --workdir, or pass --allow-config-change to resume with the new values anyway"
        )
    for key, (old, new) in changes.items():
        level, kind = (logging.INFO, "accepted") if is_safe(key) else (logging.WARNING, "--allow-config-change")
        log.log(level, "resuming with %s: %r -> %r (%s)", key, old, new, kind)


def _comparable(flat: dict) -> dict:
    """Values as JSON would store them: tuples and lists alike, so a saved config equals the one it came from."""
    return {k: json.loads(json.dumps(v, cls=ml_collections.config_dict.CustomJSONEncoder)) for k, v in flat.items()}
