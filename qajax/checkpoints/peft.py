"""LoRA runs as PEFT adapter folders, and back.

A LoRA run (`qajax.techniques.lora`) keeps, beside each targeted kernel W [in, out], `lora_a` [in, rank] and
`lora_b` [rank, out], and computes x W + (alpha / rank) x A B. PEFT computes x W^T_pt + scaling x A_pt^T B_pt^T
with `lora_A.weight` [rank, in], `lora_B.weight` [out, rank] and scaling = lora_alpha / r, so its tensors are
our adapters transposed, under `base_model.model.<PyTorch module path>`. A head that trained in full
(`train_head`) travels as PEFT's `modules_to_save`: its weights under `base_model.model.<head>.weight`.

    save_adapter("runs/lora", "adapter/")                       # adapter_config.json, adapter_model.safetensors
    params = merge_adapter(params, spec, "adapter/")             # a base model's params with the adapter merged
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np

from qajax import tree
from qajax.errors import CheckpointError
from qajax.files import atomic_directory
from qajax.hf import weights

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {"qa": "QUESTION_ANS", "classification": "SEQ_CLS", "encoder": "FEATURE_EXTRACTION"}


def _torch_module(path: str, spec) -> str:
    """`bert/encoder/layer/0/attention/self/query` -> `bert.encoder.layer.0.attention.self.query` (an HF
    base model, head "encoder", has its modules without the family prefix, as `to_hf_flat` writes them)."""
    parts = path.split("/")
    return ".".join(parts[1:] if spec.head == "encoder" else parts)


def save_adapter(workdir: str | Path, out_dir: str | Path, *, step: int | None = None, overwrite=False) -> Path:
    """Writes the LoRA run `workdir` (its checkpoint as `qajax eval` chooses it, or `step`) as a PEFT folder."""
    from qajax import config as config_lib
    from qajax.checkpoints.saved import _training_params, read_spec
    from qajax.models import layout
    from qajax.techniques import lora

    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir}: --adapter-only needs a training workdir of a LoRA run (checkpoints/)")
    spec = read_spec(workdir)
    if spec.span_head != "linear":
        raise CheckpointError(f"{workdir}: span_head={spec.span_head!r} has no PEFT / transformers form")
    params = _training_params(workdir / "checkpoints", step)
    if not lora.has_adapters(params):
        raise CheckpointError(
            f"{workdir}: not a LoRA run (no adapters in its params); export it without --adapter-only"
        )
    section = config_lib.read_saved(workdir).techniques.lora
    flat = tree.flatten(layout.unstack_layers(jax.tree.map(np.asarray, params)))
    tensors, targets = {}, []
    for path in sorted(p for p in flat if p.endswith("/lora_a")):
        module = path.rpartition("/")[0]
        name = _torch_module(module, spec)
        targets.append(name)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(flat[path].T)  # [rank, in]
        tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(flat[f"{module}/lora_b"].T)  # [out, rank]
    heads = sorted({p.split("/")[0] for p in flat if section.train_head and re.fullmatch(lora.HEAD, p)})
    for path, value in flat.items():
        if path.split("/")[0] in heads:
            name, value = weights.flax_path_to_torch(path, value)
            tensors[PREFIX + name] = value
    config = {
        "peft_type": "LORA",
        "task_type": TASK_TYPES[spec.head],
        "r": int(section.rank),
        "lora_alpha": float(section.alpha),
        "lora_dropout": float(section.dropout),
        "target_modules": targets,  # whole module paths: PEFT matches them exactly
        "modules_to_save": heads or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": config_lib.read_saved(workdir).get("model", {}).get("pretrained") or None,
    }
    from safetensors.numpy import save_file

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return Path(out_dir)


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config.json, {name: array}) of a PEFT LoRA folder, checked."""
    folder = Path(folder)
    config_file = folder / ADAPTER_CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_file}: peft_type={config.get('peft_type')!r}; only LORA adapters load")
    unsupported = {k: config[k] for k in ("use_dora", "use_rslora", "fan_in_fan_out") if config.get(k)}
    if unsupported or config.get("bias", "none") != "none" or config.get("rank_pattern") or config.get("alpha_pattern"):
        found = unsupported or {k: config.get(k) for k in ("bias", "rank_pattern", "alpha_pattern")}
        raise CheckpointError(f"{config_file}: only plain LoRA loads (r, lora_alpha, bias='none'); found {found}")
    if (folder / ADAPTER_WEIGHTS).is_file():
        from safetensors.numpy import load_file

        return config, load_file(str(folder / ADAPTER_WEIGHTS))
    raise CheckpointError(f"{folder}: no {ADAPTER_WEIGHTS}")


def merge_adapter(params, spec, folder: str | Path) -> dict:
    """`params` (a plain model in HF layout, unstacked) with the adapter of `folder` merged into its kernels
    (W + lora_alpha / r * A B) and its `modules_to_save` in place. Every adapter tensor must find its
    parameter with the shape it implies."""
    config, tensors = read_adapter(folder)
    scale = float(config["lora_alpha"]) / int(config["r"])
    flat = tree.flatten(params)
    by_torch = {}
    for path in flat:
        module, _, leaf = path.rpartition("/")
        by_torch[(_torch_module(module, spec), leaf)] = path
    merged, unused = dict(flat), []
    for name, value in tensors.items():
        if not name.startswith(PREFIX):
            unused.append(name)
            continue
        name = name[len(PREFIX) :]
        if name.endswith(".lora_A.weight"):
            module = name[: -len(".lora_A.weight")]
            path = by_torch.get((module, "kernel"))
            b = tensors.get(f"{PREFIX}{module}.lora_B.weight")
            if path is None or b is None:
                unused.append(name)
                continue
            delta = scale * (value.T.astype(np.float64) @ b.T.astype(np.float64))  # [in, out]
            if delta.shape != flat[path].shape:
                raise CheckpointError(f"{folder}: {name} gives a {delta.shape} update for {path} {flat[path].shape}")
            merged[path] = (np.asarray(flat[path], np.float64) + delta).astype(flat[path].dtype)
        elif not name.endswith(".lora_B.weight"):  # a module to save: a plain weight or bias
            flax_path, value = weights.torch_name_to_flax(name, value)
            if spec.head == "encoder":
                flax_path = f"{spec.encoder.family}/{flax_path}"
            if flax_path not in flat or np.shape(flat[flax_path]) != value.shape:
                raise CheckpointError(f"{folder}: {name} {value.shape} fits no parameter of the base model")
            merged[flax_path] = value.astype(flat[flax_path].dtype)
    if unused:
        raise CheckpointError(f"{folder}: adapter tensors without a matching base module: {unused[:4]}")
    return tree.unflatten(merged)


def load_base(workdir: str | Path, *, step: int | None = None):
    """(model, params, spec) of a LoRA run's frozen base: its params with the adapters left out (the head as
    trained, which an adapter's `modules_to_save` replaces anyway). What `save_adapter`'s adapter goes onto
    when the run started from a random or a local model that exists nowhere else."""
    from qajax.checkpoints.saved import _training_params, read_spec
    from qajax.models import layout
    from qajax.techniques import lora

    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"{workdir}: --base-only needs a training workdir of a LoRA run (checkpoints/)")
    spec = read_spec(workdir)
    params = _training_params(workdir / "checkpoints", step)
    if not lora.has_adapters(params):
        raise CheckpointError(f"{workdir}: not a LoRA run (its params have no adapters); export it without --base-only")
    flat = {p: np.asarray(v) for p, v in tree.flatten(params).items() if not re.fullmatch(lora.ADDED["adapter"], p)}
    params = layout.for_config(layout.unstack_layers(tree.unflatten(flat)), spec.encoder)
    return spec.build(), params, spec
