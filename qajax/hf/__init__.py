"""Hugging Face checkpoints in and out.

    model, params, spec = qajax.hf.from_pretrained("path/to/hf-folder", head="qa")
    out = model.apply({"params": params}, input_ids, attention_mask=mask, token_type_ids=types)
    qajax.hf.save_pretrained(model, params, spec, "out-folder", formats=("flax", "pt"))

The written folder loads in transformers with `FlaxAutoModelForQuestionAnswering` (flax_model.msgpack) and
`AutoModelForQuestionAnswering` (model.safetensors). PyTorch weights are written from our own parameter
tree (names and transposes) rather than through transformers' Flax-to-PyTorch path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qajax import tree
from qajax.errors import CheckpointError
from qajax.files import atomic_directory
from qajax.hf import config_map, weights
from qajax.models import layer_heads, layout
from qajax.models.heads import ClassificationModel, EncoderModel, SpanQAModel
from qajax.models.merge import merge_params
from qajax.models.spec import ModelSpec

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Weights a pretrained checkpoint may carry that no fine-tuning head uses: MLM / discriminator / SOP heads.
PRETRAINING_HEADS = (
    r"cls/.*",
    r"discriminator_predictions/.*",
    r"generator_predictions/.*",
    r"generator_lm_head/.*",
    r"predictions/.*",
    r"sop_classifier/.*",
)
_TASK_HEADS = {"qa": r"qa_outputs/.*", "classification": r"classifier/.*"}
_ENCODER_ROOTS = ("embeddings", "encoder", "pooler", "embeddings_project")


def _pooler(family: str) -> str:
    return rf"{family}/pooler/.*"


def from_pretrained(
    path: str | Path,
    head: str = "qa",
    dtype="float32",
    *,
    num_labels: int | None = None,
    seed: int = 0,
    span_head: str = "linear",
    **encoder_options,
):
    """(model, params, spec) from an HF folder (safetensors, pytorch_model.bin or flax_model.msgpack, sharded
    or not). `encoder_options` are run-time EncoderConfig fields (remat, scan_layers, ...). A layer-combination
    `span_head` keeps the folder's `qa_outputs` if it has one; its own weights start fresh."""
    folder = Path(path)
    config_file = folder / "config.json"
    if (folder / "spec.json").is_file():  # its config.json, if any, is a run's config, not a model's
        kind = "a training workdir" if (folder / "checkpoints").is_dir() else "a qajax model checkpoint"
        raise CheckpointError(
            f"{folder} is {kind}, not a Hugging Face folder: it needs no import. Use it as it is (qajax eval / "
            f"predict / export-hf CKPT, or --set model.pretrained={folder}), or `qajax export-hf {folder} OUT` "
            "for transformers"
        )
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: invalid JSON ({e})") from e
    dtype = jnp.dtype(dtype).name
    encoder = config_map.encoder_config_from_hf(hf, source=str(config_file), dtype=dtype, **encoder_options)
    num_labels = num_labels or config_map.num_labels_from_hf(hf)
    tokenizer_dir = str(folder.absolute()) if any((folder / f).is_file() for f in TOKENIZER_FILES) else None
    spec = ModelSpec(encoder, head, num_labels, hf, tokenizer_dir, span_head)
    params = load_weights(spec, folder, seed=seed)
    return spec.build(), params, spec


def load_weights(spec: ModelSpec, folder: Path, *, seed: int = 0) -> dict:
    """The HF folder's weights merged into fresh params for `spec` (its head freshly initialised if absent)."""
    family = spec.encoder.family
    loaded = weights.read_flat(folder)
    loaded = {(f"{family}/{p}" if p.split("/")[0] in _ENCODER_ROOTS else p): v for p, v in loaded.items()}
    may_be_missing = [_TASK_HEADS[spec.head]] if spec.head in _TASK_HEADS else []
    if spec.span_head != "linear":
        may_be_missing.append(rf"{layer_heads.SCOPE}/.*")  # no HF model has a layer-combination head
    if spec.head != "qa":
        may_be_missing.append(_pooler(family))  # base checkpoints without a pooler
    may_be_unused = [*PRETRAINING_HEADS, *_TASK_HEADS.values(), _pooler(family)]
    hf_layout = spec.replace(encoder=spec.encoder.replace(scan_layers=False, remat=False))
    init = _init_params(hf_layout, seed)
    params, _ = merge_params(
        init, loaded, may_be_missing=may_be_missing, may_be_unused=may_be_unused, source=str(folder)
    )
    return layout.for_config(params, spec.encoder)


def _init_params(spec: ModelSpec, seed: int) -> dict:
    model = spec.build()
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(lambda rng: model.init(rng, ids)["params"])(jax.random.key(seed))
    return jax.tree.map(np.asarray, params)


def expected_paths(spec: ModelSpec) -> dict[str, tuple]:
    """Path -> shape of the HF-layout params of `spec`, without allocating them."""
    model = spec.replace(encoder=spec.encoder.replace(scan_layers=False, remat=False)).build()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return {path: tuple(leaf.shape) for path, leaf in tree.flatten(shapes).items()}


def to_hf_flat(params, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Flat HF-Flax-layout numpy weights of `params` (unstacked, checked against `spec`)."""
    if spec.span_head != "linear":
        # HF's *ForQuestionAnswering reads only the last layer: the exported model would answer differently.
        raise CheckpointError(
            f"span_head={spec.span_head!r}: Hugging Face has no layer-combination QA head, so this model cannot "
            "be exported as one; train with span_head='linear' to export, or use the qajax checkpoint"
        )
    flat = {path: np.asarray(jax.device_get(v)) for path, v in tree.flatten(layout.unstack_layers(params)).items()}
    expected = expected_paths(spec)
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"params do not match the {spec.encoder.family} {spec.head} model: missing {missing[:5]}, "
            f"unexpected {extra[:5]} (merge LoRA adapters or strip soft prompts before export)"
        )
    for path, shape in expected.items():
        if flat[path].shape != shape:
            raise CheckpointError(f"shape mismatch at {path}: params have {flat[path].shape}, expected {shape}")
    if spec.head == "encoder":  # HF base models keep their weights without the family prefix
        flat = {path.split("/", 1)[1]: v for path, v in flat.items()}
    return flat


_HEAD_OF_MODEL = {SpanQAModel: "qa", ClassificationModel: "classification", EncoderModel: "encoder"}


def save_pretrained(model, params, spec: ModelSpec, out_dir, formats=("flax", "pt"), *, overwrite=False) -> Path:
    """Writes an HF folder (config.json, flax_model.msgpack and/or model.safetensors, tokenizer files)."""
    unknown = set(formats) - {"flax", "pt"}
    if unknown or not formats:
        raise CheckpointError(f"formats={formats!r}: expected some of ('flax', 'pt')")
    if _HEAD_OF_MODEL.get(type(model)) != spec.head:
        raise CheckpointError(f"model {type(model).__name__} does not match spec head {spec.head!r}")
    flat = to_hf_flat(params, spec)
    hf = config_map.hf_config_from_encoder(spec.encoder, spec.head, spec.num_labels, spec.hf_config)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
        if "flax" in formats:
            weights.write_msgpack(flat, tmp / weights.FLAX)
        if "pt" in formats:
            weights.write_safetensors(flat, tmp / weights.SAFETENSORS)
        copy_tokenizer(spec.tokenizer_dir, tmp)
    return Path(out_dir)


def copy_tokenizer(source: str | None, dest: Path) -> list[str]:
    if source is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, dest / name)
            copied.append(name)
    return copied
