"""A qajax model checkpoint: `spec.json` + `params/` (Orbax) + `tokenizer/` (the HF tokenizer files).

This is what `qajax import-hf` writes and what training starts from; training checkpoints add the
optimizer state and the data position beside it (see `qajax.train.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from qajax import tree
from qajax.errors import CheckpointError
from qajax.files import atomic_directory
from qajax.models import layout
from qajax.models.spec import SPEC_FILE, ModelSpec

PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def save_model(out_dir: str | Path, spec: ModelSpec, params, *, overwrite: bool = False) -> Path:
    """Params are stored in HF layout (unstacked) so any run-time option can load them."""
    from qajax.hf import copy_tokenizer

    params = jax.tree.map(np.asarray, jax.device_get(layout.unstack_layers(params)))
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tokenizer_dir = None
        if spec.tokenizer_dir:
            (tmp / TOKENIZER_DIR).mkdir()
            if copy_tokenizer(spec.tokenizer_dir, tmp / TOKENIZER_DIR):
                tokenizer_dir = TOKENIZER_DIR  # relative: the folder may move
        stored = spec.replace(tokenizer_dir=tokenizer_dir)
        (tmp / SPEC_FILE).write_text(stored.to_json() + "\n")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / PARAMS_DIR, params)
    return Path(out_dir)


def read_spec(ckpt_dir: str | Path) -> ModelSpec:
    ckpt_dir = Path(ckpt_dir).absolute()
    spec = ModelSpec.read(ckpt_dir / SPEC_FILE)
    if spec.tokenizer_dir and not Path(spec.tokenizer_dir).is_absolute():
        spec = spec.replace(tokenizer_dir=str(ckpt_dir / spec.tokenizer_dir))
    return spec


TRAINING_CHECKPOINTS = "checkpoints"  # a training workdir: spec.json + checkpoints/<step>/state


def load_model(ckpt_dir: str | Path, *, step: int | None = None, **encoder_options):
    """(model, params, spec) from a qajax model checkpoint or a training workdir (its best checkpoint when
    one was kept by metric, else its latest; or `step`; LoRA adapters merged). `encoder_options` are
    run-time EncoderConfig fields (dtype, scan_layers, ...)."""
    ckpt_dir = Path(ckpt_dir).absolute()
    spec = read_spec(ckpt_dir)
    if encoder_options:
        spec = spec.replace(encoder=spec.encoder.replace(**encoder_options))
    if (ckpt_dir / PARAMS_DIR).is_dir():
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(ckpt_dir / PARAMS_DIR)
    elif (ckpt_dir / TRAINING_CHECKPOINTS).is_dir():
        params = _plain_params(ckpt_dir, _training_params(ckpt_dir / TRAINING_CHECKPOINTS, step))
    else:
        raise CheckpointError(
            f"{ckpt_dir}: no {PARAMS_DIR}/ or {TRAINING_CHECKPOINTS}/ folder; not a qajax checkpoint or workdir"
        )
    params = layout.unstack_layers(jax.tree.map(np.asarray, params))
    from qajax.hf import expected_paths

    expected = expected_paths(spec)
    found = {path: tuple(np.shape(v)) for path, v in tree.flatten(params).items()}
    if found != expected:
        raise CheckpointError(
            f"{ckpt_dir}: params do not match {SPEC_FILE}: missing {sorted(set(expected) - set(found))[:5]}, "
            f"unexpected {sorted(set(found) - set(expected))[:5]}, "
            f"shapes differ at {[p for p in expected if p in found and found[p] != expected[p]][:5]}"
        )
    return spec.build(), layout.for_config(params, spec.encoder), spec


def _plain_params(workdir: Path, params: dict) -> dict:
    """The model's own params from a run's: LoRA adapters merged into their kernels with the run's alpha/rank
    (techniques.lora in its saved config); a soft prompt refused, since a plain model has no input for it."""
    from qajax.techniques import lora

    if "prompt" in params:
        raise CheckpointError(
            f"{workdir} was trained with prompt tuning (techniques.prompt): the model's params alone are the frozen "
            "base, and an exported or plainly evaluated model would drop the learned prompt; load the run's params "
            "with the technique (qajax.techniques.prompt: prompt_only / load_prompt) instead"
        )
    if not lora.has_adapters(params):
        return params
    from qajax import config as config_lib

    section = config_lib.read_saved(workdir).get("techniques", {}).get("lora")
    if section is None:
        raise CheckpointError(f"{workdir}: params carry LoRA adapters but config.json has no techniques.lora")
    return lora.merge_adapters(params, scale=lora.adapter_scale(section))


def training_step(ckpt_dir: str | Path, step: int | None = None) -> int | None:
    """The step `load_model(ckpt_dir, step=step)` restores: `step`, else the workdir's best checkpoint when
    one was kept by metric, else its latest; None for a model checkpoint (params/, no training steps)."""
    directory = Path(ckpt_dir).absolute() / TRAINING_CHECKPOINTS
    if (Path(ckpt_dir) / PARAMS_DIR).is_dir() or not directory.is_dir():
        return None
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory, options=options) as manager:
        chosen = step if step is not None else (manager.best_step() or manager.latest_step())
        if chosen is None or chosen not in manager.all_steps():
            raise CheckpointError(f"{directory}: no checkpoint at step {chosen}; have {sorted(manager.all_steps())}")
    return int(chosen)


def _training_params(directory: Path, step: int | None) -> dict:
    """The params of the run's checkpoint at `step` (None: as `training_step` chooses)."""
    step = training_step(Path(directory).parent, step)
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory, options=options) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"]
