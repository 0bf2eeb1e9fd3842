"""Our dropout: the rate and scale it promises, independent masks, determinism, and the flax.linen API."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qajax.models.dropout import Dropout, drop_threshold, dropout, expected_keep, uniform16


def test_uniform16_is_uniform_over_all_16_bits():
    values = np.asarray(uniform16(jax.random.key(0), (32, 12, 64, 66)))  # last axis not a multiple of 4
    assert values.dtype == np.uint16 and values.shape == (32, 12, 64, 66)
    # Every nibble of the 16 bits is uniform: chi-square over 16 cells, far below its 99.9% point (37.7).
    for shift in (0, 4, 8, 12):
        counts = np.bincount(((values >> shift) & 15).ravel(), minlength=16)
        expected = values.size / 16
        assert ((counts - expected) ** 2 / expected).sum() < 37.7


def test_uniform16_neighbours_are_not_correlated():
    values = np.asarray(uniform16(jax.random.key(1), (256, 1024)), np.float64)
    for a, b in ((values[:, :-1], values[:, 1:]), (values[:-1], values[1:]), (values[:, 0::4], values[:, 2::4])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_masks_differ_by_key_and_repeat_per_key():
    a, b = (np.asarray(uniform16(jax.random.key(k), (8, 100))) for k in (3, 4))
    assert (a != b).mean() > 0.99
    np.testing.assert_array_equal(a, np.asarray(uniform16(jax.random.key(3), (8, 100))))


@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_dropout_rate_and_unbiased_scale(rate, per_element):
    x = jnp.full((1000, 1000), 2.0)
    y = np.asarray(dropout(x, rate, jax.random.key(5), per_element=per_element))
    keep = expected_keep(rate)
    assert abs(keep - (1 - rate)) <= 1 / 65536
    dropped = (y == 0).mean()
    assert abs(dropped - (1 - keep)) < 5 * np.sqrt(rate * (1 - rate) / y.size)  # 5 sigma
    np.testing.assert_allclose(np.unique(y[y != 0]), [2.0 / keep], rtol=1e-6)
    # Unbiased in expectation: the scale undoes exactly the quantized keep probability.
    assert abs(y.mean() - 2.0) < 5 * 2.0 * np.sqrt(rate / (1 - rate) / y.size)


def test_rates_at_the_ends():
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(dropout(x, 0.0, jax.random.key(0)), x)
    np.testing.assert_array_equal(dropout(x, 1.0, jax.random.key(0)), jnp.zeros_like(x))
    assert drop_threshold(1e-6) == 0  # below the 16-bit resolution: nothing dropped
    with pytest.raises(ValueError, match="outside"):
        drop_threshold(1.5)


def test_module_matches_the_flax_api():
    x = jnp.ones((4, 16))
    layer = Dropout(0.5)
    assert layer.apply({}, x, deterministic=True) is x
    y1 = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    y2 = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(y1, y2)
    assert 0 < float((y1 == 0).mean()) < 1

    class Two(nn.Module):  # two layers in one module draw different masks, as flax's own do
        @nn.compact
        def __call__(self, x):
            return Dropout(0.5)(x, deterministic=False), Dropout(0.5)(x, deterministic=False)

    a, b = Two().apply({}, jnp.ones((64, 64)), rngs={"dropout": jax.random.key(0)})
    assert (np.asarray(a) != np.asarray(b)).mean() > 0.3


def test_sharded_mask_equals_the_unsharded_one():
    from jax.sharding import NamedSharding, PartitionSpec

    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    shape = (2 * len(devices), 6, 40)
    x = jnp.ones(shape)
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    f = jax.jit(lambda x, k: dropout(x, 0.1, k))
    np.testing.assert_array_equal(f(sharded, jax.random.key(9)), f(x, jax.random.key(9)))


def test_per_element_masks_are_elementwise_in_the_keys_bits():
    """The accelerator form draws jax.random.bits per element: the same mask as bits >= cutoff computed apart."""
    x = jnp.ones((64, 96))
    key = jax.random.key(9)
    kept = np.asarray(dropout(x, 0.1, key, per_element=True)) != 0
    bits = np.asarray(jax.random.bits(key, x.shape, jnp.uint32))
    np.testing.assert_array_equal(kept, bits >= (drop_threshold(0.1) << 16))


@pytest.mark.parametrize("per_element", [False, True])
def test_the_gradient_uses_the_forward_mask(per_element):
    """The per-element form draws its mask again in the backward pass (a custom VJP): same mask, same scale."""
    x = jnp.linspace(1.0, 2.0, 4096).reshape(64, 64)
    key = jax.random.key(7)
    out, vjp = jax.vjp(lambda x: dropout(x, 0.25, key, per_element=per_element), x)
    (grad,) = jax.jit(vjp)(jnp.ones_like(x))
    scale = 1.0 / expected_keep(0.25)
    np.testing.assert_allclose(grad, jnp.where(out != 0, scale, 0.0), rtol=1e-6)
    assert 0.2 < float(jnp.mean(out == 0)) < 0.3
