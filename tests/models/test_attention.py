"""Every attention implementation against the explicit path (itself checked against transformers in
test_encoder.py), and deviceless compiles that show the fused kernels in the HLO for an H100 and a TPU v5e."""

import importlib.util
import logging
import os
import re
from functools import partial
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import qajax
from qajax.errors import ConfigError
from qajax.models import attention
from qajax.models.attention import make_attention_mask
from qajax.models.config import EncoderConfig
from qajax.models.encoder import Encoder

TOLERANCE = 1e-5
# Three rows of 12: all tokens; 7 tokens then padding; padding only. Packed: windows of 5, 4, 3 and 3, 4.
ATTENTION_MASK = np.array([[1] * 12, [1] * 7 + [0] * 5, [0] * 12], np.int32)
SEGMENT_IDS = np.array([[1] * 5 + [2] * 4 + [3] * 3, [1] * 3 + [2] * 4 + [0] * 5, [0] * 12], np.int32)
H100_TARGET = Path(qajax.__file__).parent / "accelerators" / "h100.txtpb"


def _mask(packed):
    return make_attention_mask(ATTENTION_MASK, SEGMENT_IDS if packed else None)


def _attention(path, query, key, value, mask):
    if path == "explicit":
        return attention.explicit_attention(query, key, value, mask, dropout=lambda p: p, dtype=jnp.float32)[0]
    if path == "cudnn_inputs":
        # What the cudnn path hands to cuDNN (key lengths, or a full mask), read by jax's reference implementation.
        return jax.nn.dot_product_attention(query, key, value, implementation="xla", **attention.cudnn_inputs(mask))
    return attention.fused_attention(query, key, value, mask, path=path)


@pytest.mark.parametrize("head_dim", [32, 64])  # MiniLM, BERT-base
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("path", ["xla", "cudnn_inputs", "pallas"])
def test_values_and_gradients_match_explicit(path, packed, head_dim):
    q, k, v, cotangent = jax.random.normal(jax.random.key(head_dim), (4, 3, 12, 2, head_dim))
    mask = _mask(packed)
    tokens = mask.token[:, :, None, None]  # outputs of padding rows differ by implementation (module docstring)

    def loss(path, q, k, v):
        out = _attention(path, q, k, v, mask)
        return jnp.sum(jnp.where(tokens, out * cotangent, 0.0)), out

    (value, out), grads = jax.jit(jax.value_and_grad(partial(loss, path), argnums=(0, 1, 2), has_aux=True))(q, k, v)
    (ref_value, ref_out), ref_grads = jax.value_and_grad(partial(loss, "explicit"), argnums=(0, 1, 2), has_aux=True)(
        q, k, v
    )
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.where(tokens, out, 0), np.where(tokens, ref_out, 0), atol=TOLERANCE)
    np.testing.assert_allclose(value, ref_value, rtol=TOLERANCE)
    for grad, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(grad, ref, atol=TOLERANCE)
    if not packed:  # a padding row beside tokens attends to them, as the explicit key mask lets it
        np.testing.assert_allclose(out[:2], ref_out[:2], atol=TOLERANCE)


def _tiny(**changes):
    values = dict(vocab_size=64, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=64)
    return EncoderConfig(**values, max_position_embeddings=32, **changes)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_encoder_values_and_parameter_gradients_match_explicit(implementation, packed):
    config = _tiny()
    ids = jax.random.randint(jax.random.key(1), ATTENTION_MASK.shape, 1, 64)
    segment_ids = SEGMENT_IDS if packed else None
    params = Encoder(config).init(jax.random.key(0), ids, ATTENTION_MASK)
    cotangent = jax.random.normal(jax.random.key(2), ids.shape + (64,))
    tokens = _mask(packed).token[..., None]

    def loss(implementation, params):
        model = Encoder(config.replace(attention_implementation=implementation))
        out = model.apply(params, ids, ATTENTION_MASK, segment_ids=segment_ids).last_hidden_state
        return jnp.sum(jnp.where(tokens, out * cotangent, 0.0))

    value, grads = jax.jit(jax.value_and_grad(partial(loss, implementation)))(params)
    ref_value, ref_grads = jax.value_and_grad(partial(loss, "explicit"))(params)
    np.testing.assert_allclose(value, ref_value, rtol=TOLERANCE)
    # Relative to the largest gradient entry (tens: sums over 36 tokens x 64 features); some are 0 exactly.
    flat, ref_flat = (jax.flatten_util.ravel_pytree(g)[0] for g in (grads, ref_grads))
    assert jnp.max(jnp.abs(flat - ref_flat)) < TOLERANCE * jnp.max(jnp.abs(ref_flat))


@pytest.mark.parametrize("implementation", ["explicit", "xla", "pallas"])
def test_packed_windows_match_the_windows_run_alone(implementation):
    """Two windows in one row (segment ids, positions restarting) give each window's own outputs."""
    config = _tiny(attention_implementation=implementation)
    model = Encoder(config)
    first, second = jax.random.randint(jax.random.key(3), (2, 6), 1, 64)
    first, second = first[:5], second
    params = Encoder(_tiny()).init(jax.random.key(0), first[None])
    packed_ids = jnp.concatenate([first, second, jnp.zeros(1, jnp.int32)])[None]  # [1, 12]
    segment_ids = jnp.array([[1] * 5 + [2] * 6 + [0]])
    positions = jnp.array([list(range(5)) + list(range(6)) + [0]])
    packed = model.apply(params, packed_ids, segment_ids=segment_ids, position_ids=positions).last_hidden_state
    alone = [model.apply(params, window[None]).last_hidden_state[0] for window in (first, second)]
    np.testing.assert_allclose(packed[0, :11], jnp.concatenate(alone), atol=TOLERANCE)


def test_plan_picks_the_platform_kernel_and_drops_attention_dropout_only_where_no_kernel_has_it(monkeypatch, caplog):
    monkeypatch.setattr(attention, "_warned", set())
    plan = partial(attention.plan, output_probs=False, scanned=False)
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert plan("auto", "cpu", f32, dropout_rate=0.0) == ("xla", 0.0)
    assert plan("auto", "cpu", f32, dropout_rate=0.1) == ("explicit", 0.0)  # as before: dropout on the probs
    assert plan("auto", "gpu", f32, dropout_rate=0.0) == ("xla", 0.0)  # cuDNN takes no float32
    assert plan("auto", "gpu", bf16, dropout_rate=0.1) == ("cudnn", 0.1)  # dropout inside the kernel
    assert plan("pallas", "cpu", f32, dropout_rate=0.0) == ("pallas", 0.0)
    assert plan("explicit", "tpu", f32, dropout_rate=0.1) == ("explicit", 0.0)
    assert attention.plan("auto", "tpu", f32, dropout_rate=0.0, output_probs=True, scanned=False)[0] == "explicit"
    assert not caplog.records
    assert plan("auto", "tpu", f32, dropout_rate=0.1) == ("pallas", 0.1)  # the window kernel drops inside
    assert plan("pallas", "", f32, dropout_rate=0.1) == ("pallas", 0.1)
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        assert attention.plan("cudnn", "gpu", bf16, dropout_rate=0.1, output_probs=False, scanned=True) == (
            "cudnn",
            0.0,
        )
    assert [r.message.split(" ")[0] for r in caplog.records] == ["attention_implementation=cudnn"]
    # Several TPU devices and no mesh to split the Pallas kernel over: auto keeps XLA's attention.
    assert attention.resolve_implementation("auto", "tpu") == "pallas"
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert attention.resolve_implementation("auto", "tpu") == "xla"
    assert attention.resolve_implementation("pallas", "tpu") == "pallas"


def test_config_rejects_cudnn_in_float32_and_unknown_platforms():
    with pytest.raises(ConfigError, match="bfloat16 or float16"):
        _tiny(attention_implementation="cudnn")
    with pytest.raises(ConfigError, match="attention_platform"):
        _tiny(attention_platform="tpu7")
    assert _tiny(attention_implementation="cudnn", dtype="bfloat16").attention_implementation == "cudnn"


# -- deviceless compiles ------------------------------------------------------------------------------


def _compiled_grad_hlo(config, mesh, *, packed=False, train=False):
    """HLO text of d(loss)/d(params) of the encoder on a batch of 12 tokens per row, compiled for `mesh`."""
    model = Encoder(config)
    batch = mesh.devices.size
    ids = jnp.zeros((batch, 12), jnp.int32)
    params = jax.eval_shape(Encoder(config.replace(attention_implementation="explicit")).init, jax.random.key(0), ids)
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), params)
    row = jax.ShapeDtypeStruct((batch, 12), jnp.int32, sharding=split)

    def grad(params, ids, mask, segment_ids):
        def loss(params):
            out = model.apply(
                params,
                ids,
                mask,
                segment_ids=segment_ids if packed else None,
                deterministic=not train,
                rngs={"dropout": jax.random.key(0)},
            )
            return jnp.mean(out.last_hidden_state.astype(jnp.float32) ** 2)

        return jax.grad(loss)(params)

    with jax.set_mesh(mesh):
        return jax.jit(grad).lower(params, row, row, row).compile().as_text()


@pytest.fixture(scope="module")
def h100_mesh():
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        pytest.skip("no CUDA plugin (pip install 'jax[cuda12]'): cannot compile for an H100 here")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no GPU driver on this machine
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET.read_text(), topology="1x1x1")
    return Mesh(np.array(topology.devices), ("data",))


@pytest.mark.parametrize(
    "packed, train, kernels",
    [
        (False, False, {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"}),  # padding as key lengths
        (True, False, {"__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"}),  # full mask
        (False, True, {"__cudnn$fmhaSoftmaxDropout", "__cudnn$fmhaSoftmaxDropoutBackward"}),  # in-kernel dropout
    ],
)
def test_auto_compiles_to_cudnn_flash_attention_for_an_h100(h100_mesh, packed, train, kernels):
    config = _tiny(dtype="bfloat16", attention_platform="gpu")
    hlo = _compiled_grad_hlo(config, h100_mesh, packed=packed, train=train)
    assert set(re.findall(r"__cudnn\$fmha\w+", hlo)) == kernels


@pytest.fixture(scope="module")
def tpu_mesh():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("no libtpu (pip install 'jax[tpu]'): cannot compile for a TPU here")
    # libtpu takes a machine-wide lock on start unless told to share: a compile needs no chip.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
    return Mesh(np.array(topology.devices).reshape(2, 2), ("data", "fsdp"))


@pytest.mark.parametrize("hidden_size", [64, 128])  # head dims 32 (MiniLM) and 64 (BERT-base)
@pytest.mark.parametrize("packed, dtype", [(False, "bfloat16"), (True, "float32")])
def test_auto_compiles_to_the_pallas_kernel_for_a_tpu(tpu_mesh, hidden_size, packed, dtype):
    config = _tiny(attention_platform="tpu").replace(hidden_size=hidden_size, dtype=dtype)
    # conftest asks for "highest": Mosaic refuses float32-precision products of bfloat16 ("Bad lhs type").
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        hlo = _compiled_grad_hlo(config, tpu_mesh, packed=packed, train=True)
    # Per layer: the forward kernel and the fused backward kernel (dq, dk and dv together).
    assert hlo.count('custom_call_target="tpu_custom_call"') >= 2 * config.num_layers


@pytest.mark.parametrize(
    "heads, head_dim",
    [(4, 64), (8, 32), (2, 128), (3, 48)],  # 128 lanes hold 2, 4, 1 heads; 48 does not divide 128: one block
)
@pytest.mark.parametrize("packed", [False, True])
def test_the_window_kernel_blocks_heads_by_lanes_and_matches_explicit(heads, head_dim, packed):
    from qajax.models import window_attention

    hidden = heads * head_dim
    assert window_attention.block_width(hidden, head_dim) == (hidden if head_dim == 48 else 128)
    q, k, v, cotangent = jax.random.normal(jax.random.key(heads), (4, 3, 12, heads, head_dim))
    mask = _mask(packed)
    tokens = mask.token[:, :, None, None]

    def loss(path, q, k, v):
        out = _attention(path, q, k, v, mask)
        return jnp.sum(jnp.where(tokens, out * cotangent, 0.0))

    value, grads = jax.value_and_grad(partial(loss, "pallas"), argnums=(0, 1, 2))(q, k, v)
    ref_value, ref_grads = jax.value_and_grad(partial(loss, "explicit"), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(value, ref_value, rtol=TOLERANCE)
    for grad, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(grad, ref, atol=TOLERANCE)


def test_sequences_over_512_tokens_take_splash_attention(monkeypatch):
    called = []
    monkeypatch.setattr(attention, "splash_attention", lambda *args, **kwargs: called.append(args[0].shape))
    q = jnp.zeros((1, 640, 2, 64))
    attention.pallas_attention(q, q, q, make_attention_mask(jnp.ones((1, 640), jnp.int32)), interpret=True)
    assert called == [(1, 640, 2, 64)]


def test_the_window_kernel_in_bfloat16_is_as_close_to_float32_as_xlas_attention():
    """bf16 numerics (interpret mode): the kernel's output and gradients stay as near the float32 reference
    as jax.nn.dot_product_attention's do in bf16 (within 2x of its error)."""
    q, k, v, cotangent = jax.random.normal(jax.random.key(5), (4, 2, 128, 4, 64))
    lengths = np.array([128, 70])
    mask = make_attention_mask((np.arange(128)[None] < lengths[:, None]).astype(np.int32))
    tokens = mask.token[:, :, None, None]

    def loss(path, dtype, q, k, v):
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        out = _attention(path, q, k, v, mask).astype(jnp.float32)  # explicit: the float32 reference only
        return jnp.sum(jnp.where(tokens, out * cotangent, 0.0))

    reference = jax.grad(partial(loss, "explicit", jnp.float32), argnums=(0, 1, 2))(q, k, v)
    errors = {}
    for path in ("xla", "pallas"):
        grads = jax.grad(partial(loss, path, jnp.bfloat16), argnums=(0, 1, 2))(q, k, v)
        errors[path] = max(
            float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(grads, reference, strict=True)
        )
    assert errors["pallas"] < 2 * errors["xla"] < 0.05, errors


@pytest.mark.parametrize("heads, head_dim", [(4, 64), (8, 32)])
def test_the_window_kernels_attention_dropout_matches_explicit_attention_with_its_mask(heads, head_dim):
    """Attention dropout inside the window kernel: values and gradients equal the explicit path's with the
    same mask (`window_attention.keep_mask`), in float32; the mask drops the rate and differs by seed."""
    from qajax.models import window_attention as window

    rate, seq = 0.25, 128
    q, k, v, cotangent = jax.random.normal(jax.random.key(heads), (4, 3, seq, heads, head_dim))
    lengths = np.array([seq, 90, 0])
    mask = make_attention_mask((np.arange(seq)[None] < lengths[:, None]).astype(np.int32))
    seeds = window.example_seeds(jax.random.key(1), 3)
    keep = window.keep_mask(seeds, num_heads=heads, head_dim=head_dim, seq=seq, dropout_rate=rate)
    tokens = mask.token[:, :, None, None]
    flat = lambda x: x.reshape(3, seq, heads * head_dim)
    ids = attention.pallas_segment_ids(mask)

    def kernel(q, k, v):
        out = window.window_attention(
            flat(q), flat(k), flat(v), *ids, seeds, head_dim=head_dim, dropout_rate=rate, interpret=True
        )
        return out.reshape(q.shape)

    def reference(q, k, v):
        drop = lambda p: jnp.where(keep, p / (1 - window.drop_threshold(rate) / 2**31), 0.0)
        return attention.explicit_attention(q, k, v, mask, dropout=drop, dtype=jnp.float32)[0]

    loss = lambda f, q, k, v: jnp.sum(jnp.where(tokens, f(q, k, v) * cotangent, 0.0))
    value, grads = jax.value_and_grad(partial(loss, kernel), argnums=(0, 1, 2))(q, k, v)
    ref_value, ref_grads = jax.value_and_grad(partial(loss, reference), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(value, ref_value, rtol=TOLERANCE)
    for grad, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(grad, ref, atol=TOLERANCE)
    assert abs(1 - float(jnp.mean(keep)) - rate) < 0.01
    other = window.keep_mask(seeds[::-1], num_heads=heads, head_dim=head_dim, seq=seq, dropout_rate=rate)
    assert 0.55 < float(jnp.mean(keep[0] == other[0])) < 0.7  # independent masks agree on 1 - 2 r (1 - r)
