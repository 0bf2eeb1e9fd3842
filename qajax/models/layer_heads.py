"""Span-QA heads that combine the encoder's layers (report 004, "intermediate PCE models").

The plain head (`linear`, HF's `qa_outputs`) scores token k with S^T T_k + b_s (start) and E^T T_k + b_e
(end), T_k the last layer's output. The heads here first build a start and an end representation of each
token from h_1..h_L, the outputs of the L encoder blocks (report 004 section 3.2: 1 <= i <= L, so the
embedding output hidden_states[0] is not mixed in), then score them with the same `qa_outputs`:

- `scalar_mix` (3.2.1, ELMo): T'_k = gamma * sum_i w_i h_i with w = softmax(learned scores); start and end
  have their own scores and gamma ("separate weights are used for ... the start and end logits").
- `layer_attention` (3.3.1): per token, w_i = softmax_i(q^T h_i) with q = S for the start representation
  and q = E for the end one, S and E being the columns of the `qa_outputs` kernel ("q = S ... where S and
  E come from the downstream question answering model"): no parameters of its own.
- `bilinear_layer_attention` (3.3.2): w_i = softmax_i(q^T W h_i) with one learned W [H, H] shared by the
  start and end queries (the seed names a single W).
- `extra_layer` (the issue's "extra encoder layer on top"): one freshly initialised BERT layer over the
  last hidden state (self-attention with the padding mask), then `qa_outputs`.

Gaps the seed leaves open, and what we chose: the bias of `qa_outputs` is kept (HF has it; the seed's
S^T T_k has none) and is not part of the query; new weights start like every other dense layer
(normal(initializer_range)), mix scores at 0 (equal weights) and gamma at 1; attention over layers is
computed in float32 and has no dropout. report 004's "Encoder model" (3.3.3: a transformer block that
attends over the layers with the query S or E) is not implemented; `extra_layer` is the issue's variant.

Parameters: `qa_outputs/{kernel,bias}` exactly as HF's head (so an HF QA checkpoint's head loads) and the
head's own weights under `span_head/` (absent from HF checkpoints: freshly initialised on import).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qajax.models.attention import make_attention_mask
from qajax.models.config import EncoderConfig
from qajax.models.layers import BertLayer

SPAN_HEADS = ("linear", "scalar_mix", "layer_attention", "bilinear_layer_attention", "extra_layer")
SCOPE = "span_head"  # where a layer-combination head keeps the weights HF's *ForQuestionAnswering lacks
PROJECTION = "qa_outputs"


def check_span_head(span_head: str, where: str = "span_head") -> None:
    if span_head not in SPAN_HEADS:
        raise ValueError(f"{where}={span_head!r}: expected one of {SPAN_HEADS}")


class SpanProjection(nn.Module):
    """HF's `qa_outputs` Dense(2) with its kernel columns exposed as the start and end vectors S and E."""

    config: EncoderConfig

    def setup(self):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        self.kernel = self.param("kernel", init, (c.hidden_size, 2), c.params_dtype)  # [hidden, start|end]
        self.bias = self.param("bias", nn.initializers.zeros, (2,), c.params_dtype)

    def __call__(self, representations):
        """[2 (start, end), batch, seq, hidden] -> start and end logits [batch, seq] each, in float32."""
        dtype = self.config.compute_dtype
        logits = jnp.einsum("sbth,hs->sbt", representations.astype(dtype), self.kernel.astype(dtype))
        logits = logits + self.bias.astype(dtype)[:, None, None]
        logits = logits.astype(jnp.float32)
        return logits[0], logits[1]

    def queries(self):
        return self.kernel.T  # [2, hidden]: S and E


class ScalarMix(nn.Module):
    """gamma * softmax(scores) . layers, with one (scores, gamma) pair for start and one for end."""

    num_layers: int

    @nn.compact
    def __call__(self, layers):  # [L, batch, seq, hidden] -> [2, batch, seq, hidden]
        scores = self.param("layer_scores", nn.initializers.zeros, (2, self.num_layers), jnp.float32)
        gamma = self.param("gamma", nn.initializers.ones, (2,), jnp.float32)
        weights = gamma[:, None] * jax.nn.softmax(scores, axis=-1)  # [2, L]
        return jnp.einsum("sl,lbth->sbth", weights.astype(layers.dtype), layers)


def attend_over_layers(queries, layers):
    """Per token, a softmax over the layers of q . h_i, for each query (start, end).

    queries [2, hidden], layers [L, batch, seq, hidden] -> (representations [2, batch, seq, hidden],
    weights [2, batch, seq, L] summing to 1 over the layers).
    """
    scores = jnp.einsum("sh,lbth->sbtl", queries.astype(layers.dtype), layers).astype(jnp.float32)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("sbtl,lbth->sbth", weights.astype(layers.dtype), layers), weights


class BilinearQueries(nn.Module):
    """q^T W for each query: attention with q^T W h_i is dot-product attention with the queries W^T q."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, queries):  # [2, hidden] -> [2, hidden]
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        bilinear = self.param("bilinear", init, (c.hidden_size, c.hidden_size), c.params_dtype)  # W
        return jnp.einsum("sh,hg->sg", queries.astype(jnp.float32), bilinear.astype(jnp.float32))


def layer_span_logits(
    config: EncoderConfig, span_head: str, hidden_states, attention_mask, *, segment_ids=None, deterministic
):
    """Start and end logits [batch, seq] (float32) of a layer-combination head; call it inside a compact
    module: it creates `qa_outputs` and `span_head` there.

    hidden_states [num_layers + 1, batch, seq, hidden] (embeddings first); attention_mask [batch, seq];
    segment_ids [batch, seq] for packed rows, as the encoder took them.
    """
    check_span_head(span_head)
    if span_head == "linear":
        raise ValueError("the linear head is HF's qa_outputs on the last layer; it is built by SpanQAModel")
    projection = SpanProjection(config, name=PROJECTION)
    blocks = hidden_states[1:]  # h_1..h_L: the outputs of the encoder blocks
    if span_head == "scalar_mix":
        representations = ScalarMix(blocks.shape[0], name=SCOPE)(blocks)
    elif span_head == "layer_attention":
        representations, _ = attend_over_layers(projection.queries(), blocks)
    elif span_head == "bilinear_layer_attention":
        queries = BilinearQueries(config, name=SCOPE)(projection.queries())
        representations, _ = attend_over_layers(queries, blocks)
    else:  # extra_layer
        mask = make_attention_mask(attention_mask, segment_ids)
        top, _ = BertLayer(config, deterministic, name=SCOPE)(hidden_states[-1], mask)
        representations = jnp.broadcast_to(top, (2,) + top.shape)
    return projection(representations)
