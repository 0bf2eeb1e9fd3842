"""Encoder hyperparameters: one frozen dataclass for BERT, ELECTRA and ALBERT."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from qajax.errors import ConfigError
from qajax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from qajax.models.attention import PLATFORMS as ATTENTION_PLATFORMS

FAMILIES = ("bert", "electra", "albert")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "quick_gelu", "tanh")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture (what a checkpoint fixes) followed by run-time options (what a user may change).

    `family` decides three things only: where the embedding projection sits and how it is named
    (ELECTRA `embeddings_project` when embedding_size != hidden_size, ALBERT
    `encoder/embedding_hidden_mapping_in` always), the names inside a layer (HF's BERT vs ALBERT names),
    and whether layers share weights (ALBERT groups).
    """

    family: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    embedding_size: int | None = None  # None: same as hidden_size (BERT; ELECTRA-base)
    num_groups: int = 1  # ALBERT: number of distinct layer groups shared across num_layers
    inner_group_size: int = 1  # ALBERT: layers inside one group
    pad_token_id: int = 0
    classifier_dropout: float | None = None  # None: hidden_dropout, as HF does

    # Run-time options: none of these change the parameters.
    dtype: str = "float32"  # compute dtype; parameters stay param_dtype
    param_dtype: str = "float32"
    remat: bool = False  # recompute each layer in the backward pass (memory for FLOPs)
    recompute_activation: bool = False  # recompute the feed-forward activation in the backward pass (BertLayer)
    scan_layers: bool = False  # lax.scan over layers: compile once per layer, not per depth
    attention_implementation: str = "auto"  # auto | xla | cudnn | pallas | explicit (qajax.models.attention)
    attention_platform: str = ""  # what `auto` compiles for: "" = jax.default_backend(); "tpu"/"gpu" ahead of time

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family={self.family!r}: expected one of {FAMILIES}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"model.hidden_act={self.hidden_act!r}: expected one of {ACTIVATIONS}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not a multiple of model.num_heads={self.num_heads}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"model.{name}={getattr(self, name)!r}: expected one of {tuple(DTYPES)}")
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(
                f"model.attention_implementation={self.attention_implementation!r}: "
                f"expected one of {ATTENTION_IMPLEMENTATIONS}"
            )
        if self.attention_platform not in ATTENTION_PLATFORMS:
            raise ConfigError(
                f"model.attention_platform={self.attention_platform!r}: expected one of {ATTENTION_PLATFORMS}"
            )
        if self.attention_implementation == "cudnn" and self.dtype == "float32":
            raise ConfigError("model.attention_implementation='cudnn' needs model.dtype bfloat16 or float16")
        if self.family == "albert":
            if self.num_layers % self.num_groups:
                raise ConfigError(
                    f"model.num_layers={self.num_layers} must be a multiple of model.num_groups={self.num_groups}"
                )
            if self.scan_layers and self.num_groups != 1:
                raise ConfigError("model.scan_layers with ALBERT needs model.num_groups=1 (one shared group)")
        elif self.num_groups != 1 or self.inner_group_size != 1:
            raise ConfigError(f"model.num_groups/inner_group_size are ALBERT options, not {self.family}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def platform(self) -> str:
        """The platform the model is compiled for: `attention_platform`, else this host's backend."""
        import jax

        return self.attention_platform or jax.default_backend()

    @property
    def per_element_dropout(self) -> bool:
        """Dropout masks drawn per element on accelerators, packed 16-bit on the CPU (`qajax.models.dropout`)."""
        return self.platform != "cpu"

    @property
    def word_lookup_dtype(self):
        """The dtype word rows are looked up in before the cast to `dtype`. On GPUs the parameters' (float32):
        no compute-dtype copy of the table and its gradient is held (H100 compile of BERT-base in bf16: 47 MB
        fewer temporaries). Elsewhere the table is cast first, so on TPUs the table's gradient is reduced
        across chips in the compute dtype (v5e: 2% fewer bytes a step than float32 rows)."""
        return self.params_dtype if self.platform in ("gpu", "cuda", "rocm") else self.compute_dtype

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown encoder config keys {unknown}; expected some of {sorted(known)}")
        return cls(**values)
