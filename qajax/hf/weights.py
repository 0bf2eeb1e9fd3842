"""Weight files of an HF folder in and out, and the PyTorch-name <-> Flax-path rewrite.

Readers return a flat `{"bert/encoder/layer/0/attention/self/query/kernel": array}` in HF's Flax layout
whatever the file format. PyTorch names become Flax paths by one rule set (the one HF's own converter
follows): `Linear.weight` -> `kernel` transposed, `Embedding.weight` -> `embedding`,
`LayerNorm.weight` -> `scale`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qajax.errors import CheckpointError

SAFETENSORS = "model.safetensors"
TORCH = "pytorch_model.bin"
FLAX = "flax_model.msgpack"
INDEX = ".index.json"
_FORMATS = (FLAX, SAFETENSORS, TORCH)  # the order HF's Flax loader would try, then the others


def _is_norm(module: str) -> bool:
    return "LayerNorm" in module or module.endswith("layer_norm")


def _is_embedding(module: str) -> bool:
    return module.endswith("_embeddings")


def torch_name_to_flax(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    parts = name.split(".")
    module, leaf = parts[-2] if len(parts) > 1 else "", parts[-1]
    leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)  # old TF-converted checkpoints
    if leaf == "weight":
        if _is_embedding(module):
            leaf = "embedding"
        elif _is_norm(module):
            leaf = "scale"
        else:
            leaf, value = "kernel", np.ascontiguousarray(value.T)
    return "/".join(parts[:-1] + [leaf]), value


def flax_path_to_torch(path: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    parts = path.split("/")
    leaf = parts[-1]
    if leaf == "kernel":
        value = np.ascontiguousarray(value.T)
    if leaf in ("kernel", "embedding", "scale"):
        leaf = "weight"
    elif leaf != "bias":
        raise CheckpointError(f"parameter {path}: cannot name leaf {leaf!r} in PyTorch")
    return ".".join(parts[:-1] + [leaf]), value


def find_weights(folder: Path) -> tuple[str, list[Path]]:
    """(format, files) of the first weight format present in `folder`, sharded or not."""
    for fmt in _FORMATS:
        if (folder / fmt).is_file():
            return fmt, [folder / fmt]
        index = folder / (fmt + INDEX)
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a weight index ({e})") from e
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that do not exist: {missing}")
            return fmt, files
    raise CheckpointError(
        f"{folder}: no weights found; expected one of {list(_FORMATS)} or their sharded {INDEX} forms"
    )


def read_flat(folder: str | Path) -> dict[str, np.ndarray]:
    """All weights of an HF folder as flat Flax paths (no family prefix added or removed)."""
    folder = Path(folder)
    fmt, files = find_weights(folder)
    flat: dict[str, np.ndarray] = {}
    for file in files:
        if fmt == FLAX:
            part = _read_msgpack(file)
        else:
            tensors = _read_safetensors(file) if fmt == SAFETENSORS else _read_torch(file)
            part = dict(torch_name_to_flax(k, v) for k, v in tensors.items() if not k.endswith("position_ids"))
        overlap = set(flat) & set(part)
        if overlap:
            raise CheckpointError(f"{file}: repeats weights of an earlier shard: {sorted(overlap)[:5]}")
        flat.update(part)
    return flat


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e


def _read_torch(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{file}: reading pytorch_model.bin needs torch (pip install 'qajax[test]')") from e
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}


def _read_msgpack(file: Path) -> dict[str, np.ndarray]:
    from flax import serialization

    from qajax import tree

    try:
        state = serialization.msgpack_restore(file.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types for corrupt input
        raise CheckpointError(f"{file}: unreadable msgpack file ({e})") from e
    return {k: np.asarray(v) for k, v in tree.flatten(state).items()}


def write_safetensors(flat_flax: dict[str, np.ndarray], file: Path) -> None:
    from safetensors.numpy import save_file

    tensors = dict(flax_path_to_torch(k, np.asarray(v)) for k, v in flat_flax.items())
    save_file(tensors, str(file), metadata={"format": "pt"})


def write_msgpack(flat_flax: dict[str, np.ndarray], file: Path) -> None:
    from flax import serialization

    from qajax import tree

    file.write_bytes(serialization.msgpack_serialize(tree.unflatten({k: np.asarray(v) for k, v in flat_flax.items()})))
