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
carry -1. Attention dropout is applied inside both kernels, its mask a hash of each score's position and a
seed per example (`keep_mask`): the backward pass draws the forward's mask again, nothing is stored, and the
same integer arithmetic runs on a TPU and in Pallas' interpreter on a CPU (the tests), where the TPU's
hardware random numbers are not emulated.
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


def window_attention(
    query, key, value, query_ids, key_ids, seeds=None, *, head_dim: int, dropout_rate: float = 0.0,
    interpret: bool = False,
):  # fmt: skip
    """query/key/value [batch, seq, hidden]; query_ids [batch, seq], key_ids [batch, seq] int32 -> context
    [batch, seq, hidden]. Differentiable in query, key and value. With `dropout_rate` > 0, `seeds` (int32
    [batch], from `example_seeds`) seed the attention dropout drawn inside the kernels (`keep_mask`)."""
    batch, seq = query.shape[:2]
    padded = seq + (-seq % LANES)  # the keys are the scores' lane axis
    if padded != seq:
        widths = lambda x: ((0, 0), (0, padded - seq)) + ((0, 0),) * (x.ndim - 2)
        pad = lambda x, fill=0: jnp.pad(x, widths(x), constant_values=fill)
        query, key, value, query_ids = pad(query), pad(key), pad(value), pad(query_ids)
        key_ids = pad(key_ids, -1)
    threshold = drop_threshold(dropout_rate)
    seeds = seeds if threshold else jnp.zeros((batch,), jnp.int32)
    ids = (query_ids[:, :, None], key_ids[:, None, :], seeds[:, None, None])
    context = _attention(query, key, value, ids, (head_dim, threshold, interpret))
    return context[:, :seq]


# Attention dropout. The kernels hash each score's position with a seed per example, so the backward pass
# draws the forward's mask again from the same numbers, with no mask in memory and no hardware random-number
# state (which Pallas' interpreter on a CPU does not emulate: the tests run the same code as a TPU).
_MIX1, _MIX2 = 0x85EBCA6B - 2**32, 0xC2B2AE35 - 2**32  # murmur3's finalizer, as int32
_GOLDEN = 0x9E3779B9 - 2**32


def _mix(h):
    """murmur3's 32-bit finalizer on int32 bits (wrapping products, logical shifts): avalanches every bit."""
    shift = jax.lax.shift_right_logical
    h = (h ^ shift(h, 16)) * jnp.int32(_MIX1)
    h = (h ^ shift(h, 13)) * jnp.int32(_MIX2)
    return h ^ shift(h, 16)


def drop_threshold(rate: float) -> int:
    """A 31-bit hash below this is dropped: the rate quantized to 2**-31."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"attention dropout rate {rate}: expected 0 <= rate < 1")
    return round(rate * 2**31)


def example_seeds(key, batch: int):
    """int32 [batch]: one seed per example (global index, so shards of a batch draw different masks)."""
    base = jax.lax.bitcast_convert_type(jax.random.bits(key, (), jnp.uint32), jnp.int32)
    return _mix(base ^ _mix(jnp.arange(batch, dtype=jnp.int32) * jnp.int32(_GOLDEN) + 1))


def _keep(seed, block, head, shape, threshold):
    """The kept scores of one head of one block, bool [seq, seq]; `seed` is int32 [1, 1] (or broadcastable)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    head_seed = _mix(seed ^ _mix(jnp.full((1, 1), block * 64 + head + 1, jnp.int32) * jnp.int32(_GOLDEN)))
    bits = _mix((rows * shape[1] + cols) ^ head_seed)
    return jax.lax.shift_right_logical(bits, 1) >= threshold


def keep_mask(seeds, *, num_heads: int, head_dim: int, seq: int, dropout_rate: float):
    """bool [batch, heads, seq, seq]: the mask the kernels apply (for tests and references); `seq` padded to
    a multiple of 128 as `window_attention` pads it."""
    threshold = drop_threshold(dropout_rate)
    per_block = block_width(num_heads * head_dim, head_dim) // head_dim
    one = lambda seed, n: _keep(seed[None, None], n // per_block, n % per_block, (seq, seq), threshold)
    return jax.vmap(lambda seed: jnp.stack([one(seed, n) for n in range(num_heads)]))(seeds)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(query, key, value, ids, static):
    return _forward(query, key, value, ids, static)


def _attention_fwd(query, key, value, ids, static):
    return _forward(query, key, value, ids, static), (query, key, value, ids)


def _attention_bwd(static, residuals, d_out):
    query, key, value, ids = residuals
    dq, dk, dv = _backward(query, key, value, d_out, ids, static)
    return dq, dk, dv, None


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


def _dropped(x, keep, threshold):
    """x where kept, scaled by the inverse of the quantized keep probability; zero elsewhere."""
    return jnp.where(keep, x * (2**31 / (2**31 - threshold)), 0.0)


def _forward_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, seed_ref, o_ref, *, head_dim, threshold):
    from jax.experimental import pallas as pl

    q, k, v = q_ref[...], k_ref[...], v_ref[...]  # [seq, width]
    mask = qid_ref[...] == kid_ref[...]  # [seq, 1] == [1, seq]
    out = jnp.zeros(q.shape, jnp.float32)
    for head in range(q.shape[-1] // head_dim):
        lanes = _head_lanes(q.shape, head, head_dim)
        probs = _probabilities(q, k, mask, lanes, head_dim**-0.5)
        if threshold:
            probs = _dropped(probs, _keep(seed_ref[...], pl.program_id(1), head, probs.shape, threshold), threshold)
        out = jnp.where(lanes, jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32), out)
    o_ref[...] = out.astype(o_ref.dtype)


def _backward_kernel(
    q_ref, k_ref, v_ref, do_ref, qid_ref, kid_ref, seed_ref, dq_ref, dk_ref, dv_ref, *, head_dim, threshold
):
    from jax.experimental import pallas as pl

    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    mask = qid_ref[...] == kid_ref[...]
    scale = head_dim**-0.5
    dq = dk = dv = jnp.zeros(q.shape, jnp.float32)
    for head in range(q.shape[-1] // head_dim):
        lanes = _head_lanes(q.shape, head, head_dim)
        probs = _probabilities(q, k, mask, lanes, scale)
        d_probs = jax.lax.dot_general(jnp.where(lanes, do, 0), v, _TRANS_B, preferred_element_type=jnp.float32)
        used = probs  # what multiplied the values: the probabilities after dropout
        if threshold:
            keep = _keep(seed_ref[...], pl.program_id(1), head, probs.shape, threshold)
            used, d_probs = _dropped(probs, keep, threshold), _dropped(d_probs, keep, threshold)
        # Softmax's backward; sum_j p_ij dp_ij is computed from what is on chip.
        d_scores = probs * (d_probs - jnp.sum(probs * d_probs, axis=-1, keepdims=True)) * scale
        d_scores = d_scores.astype(q.dtype)
        dv = jnp.where(lanes, jnp.dot(used.T.astype(do.dtype), do, preferred_element_type=jnp.float32), dv)
        dq = jnp.where(lanes, jnp.dot(d_scores, k, preferred_element_type=jnp.float32), dq)
        dk = jnp.where(lanes, jnp.dot(d_scores.T, q, preferred_element_type=jnp.float32), dk)
    dq_ref[...], dk_ref[...], dv_ref[...] = dq.astype(dq_ref.dtype), dk.astype(dk_ref.dtype), dv.astype(dv_ref.dtype)


def _call(kernel, arrays, ids, outputs: int, static):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    head_dim, threshold, interpret = static
    batch, seq, hidden = arrays[0].shape
    width = block_width(hidden, head_dim)
    block = pl.BlockSpec((None, seq, width), lambda b, j: (b, 0, j))
    id_specs = [
        pl.BlockSpec((None, seq, 1), lambda b, j: (b, 0, 0)),  # query ids, a column
        pl.BlockSpec((None, 1, seq), lambda b, j: (b, 0, 0)),  # key ids, a row
        pl.BlockSpec((None, 1, 1), lambda b, j: (b, 0, 0)),  # the example's dropout seed
    ]
    shape = jax.ShapeDtypeStruct(arrays[0].shape, arrays[0].dtype)
    return pl.pallas_call(
        partial(kernel, head_dim=head_dim, threshold=threshold),
        grid=(batch, hidden // width),
        in_specs=[block] * len(arrays) + id_specs,
        out_specs=[block] * outputs,
        out_shape=[shape] * outputs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
    )(*arrays, *ids)


def _forward(query, key, value, ids, static):
    (out,) = _call(_forward_kernel, (query, key, value), ids, 1, static)
    return out


def _backward(query, key, value, d_out, ids, static):
    arrays = (query, key, value, d_out.astype(query.dtype))
    return tuple(_call(_backward_kernel, arrays, ids, 3, static))
