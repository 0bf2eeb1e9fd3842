"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1) and where it plugs in.

The transform: for each task i, start from g_i and, for every other task j in a random order, if the
(already projected) g_i conflicts with g_j (negative dot product) remove its component along g_j:
g_i <- g_i - (g_i . g_j / |g_j|^2) g_j. The update is the sum of the projected g_i.

Every projected g_i stays a combination of the original gradients, g_i' = sum_k A[i, k] g_k, and its dot
product with g_j is A[i] @ G[:, j] with G the Gram matrix of the task gradients. So the surgery runs on a
[T, T] matrix and the parameters are touched twice: T(T+1)/2 dot products, then one weighted sum of the
T gradient trees. No flattening, no [T, num_params] copy.

Where it plugs in: the optimizer only ever sees the summed gradient, so PCGrad cannot be an optax
transform. It lives in the multitask loss (`pcgrad_loss`), which computes each task's gradient, projects,
and returns a surrogate whose value is the true loss and whose gradient is the projected sum:
    loss + <params, g> - <stop_gradient(params), g>,  g = stop_gradient(PCGrad(g_1..g_T))
The engine's step then differentiates as usual. The task gradients are taken at stop_gradient(params), so
no tangent flows through them and the outer differentiation adds no work beyond the T backward passes.
With gradient accumulation or pmap the projection is per micro-batch / device shard (it is not linear);
in mesh mode the whole global batch is one computation and the projection is over the global gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def _vdot(a, b) -> jax.Array:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)), a, b))
    return sum(leaves, jnp.zeros((), jnp.float32))


def gram_matrix(grads: Sequence) -> jax.Array:
    """[T, T] dot products of the task gradients (pytrees)."""
    t = len(grads)
    entries = {(i, j): _vdot(grads[i], grads[j]) for i in range(t) for j in range(i, t)}
    return jnp.stack([jnp.stack([entries[min(i, j), max(i, j)] for j in range(t)]) for i in range(t)])


def projection_weights(gram: jax.Array, orders: jax.Array) -> jax.Array:
    """[T] weights w with PCGrad's update = sum_k w[k] g_k. `orders[i]` is the order ([T], a permutation of
    all tasks; i itself is skipped) in which task i is projected onto the others."""
    t = gram.shape[0]
    rows = []
    for i in range(t):
        a = jnp.zeros(t, jnp.float32).at[i].set(1.0)  # g_i' = sum_k a[k] g_k
        for position in range(t):
            j = orders[i, position]
            dot = a @ gram[:, j]
            norm = gram[j, j]
            conflict = (j != i) & (dot < 0) & (norm > 0)
            a = a - jnp.where(conflict, dot / jnp.where(norm > 0, norm, 1.0), 0.0) * jax.nn.one_hot(j, t)
        rows.append(a)
    return jnp.sum(jnp.stack(rows), axis=0)


def random_orders(rng: jax.Array | None, num_tasks: int) -> jax.Array:
    """[T, T]: a random order of the tasks for each task (PCGrad shuffles them); None: 0, 1, 2, ..."""
    if rng is None:
        return jnp.tile(jnp.arange(num_tasks), (num_tasks, 1))
    return jnp.stack([jax.random.permutation(k, num_tasks) for k in jax.random.split(rng, num_tasks)])


def project_conflicting(grads: Sequence, rng: jax.Array | None = None):
    """PCGrad's combined gradient from per-task gradient pytrees of identical structure."""
    weights = projection_weights(gram_matrix(grads), random_orders(rng, len(grads)))
    return jax.tree.map(lambda *g: sum(w * x for w, x in zip(weights, g, strict=True)).astype(g[0].dtype), *grads)


def pcgrad_loss(task_losses: Sequence[Callable], params, rng: jax.Array | None):
    """task_losses: functions params -> (weighted task loss, aux). Returns (surrogate loss, [aux per task])."""
    frozen = jax.lax.stop_gradient(params)
    losses, auxes, grads = [], [], []
    for fn in task_losses:
        (loss, aux), grad = jax.value_and_grad(fn, has_aux=True)(frozen)
        losses.append(loss)
        auxes.append(aux)
        grads.append(grad)
    combined = jax.lax.stop_gradient(project_conflicting(grads, rng))
    total = sum(losses[1:], losses[0])
    return total + _vdot(params, combined) - _vdot(frozen, combined), auxes
