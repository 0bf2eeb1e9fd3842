"""Models = the encoder (named by family, as HF names it) + one head.

All three take the encoder's inputs and options (`inputs_embeds`, `prompt_embeds`, `deterministic`,
`output_hidden_states`, `output_attentions`) and return a NamedTuple whose logits are float32 whatever
the compute dtype, so that losses and metrics never see bf16.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from qajax.models.config import EncoderConfig
from qajax.models.dropout import Dropout
from qajax.models.encoder import Encoder, EncoderOutput
from qajax.models.layer_heads import check_span_head, layer_span_logits
from qajax.models.layers import ACTIVATIONS, dense

HEADS = ("qa", "classification", "encoder")


class SpanLogits(NamedTuple):
    start_logits: jax.Array  # [batch, seq]
    end_logits: jax.Array  # [batch, seq]
    hidden_states: jax.Array | None = None  # [num_layers + 1, batch, seq, hidden]
    attentions: jax.Array | None = None


class ClassLogits(NamedTuple):
    logits: jax.Array  # [batch, num_labels]; num_labels == 1 is regression
    hidden_states: jax.Array | None = None
    attentions: jax.Array | None = None


class SpanQAModel(nn.Module):
    """HF `*ForQuestionAnswering`: a Dense(2) `qa_outputs` on every token; with another `span_head`, a
    combination of the encoder's layers first (see `qajax.models.layer_heads`)."""

    config: EncoderConfig
    span_head: str = "linear"  # one of layer_heads.SPAN_HEADS

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **options):
        c = self.config
        if self.span_head == "linear":
            out = Encoder(c, name=c.family)(input_ids, attention_mask, token_type_ids, position_ids, **options)
            logits = dense(c, 2, "qa_outputs")(out.last_hidden_state).astype(jnp.float32)  # [B, T, 2]
            return SpanLogits(logits[..., 0], logits[..., 1], out.hidden_states, out.attentions)
        wanted_states = options.pop("output_hidden_states", False)
        out = Encoder(c, name=c.family)(
            input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=True, **options
        )
        if attention_mask is None:
            attention_mask = jnp.ones(out.last_hidden_state.shape[:2], jnp.int32)
        start, end = layer_span_logits(
            c,
            self.span_head,
            out.hidden_states,
            attention_mask,
            segment_ids=options.get("segment_ids"),
            deterministic=options.get("deterministic", True),
        )
        return SpanLogits(start, end, out.hidden_states if wanted_states else None, out.attentions)


class ElectraClassificationHead(nn.Module):  # HF `classifier/{dense,out_proj}`
    config: EncoderConfig
    num_labels: int

    @nn.compact
    def __call__(self, hidden, deterministic):
        c = self.config
        rate = c.hidden_dropout if c.classifier_dropout is None else c.classifier_dropout
        dropout = Dropout(rate, c.per_element_dropout)
        x = dropout(hidden[:, 0], deterministic=deterministic)
        # ELECTRA's authors use GELU here where BERT's pooler uses tanh (as HF does).
        x = ACTIVATIONS["gelu"](dense(c, c.hidden_size, "dense")(x))
        x = dropout(x, deterministic=deterministic)
        return dense(c, self.num_labels, "out_proj")(x)


class ClassificationModel(nn.Module):
    """HF `*ForSequenceClassification`: pooled [CLS] -> dropout -> `classifier` (ELECTRA: its own head)."""

    config: EncoderConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **options):
        c = self.config
        deterministic = options.get("deterministic", True)
        pooled_family = c.family != "electra"
        encoder = Encoder(c, add_pooling_layer=pooled_family, name=c.family)
        out = encoder(input_ids, attention_mask, token_type_ids, position_ids, **options)
        if pooled_family:
            rate = c.hidden_dropout if c.classifier_dropout is None else c.classifier_dropout
            pooled = Dropout(rate, c.per_element_dropout)(out.pooler_output, deterministic=deterministic)
            logits = dense(c, self.num_labels, "classifier")(pooled)
        else:
            logits = ElectraClassificationHead(c, self.num_labels, name="classifier")(
                out.last_hidden_state, deterministic
            )
        return ClassLogits(logits.astype(jnp.float32), out.hidden_states, out.attentions)


class EncoderModel(nn.Module):
    """HF `*Model`: the encoder alone (with the pooler for BERT/ALBERT), for features and BERTScore."""

    config: EncoderConfig

    @nn.compact
    def __call__(
        self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **options
    ) -> EncoderOutput:
        c = self.config
        encoder = Encoder(c, add_pooling_layer=c.family != "electra", name=c.family)
        return encoder(input_ids, attention_mask, token_type_ids, position_ids, **options)


def build_model(config: EncoderConfig, head: str, num_labels: int = 2, span_head: str = "linear") -> nn.Module:
    check_span_head(span_head)
    if span_head != "linear" and head != "qa":
        raise ValueError(f"span_head={span_head!r} is a span-QA head; head={head!r} takes only 'linear'")
    if head == "qa":
        return SpanQAModel(config, span_head)
    if head == "classification":
        return ClassificationModel(config, num_labels)
    if head == "encoder":
        return EncoderModel(config)
    raise ValueError(f"head={head!r}: expected one of {HEADS}")


def init_params(model: nn.Module, rng: jax.Array, seq_len: int = 8) -> dict:
    """Fresh parameters; shapes only depend on the config, so a short dummy batch is enough."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return jax.jit(lambda r: model.init(r, ids)["params"])(rng)
