"""The model and batch every `qajax bench` entry runs, and a synthetic batch of that shape."""

from __future__ import annotations

import dataclasses

import numpy as np

from qajax.errors import ConfigError
from qajax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from qajax.models.config import EncoderConfig
from qajax.models.flops import train_flops


@dataclasses.dataclass(frozen=True)
class Shape:
    num_layers: int = 6  # MiniLM-L6-H384: the reference shape of the brief
    hidden_size: int = 384
    num_heads: int = 12
    intermediate_size: int = 1536
    vocab_size: int = 30522
    seq_len: int = 128
    batch_size: int = 16
    dtype: str = "float32"
    # The qajax entries' `model.attention_implementation`; None leaves EncoderConfig's default (auto), so that
    # a bench without the option compiles exactly the step it compiled before the option existed.
    attention_implementation: str | None = None

    def __post_init__(self):
        if self.attention_implementation not in (None, *ATTENTION_IMPLEMENTATIONS):
            raise ConfigError(
                f"--attention-implementation {self.attention_implementation!r}: "
                f"expected one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
            )

    def encoder(self, **options) -> EncoderConfig:
        if self.attention_implementation is not None:
            options.setdefault("attention_implementation", self.attention_implementation)
        return EncoderConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            dtype=self.dtype,
            **options,
        )

    def hf_config(self):
        import transformers

        return transformers.BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
        )

    def train_flops(self) -> float:
        """Model FLOPs of one train step (`qajax.models.flops.train_flops`)."""
        return train_flops(self.encoder(), self.batch_size, self.seq_len)


def synthetic_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, t = shape.batch_size, shape.seq_len
    return {
        "input_ids": rng.integers(min(1000, shape.vocab_size // 2), shape.vocab_size, (b, t)).astype(np.int32),
        "attention_mask": np.ones((b, t), np.int32),
        "token_type_ids": (np.arange(t)[None, :] >= t // 4).astype(np.int32).repeat(b, 0),
        "start_positions": rng.integers(0, t, b).astype(np.int32),
        "end_positions": rng.integers(0, t, b).astype(np.int32),
    }
