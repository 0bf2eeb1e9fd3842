"""PCGrad against a numpy transcription of Algorithm 1 (Yu et al. 2020) on hand-built conflicting gradients,
and the surrogate loss: its value is the loss, its gradient the projected sum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qajax.tasks.multitask import pcgrad


def numpy_pcgrad(grads, orders):
    projected = []
    for i, g in enumerate(grads):
        g = g.astype(np.float64).copy()
        for j in orders[i]:
            if j == i:
                continue
            dot = g @ grads[j]
            if dot < 0:
                g -= dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return np.sum(projected, axis=0)


def as_tree(vector):  # a vector split over a two-leaf tree, so that dot products cross leaves
    return {"a": jnp.asarray(vector[:2], jnp.float32), "b": {"c": jnp.asarray(vector[2:], jnp.float32)}}


def from_tree(tree):
    return np.concatenate([np.asarray(tree["a"]), np.asarray(tree["b"]["c"])])


CONFLICTING = [
    np.array([1.0, 0.0, 0.0]),
    np.array([-1.0, 1.0, 0.0]),  # conflicts with the first
    np.array([0.5, -2.0, 1.0]),  # conflicts with the second
]


def test_two_conflicting_gradients_by_hand():
    g1, g2 = np.array([1.0, 0.0, 0.0]), np.array([-1.0, 1.0, 0.0])
    # g1 onto the normal plane of g2: g1 - (-1 / 2) g2 = [0.5, 0.5, 0]; g2 - (-1 / 1) g1 = [0, 1, 0].
    combined = pcgrad.project_conflicting([as_tree(g1), as_tree(g2)])
    np.testing.assert_allclose(from_tree(combined), [0.5, 1.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_in_random_orders(seed):
    rng = np.random.default_rng(seed)
    grads = [g + 0.1 * rng.normal(size=3) for g in CONFLICTING] + [rng.normal(size=3)]
    key = jax.random.key(seed)
    orders = np.asarray(pcgrad.random_orders(key, len(grads)))
    assert all(sorted(o) == list(range(len(grads))) for o in orders)
    expected = numpy_pcgrad(grads, orders)
    ours = from_tree(pcgrad.project_conflicting([as_tree(g) for g in grads], key))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, np.sum(grads, axis=0))  # the projection did something


def test_no_conflict_is_the_plain_sum():
    grads = [np.array([1.0, 0.0, 1.0]), np.array([0.5, 2.0, 0.0])]
    ours = from_tree(pcgrad.project_conflicting([as_tree(g) for g in grads], jax.random.key(0)))
    np.testing.assert_allclose(ours, grads[0] + grads[1], rtol=1e-6)


def test_surrogate_loss_value_and_gradient():
    targets = [jnp.asarray(t, jnp.float32) for t in ([1.0, -2.0, 0.5], [-1.0, 1.0, 3.0])]
    params = {"w": jnp.asarray([0.3, 0.1, -0.2], jnp.float32)}
    fns = [lambda p, t=t: (jnp.sum((p["w"] - t) ** 2), {"weight": 1.0}) for t in targets]

    loss, auxes = pcgrad.pcgrad_loss(fns, params, None)
    grad = jax.grad(lambda p: pcgrad.pcgrad_loss(fns, p, None)[0])(params)
    per_task = [np.asarray(2 * (params["w"] - t), np.float64) for t in targets]
    assert float(loss) == pytest.approx(sum(float(f(params)[0]) for f in fns), 1e-5)
    np.testing.assert_allclose(grad["w"], numpy_pcgrad(per_task, [[0, 1], [0, 1]]), rtol=1e-5)
    assert len(auxes) == 2
