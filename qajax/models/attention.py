"""Scaled dot-product attention, once per implementation (`model.attention_implementation`).

    explicit  scores and probabilities in float32 [batch, heads, seq, seq] in memory. The only path that
              returns the probabilities, so every implementation falls back to it for output_attentions.
              Attention dropout draws from the model's own `dropout` rng.
    xla       `jax.nn.dot_product_attention(implementation="xla")` with a boolean mask. It has no dropout:
              in training with attention dropout > 0 it falls back to explicit.
    cudnn     cuDNN's fused flash attention (NVIDIA GPUs; float16/bfloat16 compute only, head dim a multiple
              of 8). Padding goes in as key lengths, the one form whose shape cuDNN accepts (a [batch, 1, 1,
              seq] mask is refused: "Bias must have same seq length as QKV"). The lengths assume the tokens
              of a row are a prefix: featurizers right-pad and a soft prompt is prepended as tokens. Packed
              rows (segment ids) go in as a full [batch, 1, seq, seq] mask instead (cuDNN trains with a
              mask only for even sequence lengths).
    pallas    a Pallas TPU kernel. Windows of up to 512 tokens: `qajax.models.window_attention`, which reads
              and writes the projections' [batch, seq, hidden] layout in 128-lane blocks of whole heads and
              keeps each softmax row on chip (no transposes, no lane padding, no saved logsumexp). Longer
              sequences: the splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`,
              vmapped over the batch, fused backward), its sequence padded to a multiple of 128. Both take
              padding and packing as segment ids. In bfloat16 they need the default matmul precision:
              Mosaic refuses float32-precision products of bfloat16 ("Bad lhs type" under
              JAX_DEFAULT_MATMUL_PRECISION=highest).
    auto      the fused kernel of the platform compiled for: cpu -> xla (the fastest CPU path: the
              behaviour before this module existed), gpu -> cudnn (xla when computing in float32, which
              cuDNN does not take), tpu -> pallas.

Attention dropout (training only). explicit applies it; xla falls back to explicit for it. cudnn applies
it inside the kernel: cuDNN's Philox stream, seeded per layer from the module path (a static int) and
advanced by XLA on every call, not the model's rng. XLA advances that stream once per execution of each
kernel call, so a forward and its backward draw the same mask only when each runs once per step in the same
order; under `scan_layers` the backward loop runs the layers in reverse, so there cudnn trains without
attention dropout. pallas applies it inside the window kernel, seeded per example from the model's `dropout`
rng (`qajax.models.window_attention`); splash, for sequences over 512 tokens, has none. Where a kernel
trains without it, it says so once (`logging.warning`); hidden dropout still applies, and asking for
`explicit` keeps attention dropout on any platform. An unscanned ALBERT applies its one shared layer
several times with one cuDNN seed, so those applications share a mask.

The platform is `jax.default_backend()` unless the caller names the target: an ahead-of-time compile for
an absent TPU or GPU sets `model.attention_platform` ("tpu", "gpu") or calls `resolve_implementation`.

Padded query rows: every implementation gives the tokens the same outputs; the rows of padding (which no
token attends to) differ between implementations, and a row with no token at all is finite everywhere.

Pallas kernels are not partitioned by XLA: with several devices, trace under `jax.set_mesh(mesh)` and the
kernel runs per device over the batch split across every mesh axis (as `qajax.train.parallel` splits it).
Without a mesh in context on a host with several devices, `auto` takes xla instead (and says so once).
On CPU (the tests) the Pallas kernel runs in Pallas' interpreter: when the platform compiled for is the CPU,
the kernel is built with splash's own `interpret` flag (which handles the batch vmap).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from qajax.models import window_attention

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas", "explicit")
PLATFORMS = ("", "cpu", "gpu", "cuda", "rocm", "tpu")  # "": jax.default_backend() at trace time
PALLAS_BLOCK = 128  # the TPU flash kernel's block size; with segment ids its key blocks must be multiples of 128
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


class AttentionMask(NamedTuple):
    """Which keys each query may attend to, in a form every implementation can take."""

    token: jax.Array  # [batch, seq] bool: a token, not padding
    segment_ids: jax.Array | None = None  # [batch, seq] int: the window of each token in a packed row; 0 = padding


def make_attention_mask(attention_mask: jax.Array, segment_ids: jax.Array | None = None) -> AttentionMask:
    """attention_mask [batch, seq] 1/0 and optional segment_ids [batch, seq] (0 = padding) -> AttentionMask."""
    token = attention_mask > 0
    if segment_ids is not None:
        token = token & (segment_ids > 0)
    return AttentionMask(token, segment_ids)


def boolean_mask(mask: AttentionMask) -> jax.Array:
    """True where a query may attend to a key: [batch, 1, 1, seq] for padding, [batch, 1, seq, seq] when packed."""
    keys = mask.token[:, None, None, :]
    if mask.segment_ids is None:
        return keys
    ids = mask.segment_ids
    return keys & (ids[:, None, :, None] == ids[:, None, None, :])


def resolve_implementation(implementation: str, platform: str = "", dtype=jnp.float32) -> str:
    """The implementation `auto` stands for when compiling for `platform` ("" = jax.default_backend())."""
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    if platform == "tpu":
        if jax.sharding.get_abstract_mesh().empty and jax.device_count() > 1:
            # Several devices and no mesh to split the kernel over (see the module docstring): XLA's attention.
            _warn_once(
                "pallas-mesh",
                "auto attention on %d TPU devices without jax.set_mesh: xla, not pallas",
                jax.device_count(),
            )
            return "xla"
        return "pallas"
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in _CUDNN_DTYPES:
        return "cudnn"
    return "xla"


def plan(implementation, platform, dtype, *, dropout_rate: float, output_probs: bool, scanned: bool):
    """(path, kernel dropout rate): the function that computes attention and the dropout it applies itself.

    `dropout_rate` is the attention dropout of this call (0 outside training); path "explicit" applies it
    with the model's rng, a fused path applies the returned rate or none (see the module docstring).
    """
    kernel = resolve_implementation(implementation, platform, dtype)
    if output_probs or kernel == "explicit" or (kernel == "xla" and dropout_rate > 0):
        return "explicit", 0.0
    if dropout_rate == 0:
        return kernel, 0.0
    if (kernel == "cudnn" and not scanned) or kernel == "pallas":
        return kernel, dropout_rate  # pallas: the window kernel drops inside; splash says it cannot
    _warn_no_attention_dropout(kernel, dropout_rate)
    return kernel, 0.0


def plan_for(config, *, training: bool, output_probs: bool = False):
    """`plan` for an EncoderConfig's settings: what one of its attention layers runs, in training or not."""
    return plan(
        config.attention_implementation,
        config.attention_platform,
        config.compute_dtype,
        dropout_rate=config.attention_dropout if training else 0.0,
        output_probs=output_probs,
        scanned=config.scan_layers,
    )


_warned: set[str] = set()


def _warn_once(topic: str, message: str, *args) -> None:
    if topic not in _warned:
        _warned.add(topic)
        log.warning(message, *args)


def _warn_no_attention_dropout(kernel: str, rate: float) -> None:
    _warn_once(
        kernel,
        "attention_implementation=%s trains without attention dropout (model.attention_dropout=%g: %s); "
        "hidden dropout still applies; set model.attention_implementation='explicit' to keep it",
        kernel,
        rate,
        "under scan_layers" if kernel == "cudnn" else "splash attention, for sequences over 512 tokens, has none",
    )


def explicit_attention(query, key, value, mask: AttentionMask, *, dropout: Callable, dtype):
    """query/key/value [batch, seq, heads, head_dim] -> (context [B, T, N, D], probabilities [B, N, T, S]).

    `dropout` maps the probabilities to their dropped-out form (identity outside training).
    """
    # Scaled before the product, as flax's attention does: a pass over [B, T, N, D], not over the scores.
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    scores = jnp.einsum("btnd,bsnd->bnts", query, key)
    scores = jnp.where(boolean_mask(mask), scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)  # [B, N, T, S]
    context = jnp.einsum("bnts,bsnd->btnd", dropout(probs), value)
    return context, probs


def fused_attention(
    query, key, value, mask: AttentionMask, *, path: str, dropout_rate=0.0, dropout_seed=0, dropout_key=None,
    platform: str = "",
):  # fmt: skip
    """query/key/value [batch, seq, heads, head_dim] -> context [batch, seq, heads, head_dim] by `path`
    ("xla", "cudnn" or "pallas", as `plan` chose, with the dropout rate it returned): cudnn seeds its dropout
    with `dropout_seed` (a static int), pallas with `dropout_key` (a jax.random key). `platform` is the one
    compiled for ("": this host's): Pallas on a CPU runs in its interpreter."""
    if path == "xla":
        return jax.nn.dot_product_attention(query, key, value, mask=boolean_mask(mask), implementation="xla")
    if path == "cudnn":
        return cudnn_attention(query, key, value, mask, dropout_rate=dropout_rate, dropout_seed=dropout_seed)
    if path == "pallas":
        interpret = (platform or jax.default_backend()) == "cpu"
        return pallas_attention(
            query, key, value, mask, dropout_rate=dropout_rate, dropout_key=dropout_key, interpret=interpret
        )
    raise ValueError(f"attention path {path!r}: expected one of xla, cudnn, pallas")


def cudnn_inputs(mask: AttentionMask) -> dict:
    """The padding of `mask` in the form cuDNN takes: key lengths, or a full mask for packed rows."""
    if mask.segment_ids is not None:
        return {"mask": boolean_mask(mask)}
    # At least one key, so that a row of padding only stays finite (it attends to its first position).
    lengths = jnp.maximum(jnp.sum(mask.token, axis=-1, dtype=jnp.int32), 1)
    return {"key_value_seq_lengths": lengths}


def cudnn_attention(query, key, value, mask: AttentionMask, *, dropout_rate=0.0, dropout_seed=0):
    padding = cudnn_inputs(mask)
    if not dropout_rate:
        return jax.nn.dot_product_attention(query, key, value, implementation="cudnn", **padding)
    # jax.nn does not expose cuDNN's dropout; this is the function its cudnn path calls, with the same
    # arguments plus the dropout rate and seed (query lengths: every query row, as jax.nn fills them in).
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    lengths = padding.get("key_value_seq_lengths")
    if lengths is not None:
        batch, seq = mask.token.shape
        padding = {"q_seqlen": jnp.full((batch,), seq, jnp.int32), "kv_seqlen": lengths}
    return cudnn.dot_product_attention(
        query,
        key,
        value,
        **padding,
        scale=query.shape[-1] ** -0.5,
        mask_type=cudnn.MaskType.PADDING if lengths is not None else cudnn.MaskType.NO_MASK,
        seed=dropout_seed,
        dropout_rate=dropout_rate,
    )


def pallas_segment_ids(mask: AttentionMask) -> tuple[jax.Array, jax.Array]:
    """(query ids, key ids) [batch, seq] int32 for the Pallas kernel, which lets a query see a key of equal id.

    A key of padding gets -1, which no query has. Without packing every query is in window 1, so a padding
    row attends to the tokens as the explicit path's key mask lets it; packed, a padding row (id 0) sees no key.
    """
    ids = jnp.ones(mask.token.shape, jnp.int32) if mask.segment_ids is None else mask.segment_ids.astype(jnp.int32)
    return ids, jnp.where(mask.token, ids, -1)


def splash_block(seq: int) -> int:
    """The largest block that divides the padded sequence, up to 512: one block row holds a whole BERT
    window (384), so each head's keys and values are read once per query block instead of three times."""
    return next(b for b in (512, 384, 256, PALLAS_BLOCK) if seq % b == 0)


def pallas_attention(
    query, key, value, mask: AttentionMask, *, dropout_rate=0.0, dropout_key=None, interpret: bool = False
):
    """A Pallas TPU kernel: `qajax.models.window_attention` for windows of up to 512 tokens (BERT's), in the
    projections' own layout and with attention dropout inside; splash attention, without dropout, beyond."""
    batch, seq, heads, head_dim = query.shape
    if not window_attention.supports(seq):
        if dropout_rate:
            _warn_no_attention_dropout("pallas", dropout_rate)
        return splash_attention(query, key, value, mask, interpret=interpret)
    if dropout_rate and dropout_key is None:
        raise ValueError(f"pallas attention with dropout rate {dropout_rate}: needs a dropout_key (jax.random key)")
    query_ids, key_ids = pallas_segment_ids(mask)
    flat = lambda x: x.reshape(batch, seq, heads * head_dim)
    # Seeds per example are drawn outside the kernel from the global batch, so every shard differs.
    seeds = window_attention.example_seeds(dropout_key, batch) if dropout_rate else jnp.zeros((batch,), jnp.int32)
    kernel = partial(
        window_attention.window_attention, head_dim=head_dim, dropout_rate=dropout_rate, interpret=interpret
    )
    context = _per_batch_shard(kernel)(flat(query), flat(key), flat(value), query_ids, key_ids, seeds)
    return context.reshape(query.shape)


def splash_attention(query, key, value, mask: AttentionMask, *, interpret: bool = False):
    """Pallas TPU splash attention, per example [heads, seq, head_dim], with its fused backward kernel. Chosen
    over the flash-attention kernel for what it keeps for the backward: one logsumexp per query where flash
    keeps two [batch, heads, seq, 128] float32 arrays. BERT-base on v5e:2x2 (bf16, 32 x 384 per chip) moved
    6.12e10 bytes a step with it against 7.56e10 with flash, in 4.0 GB of temporaries against 5.7 GB."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    seq, heads, head_dim = query.shape[1], query.shape[2], query.shape[-1]
    padded = seq + (-seq % PALLAS_BLOCK)
    block = splash_block(padded)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        use_fused_bwd_kernel=True,
    )  # fmt: skip
    full = masks.MultiHeadMask([masks.FullMask((padded, padded)) for _ in range(heads)])
    kernel = splash.make_splash_mha(full, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)

    def to_kernel(x):  # [B, T, N, D] -> [B, N, T', D]
        return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, padded - seq), (0, 0)))

    query_ids, key_ids = pallas_segment_ids(mask)
    query_ids = jnp.pad(query_ids, ((0, 0), (0, padded - seq)))
    key_ids = jnp.pad(key_ids, ((0, 0), (0, padded - seq)), constant_values=-1)
    scaled = query * jnp.asarray(head_dim**-0.5, query.dtype)

    def batched(q, k, v, q_ids, k_ids):
        one = lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=splash.SegmentIds(qi, ki))
        return jax.vmap(one)(q, k, v, q_ids, k_ids)

    context = _per_batch_shard(batched)(to_kernel(scaled), to_kernel(key), to_kernel(value), query_ids, key_ids)
    return jnp.swapaxes(context[:, :, :seq], 1, 2)


def _per_batch_shard(kernel):
    """XLA cannot partition a Mosaic kernel: under a mesh (jax.set_mesh) run it on each device's batch slice."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel
    spec = PartitionSpec(mesh.axis_names)
    return jax.shard_map(kernel, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
