"""Model FLOPs of an encoder step: the matmuls alone, as MFU counts them (PaLM's appendix B convention)."""

from __future__ import annotations

from qajax.models.config import EncoderConfig


def train_flops(encoder: EncoderConfig, batch_size: int, seq_len: int, head_outputs: int = 2) -> float:
    """FLOPs of one train step (forward + backward = 3x forward) of `batch_size` sequences of `seq_len`:
    per token and layer 2 * (4 H^2 + 2 H I) for the projections and 2 * 2 * T * H for scores and context,
    plus the head's 2 * H * outputs."""
    h, i, t = encoder.hidden_size, encoder.intermediate_size, seq_len
    per_token_layer = 2 * (4 * h * h + 2 * h * i) + 4 * t * h
    forward = batch_size * t * (encoder.num_layers * per_token_layer + 2 * h * head_outputs)
    return 3.0 * forward
