"""Attention for encoder windows (up to 512 tokens) as one Pallas TPU kernel per pass, read and written in
the projections' own [batch, seq, heads * head_dim] layout.

Why not splash attention: its kernels take [heads, seq, head_dim] per example. With BERT's head dimension of
64, that layout fills half of each 128-lane TPU tile, so every query, key, value, output and gradient in it
occupies and moves twice its size, and XLA adds a transpose into it and out of it for each of them. Splash
also keeps its logsumexp residual as [heads, seq, 128] float32 (128 copies of one number per query). On the
BERT-base config compiled for v5e (bf16, 32 x 384 per chip) those layout passes were the largest avoidable
cost of a layer.

Here a block is 128 lanes of the hidden axis (two heads of 64, four of 32), so nothing is transposed or
padded. A whole window fits on chip, so each head's softmax is computed over the full row in one go: the
forward writes only the context, and the backward recomputes the probabilities from q and k instead of
reading a saved logsumexp. Heads are picked out of a block by zeroing the other heads' lanes before each
product (a lane mask, not a lane slice: the same MXU pass, no relayout).

Masking is by ids, as splash's segment ids: a query attends to the keys whose id equals its own; padding keys
carry -1. No attention dropout (the caller says so once, as for splash). On a CPU the kernels run in Pallas'
interpreter (the tests).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

LANES = 128
MAX_SEQ = 512  # the [seq, seq] float32 scores of a few heads must fit in on-chip memory
_MASKED = -1e30  # finite: a row with no key left averages its values instead of producing NaN
_TRANS_B = (((1,), (1,)), ((), ()))  # a @ b.T


def block_width(hidden: int, head_dim: int) -> int:
    """Lanes per block: 128 where whole heads fit in them, else the whole hidden axis."""
    return LANES if hidden % LANES == 0 and LANES % head_dim == 0 else hidden


def supports(seq: int) -> bool:
    return seq <= MAX_SEQ


def window_attention(query, key, value, query_ids, key_ids, *, head_dim: int, interpret: bool = False):
    """query/key/value [batch, seq, hidden]; query_ids [batch, seq], key_ids [batch, seq] int32 -> context
    [batch, seq, hidden]. Differentiable in query, key and value."""
    seq = query.shape[1]
    padded = seq + (-seq % LANES)  # the keys are the scores' lane axis
    if padded != seq:
        widths = lambda x: ((0, 0), (0, padded - seq)) + ((0, 0),) * (x.ndim - 2)
        pad = lambda x, fill=0: jnp.pad(x, widths(x), constant_values=fill)
        query, key, value, query_ids = pad(query), pad(key), pad(value), pad(query_ids)
        key_ids = pad(key_ids, -1)
    context = _attention(query, key, value, query_ids[:, :, None], key_ids[:, None, :], head_dim, interpret)
    return context[:, :seq]


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(query, key, value, query_ids, key_ids, head_dim, interpret):
    return _forward(query, key, value, query_ids, key_ids, head_dim, interpret)


def _attention_fwd(query, key, value, query_ids, key_ids, head_dim, interpret):
    out = _forward(query, key, value, query_ids, key_ids, head_dim, interpret)
    return out, (query, key, value, query_ids, key_ids)


def _attention_bwd(head_dim, interpret, residuals, d_out):
    query, key, value, query_ids, key_ids = residuals
    dq, dk, dv = _backward(query, key, value, d_out, query_ids, key_ids, head_dim, interpret)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _head_lanes(shape, head: int, head_dim: int):
    lane = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    return (lane >= head * head_dim) & (lane < (head + 1) * head_dim)


def _probabilities(q, k, mask, lanes, scale):
    """Softmax over the keys of one head, float32 [seq, seq]."""
    scores = jax.lax.dot_general(jnp.where(lanes, q, 0), k, _TRANS_B, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores * scale, _MASKED)
    exp = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    return exp / jnp.sum(exp, axis=-1, keepdims=True)


def _forward_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, *, head_dim):
    q, k, v = q_ref[...], k_ref[...], v_ref[...]  # [seq, width]
    mask = qid_ref[...] == kid_ref[...]  # [seq, 1] == [1, seq]
    out = jnp.zeros(q.shape, jnp.float32)
    for head in range(q.shape[-1] // head_dim):
        lanes = _head_lanes(q.shape, head, head_dim)
        probs = _probabilities(q, k, mask, lanes, head_dim**-0.5)
        out = jnp.where(lanes, jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32), out)
    o_ref[...] = out.astype(o_ref.dtype)


def _backward_kernel(q_ref, k_ref, v_ref, do_ref, qid_ref, kid_ref, dq_ref, dk_ref, dv_ref, *, head_dim):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    mask = qid_ref[...] == kid_ref[...]
    scale = head_dim**-0.5
    dq = dk = dv = jnp.zeros(q.shape, jnp.float32)
    for head in range(q.shape[-1] // head_dim):
        lanes = _head_lanes(q.shape, head, head_dim)
        probs = _probabilities(q, k, mask, lanes, scale)
        d_probs = jax.lax.dot_general(jnp.where(lanes, do, 0), v, _TRANS_B, preferred_element_type=jnp.float32)
        # Softmax's backward; sum_j p_ij dp_ij is do_i . o_i, computed from what is on chip.
        d_scores = probs * (d_probs - jnp.sum(probs * d_probs, axis=-1, keepdims=True)) * scale
        d_scores = d_scores.astype(q.dtype)
        dv = jnp.where(lanes, jnp.dot(probs.T.astype(do.dtype), do, preferred_element_type=jnp.float32), dv)
        dq = jnp.where(lanes, jnp.dot(d_scores, k, preferred_element_type=jnp.float32), dq)
        dk = jnp.where(lanes, jnp.dot(d_scores.T, q, preferred_element_type=jnp.float32), dk)
    dq_ref[...], dk_ref[...], dv_ref[...] = dq.astype(dq_ref.dtype), dk.astype(dk_ref.dtype), dv.astype(dv_ref.dtype)


def _call(kernel, arrays, ids, outputs: int, head_dim: int, interpret: bool):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    batch, seq, hidden = arrays[0].shape
    width = block_width(hidden, head_dim)
    block = pl.BlockSpec((None, seq, width), lambda b, j: (b, 0, j))
    id_specs = [
        pl.BlockSpec((None, seq, 1), lambda b, j: (b, 0, 0)),  # query ids, a column
        pl.BlockSpec((None, 1, seq), lambda b, j: (b, 0, 0)),  # key ids, a row
    ]
    shape = jax.ShapeDtypeStruct(arrays[0].shape, arrays[0].dtype)
    return pl.pallas_call(
        partial(kernel, head_dim=head_dim),
        grid=(batch, hidden // width),
        in_specs=[block] * len(arrays) + id_specs,
        out_specs=[block] * outputs,
        out_shape=[shape] * outputs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
    )(*arrays, *ids)


def _forward(query, key, value, query_ids, key_ids, head_dim, interpret):
    (out,) = _call(_forward_kernel, (query, key, value), (query_ids, key_ids), 1, head_dim, interpret)
    return out


def _backward(query, key, value, d_out, query_ids, key_ids, head_dim, interpret):
    arrays = (query, key, value, d_out.astype(query.dtype))
    return tuple(_call(_backward_kernel, arrays, (query_ids, key_ids), 3, head_dim, interpret))
