"""One encoder family: BERT, ELECTRA and ALBERT in Flax Linen.

Here: the embeddings, the pooler and `Encoder`, which wires them around the layers of `qajax.models.layers`.
The attention and feed-forward math is written once there (`attend`, `project_add_norm`); the families
differ only in where the parameters are named and whether layers share them, so that the parameter tree is
exactly Hugging Face's Flax layout (`bert/encoder/layer/0/attention/self/query/kernel`,
`albert/encoder/albert_layer_groups/0/albert_layers/0/attention/query/kernel`, ...). Porting, LoRA
surgery and export are then path rewrites.

With `scan_layers`, BERT/ELECTRA layer parameters are stacked on a leading axis under
`encoder/layer/...` (see `qajax.models.layout` for the conversion); ALBERT's one shared group is
scanned with its parameters broadcast, so its tree does not change.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from qajax.models.attention import make_attention_mask
from qajax.models.config import EncoderConfig
from qajax.models.dropout import Dropout
from qajax.models.layers import AlbertEncoder, BertEncoder, dense, layer_norm


class EncoderOutput(NamedTuple):
    last_hidden_state: jax.Array  # [batch, seq, hidden]
    pooler_output: jax.Array | None = None  # [batch, hidden]; BERT/ALBERT with a pooler only
    hidden_states: jax.Array | None = None  # [num_layers + 1, batch, seq, hidden]: embeddings first
    attentions: jax.Array | None = None  # [num_attention_layers, batch, heads, seq, seq]


class Embeddings(nn.Module):
    """(soft prompt ++ word) + position + token type -> LayerNorm -> dropout, in the embedding dimension.

    `inputs_embeds` replaces the word lookup (SMART perturbs it); `prompt_embeds` [prompt, embedding] or
    [batch, prompt, embedding] is prepended to the words, as prompt tuning does; the caller passes
    token types and positions for the prompt and the words together.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, *, inputs_embeds, prompt_embeds, deterministic):
        c = self.config
        embed = lambda num, name, dtype=c.compute_dtype: nn.Embed(
            num,
            c.embedding_dim,
            dtype=dtype,
            param_dtype=c.params_dtype,
            embedding_init=nn.initializers.normal(c.initializer_range),
            name=name,
        )
        # In which dtype the word rows are looked up is measured per platform (EncoderConfig.word_lookup_dtype).
        if inputs_embeds is None:
            words = embed(c.vocab_size, "word_embeddings", c.word_lookup_dtype)(input_ids)
        else:
            words = inputs_embeds
        words = words.astype(c.compute_dtype)
        if prompt_embeds is not None:
            prompt = prompt_embeds.astype(c.compute_dtype)
            if prompt.ndim == 2:
                prompt = jnp.broadcast_to(prompt, (words.shape[0],) + prompt.shape)
            words = jnp.concatenate([prompt, words], axis=1)
        hidden = (
            words
            + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids)
            + embed(c.max_position_embeddings, "position_embeddings")(position_ids)
        )
        hidden = layer_norm(c, "LayerNorm")(hidden)
        return Dropout(c.hidden_dropout, c.per_element_dropout)(hidden, deterministic=deterministic)


class Pooler(nn.Module):  # BERT `pooler/dense`
    config: EncoderConfig

    @nn.compact
    def __call__(self, first_token):
        return jnp.tanh(dense(self.config, self.config.hidden_size, "dense")(first_token))


class Encoder(nn.Module):
    """The encoder body, named by family (`bert`, `electra`, `albert`) by the model that holds it."""

    config: EncoderConfig
    add_pooling_layer: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids=None,  # [batch, seq] int
        attention_mask=None,  # [batch, seq] 1 = token, 0 = padding
        token_type_ids=None,
        position_ids=None,
        *,
        inputs_embeds=None,  # [batch, seq, embedding]: replaces the word-embedding lookup
        prompt_embeds=None,  # [prompt, embedding] or [batch, prompt, embedding]: prepended soft prompt
        segment_ids=None,  # [batch, seq] int: windows packed in a row attend within their window; 0 = padding
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        c = self.config
        # 1. The inputs: defaults for the optional ones, and the soft prompt's place in front of the words.
        num_prompt = _check_inputs(c, input_ids, inputs_embeds, prompt_embeds, segment_ids)
        attention_mask, token_type_ids, position_ids = _with_prompt(
            _default_inputs(input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids), num_prompt
        )
        # 2. The embeddings, projected to the hidden size where the family does so there.
        embedded = Embeddings(c, name="embeddings")(
            input_ids,
            token_type_ids,
            position_ids,
            inputs_embeds=inputs_embeds,
            prompt_embeds=prompt_embeds,
            deterministic=deterministic,
        )
        if c.family == "electra" and c.embedding_dim != c.hidden_size:
            embedded = dense(c, c.hidden_size, "embeddings_project")(embedded)
        # 3. The layers.
        body = AlbertEncoder if c.family == "albert" else BertEncoder
        encoder = body(c, deterministic, output_attentions, output_hidden_states, name="encoder")
        first, hidden, hidden_states, probs = encoder(embedded, make_attention_mask(attention_mask, segment_ids))
        # 4. The outputs, without the soft-prompt positions so that they line up with the input tokens.
        hidden = hidden[:, num_prompt:]
        pooled = _pool(c, hidden[:, 0]) if self.add_pooling_layer else None
        stacked_states = None
        if output_hidden_states:
            stacked_states = jnp.stack([first] + hidden_states)[:, :, num_prompt:]
        stacked_probs = jnp.stack(probs) if output_attentions else None
        return EncoderOutput(hidden, pooled, stacked_states, stacked_probs)


def _check_inputs(c: EncoderConfig, input_ids, inputs_embeds, prompt_embeds, segment_ids) -> int:
    """The number of soft-prompt positions, once the inputs are known to fit together."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    seq = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
    num_prompt = 0 if prompt_embeds is None else prompt_embeds.shape[-2]
    if num_prompt and segment_ids is not None:
        raise ValueError("segment_ids (packed rows) with a soft prompt: which window would the prompt join?")
    if num_prompt + seq > c.max_position_embeddings:
        raise ValueError(
            f"{num_prompt} prompt + {seq} tokens exceed max_position_embeddings={c.max_position_embeddings}"
        )
    return num_prompt


def _default_inputs(input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids):
    """(attention_mask, token_type_ids, position_ids) [batch, seq] each: all tokens, type 0, 0..seq-1 when absent."""
    batch, seq = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
    ones = jnp.ones((batch, seq), jnp.int32)
    attention_mask = ones if attention_mask is None else attention_mask
    token_type_ids = jnp.zeros_like(ones) if token_type_ids is None else token_type_ids
    position_ids = jnp.broadcast_to(jnp.arange(seq), (batch, seq)) if position_ids is None else position_ids
    return attention_mask, token_type_ids, position_ids


def _with_prompt(inputs, num_prompt: int):
    """The prompt takes positions 0..P-1 and token type 0, and is always attended to."""
    attention_mask, token_type_ids, position_ids = inputs
    if not num_prompt:
        return inputs
    batch = attention_mask.shape[0]
    prompt_ones = jnp.ones((batch, num_prompt), jnp.int32)
    attention_mask = jnp.concatenate([prompt_ones, attention_mask], axis=1)
    token_type_ids = jnp.concatenate([0 * prompt_ones, token_type_ids], axis=1)
    prompt_positions = jnp.broadcast_to(jnp.arange(num_prompt), (batch, num_prompt))
    position_ids = jnp.concatenate([prompt_positions, position_ids + num_prompt], axis=1)
    return attention_mask, token_type_ids, position_ids


def _pool(c: EncoderConfig, first_token):
    """The pooled output, in the calling module's scope: BERT `pooler/dense`, ALBERT `pooler`."""
    if c.family == "electra":
        raise ValueError("ELECTRA has no pooler")
    if c.family == "albert":
        return jnp.tanh(dense(c, c.hidden_size, "pooler")(first_token))
    return Pooler(c, name="pooler")(first_token)


def lookup_word_embeddings(params, config: EncoderConfig, input_ids):
    """The word embeddings of `input_ids` from a model's params, for callers that perturb them (SMART)."""
    table = params[config.family]["embeddings"]["word_embeddings"]["embedding"]
    return jnp.take(table, input_ids, axis=0).astype(config.compute_dtype)
