"""SMART (Jiang et al., 2020, "SMART: Robust and Efficient Fine-Tuning ... through Principled Regularized
Optimization"; report 003): smoothness-inducing adversarial regularization plus a Bregman proximal point term,

    loss = task_loss + lambda_s * D(f(x), f(x + delta)) + mu * D(f(x), f_teacher(x))

- delta: the word embeddings of the batch perturbed adversarially. It starts as N(0, sigma^2) noise, takes
  `steps` ascent steps of size eta along the gradient of D(stop_gradient(f(x)), f(x + delta)) normalized
  per token (infinity norm over the hidden axis, as the paper's Algorithm 1; or "l2"), and after each step
  is projected back onto the per-token eps-ball. The clean outputs are fixed during the ascent; the final
  smoothness term differentiates through both sides, as the regularizer R_s(theta) is defined.
- f_teacher: the model at the momentum (EMA) params, theta_tilde <- beta * theta_tilde + (1 - beta) * theta
  after every update, kept in `state.extras["smart"]`; the proximal term is off with mu = 0 (no copy kept).
- D: symmetric KL for classification and for span logits (softmax over the sequence for start and end
  separately, padding masked), MSE for regression. `kind` = auto takes it from the task's head. A multitask
  step perturbs every task's inputs in the batch and sums the tasks' terms, each with its own D (the task's
  `output_kinds`: symmetric KL of the classes, of the Bernoulli for a binary logit, MSE for regression).

Every pass runs in training mode with the loss's own rng, so dropout draws the same masks for the clean
and the perturbed inputs and D measures the perturbation alone. The clean outputs are the task loss's own
(`MODEL_OUTPUTS` in its aux, as distill.py uses them), so the clean pass costs nothing; a loss without them
(multitask's PCGrad) gets the clean pass run again.
Cost per step beyond the plain one: T forward and backward passes for the ascent (no weight gradients), one
for the smoothness term and one teacher forward (the seed's T = 1: about 3x the plain step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from qajax.errors import ConfigError
from qajax.models.encoder import lookup_word_embeddings
from qajax.techniques.base import Technique
from qajax.train.step import MODEL_OUTPUTS

KEY = "techniques.smart"
KINDS = ("auto", "span", "classification", "binary", "regression")
MULTITASK_KINDS = {"classes": "classification", "binary": "binary", "regression": "regression"}
NORMS = ("inf", "l2")
TINY = 1e-12  # keeps a zero gradient's direction finite


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "weight": 1.0,  # lambda_s: the smoothness term (the paper tunes it in {1, 3, 5})
            "steps": 1,  # T ascent steps (the paper: 1)
            "sigma": 1e-5,  # initial noise std
            "eta": 1e-3,  # ascent step size
            "eps": 1e-6,  # projection radius, per token
            "norm": "inf",  # one of NORMS: how the ascent direction is normalized and projected
            "proximal_weight": 1.0,  # mu: the Bregman proximal term (0 = off)
            "beta": 0.99,  # momentum of the proximal teacher
            "kind": "auto",  # one of KINDS: the divergence D
        }
    )


def symmetric_kl(a, b, mask=None) -> jax.Array:
    """KL(p||q) + KL(q||p) = sum (p - q)(log p - log q) over the last axis, p = softmax(a), q = softmax(b);
    positions where `mask` is 0 are left out of both distributions."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    if mask is not None:
        a, b = jnp.where(mask, a, -1e9), jnp.where(mask, b, -1e9)
    log_p, log_q = jax.nn.log_softmax(a, axis=-1), jax.nn.log_softmax(b, axis=-1)
    return jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=-1)


def divergence(kind: str, a, b, batch) -> jax.Array:
    """[batch] D between two outputs of the same examples."""
    if kind == "span":  # [B, 2, T]: a distribution over tokens for the start and for the end
        mask = batch["attention_mask"][:, None, :].astype(bool)
        return jnp.mean(symmetric_kl(a, b, mask), axis=1)
    if kind == "classification":  # [B, C]
        return symmetric_kl(a, b)
    if kind == "binary":  # [B] logits of Bernoulli distributions: (p - q)(logit p - logit q)
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        return (jax.nn.sigmoid(a) - jax.nn.sigmoid(b)) * (a - b)
    diff = (a - b).astype(jnp.float32).reshape(a.shape[0], -1)  # regression: [B] or [B, K]
    return jnp.mean(jnp.square(diff), axis=1)


def project(delta, eps: float, norm: str):
    """delta moved into the per-token eps-ball (last axis: hidden)."""
    if norm == "inf":
        return jnp.clip(delta, -eps, eps)
    size = jnp.linalg.norm(delta, axis=-1, keepdims=True)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(size, TINY))


def ascent_direction(grad, norm: str):
    """The gradient normalized per token: by its largest entry ("inf") or its length ("l2")."""
    if norm == "inf":
        scale = jnp.max(jnp.abs(grad), axis=-1, keepdims=True)
    else:
        scale = jnp.linalg.norm(grad, axis=-1, keepdims=True)
    return grad / (scale + TINY)


class Smart(Technique):
    name, kind = "smart", "loss"

    def __init__(self, task, *, weight, steps, sigma, eta, eps, norm, proximal_weight, beta, kind):
        self.task, self.weight, self.steps = task, weight, steps
        self.sigma, self.eta, self.eps, self.norm = sigma, eta, eps, norm
        self.proximal_weight, self.beta = proximal_weight, beta
        # One entry per output compared: {"": kind} for a single task, {task name: kind} for multitask.
        if task.output_kinds:
            self.kinds = {name: MULTITASK_KINDS[k] if kind == "auto" else kind for name, k in task.output_kinds.items()}
        else:
            self.kinds = {"": _resolve_kind(kind, task)}

    def bind(self, task):
        self.task = task  # the final forward (LoRA merge, prompts): the perturbation reaches what trains

    def init_extras(self, params) -> dict:
        if not self.proximal_weight:
            return {}
        return {"teacher": jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)}

    def update_extras(self, own, params, step):
        if not self.proximal_weight:
            return own
        blend = lambda t, p: self.beta * t + (1.0 - self.beta) * p.astype(t.dtype)
        return {"teacher": jax.tree.map(blend, own["teacher"], params)}

    def _present(self, batch) -> list[str]:
        return [name for name in self.kinds if _key(name, "input_ids") in batch]

    def _outputs(self, params, batch, rng, embeds=None, outputs=None) -> dict:
        """{name: training-mode logits}, from the batch's ids or from given word embeddings ({name: [.., E]})
        (or of given model `outputs`)."""
        if outputs is None:
            options = {}
            if embeds is not None:
                options["inputs_embeds"] = embeds if self.task.output_kinds else embeds[""]
            outputs = self.task.forward(params, batch, rng, deterministic=False, **options)
        logits = self.task.logits(outputs)
        return logits if self.task.output_kinds else {"": logits}

    def _divergences(self, batch, a: dict, b: dict) -> dict:
        """{name: example-weighted mean D} of the outputs present in both."""
        means = {}
        for name in a:
            per_example = divergence(self.kinds[name], a[name], b[name], _sub_batch(batch, name))
            weights = batch.get(_key(name, "example_weight"), jnp.ones(per_example.shape, jnp.float32))
            means[name] = jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        return means

    def adversarial_delta(self, params, batch, rng, embeds, clean):
        """The perturbation after `steps` projected ascent steps from sigma-noise (no gradient to params)."""
        noise_rng = jax.random.fold_in(rng, 0x5A1)
        delta = {
            name: self.sigma * jax.random.normal(jax.random.fold_in(noise_rng, i), e.shape, jnp.float32).astype(e.dtype)
            for i, (name, e) in enumerate(sorted(embeds.items()))
        }
        params, embeds, clean = jax.lax.stop_gradient((params, embeds, clean))

        def objective(d):  # summed over examples: each example's delta follows its own divergence
            outputs = self._outputs(params, batch, rng, {name: embeds[name] + d[name] for name in embeds})
            terms = [divergence(self.kinds[n], clean[n], outputs[n], _sub_batch(batch, n)) for n in outputs]
            return sum(jnp.sum(t) for t in terms)

        def ascend(d, g):
            return project(d + self.eta * ascent_direction(g, self.norm).astype(d.dtype), self.eps, self.norm)

        for _ in range(self.steps):  # T is small (1 in the paper) and static: unrolled
            delta = jax.tree.map(ascend, delta, jax.grad(objective)(delta))
        return jax.lax.stop_gradient(delta)

    def wrap_loss(self, loss_fn):
        encoder = self.task.spec.encoder

        def smart_loss(params, batch, rng, extras):
            loss, aux = loss_fn(params, batch, rng, extras)
            clean = self._outputs(params, batch, rng, outputs=aux.get(MODEL_OUTPUTS))
            smooth = jnp.zeros((), jnp.float32)
            if self.weight:  # a term with weight 0 is not traced at all: the step is the plain one
                ids = {name: batch[_key(name, "input_ids")] for name in self._present(batch)}
                embeds = {name: lookup_word_embeddings(params, encoder, i) for name, i in ids.items()}
                delta = self.adversarial_delta(params, batch, rng, embeds, clean)
                perturbed = self._outputs(params, batch, rng, {n: embeds[n] + delta[n] for n in embeds})
                smooth = sum(self._divergences(batch, clean, perturbed).values())
                loss = loss + self.weight * smooth
            aux = {**aux, "smart_loss": smooth}
            if self.proximal_weight:
                teacher_params = jax.lax.stop_gradient(extras[self.name]["teacher"])
                teacher = jax.lax.stop_gradient(self._outputs(teacher_params, batch, rng))
                proximal = sum(self._divergences(batch, clean, teacher).values())
                loss, aux = loss + self.proximal_weight * proximal, {**aux, "smart_proximal": proximal}
            return loss, aux

        return smart_loss


def _key(name: str, field: str) -> str:
    return f"{name}/{field}" if name else field


def _sub_batch(batch, name: str) -> dict:
    """The fields of one task's part of a multitask batch, unprefixed (the whole batch for a single task)."""
    if not name:
        return batch
    return {k[len(name) + 1 :]: v for k, v in batch.items() if k.startswith(name + "/")}


def _resolve_kind(kind: str, task) -> str:
    if kind != "auto":
        return kind
    spec = task.spec
    if spec.head == "qa":
        return "span"
    if spec.head == "classification":
        return "regression" if spec.num_labels == 1 else "classification"
    raise ConfigError(f"{KEY}.kind=auto: no divergence known for a {spec.head!r} head; set kind to one of {KINDS[1:]}")


def build(config: ml_collections.ConfigDict, task) -> Smart:
    if config.kind not in KINDS:
        raise ConfigError(f"{KEY}.kind={config.kind!r}: expected one of {KINDS}")
    if config.norm not in NORMS:
        raise ConfigError(f"{KEY}.norm={config.norm!r}: expected one of {NORMS}")
    if not (isinstance(config.steps, int) and config.steps >= 0):
        raise ConfigError(f"{KEY}.steps={config.steps!r}: expected an integer >= 0")
    for field in ("weight", "sigma", "eta", "eps", "proximal_weight"):
        if not config[field] >= 0:
            raise ConfigError(f"{KEY}.{field}={config[field]}: expected a number >= 0")
    if not 0.0 <= config.beta < 1.0:
        raise ConfigError(f"{KEY}.beta={config.beta}: expected 0 <= beta < 1")
    options = {k: config[k] for k in ("weight", "sigma", "eta", "eps", "proximal_weight", "beta")}
    return Smart(
        task, steps=config.steps, norm=config.norm, kind=config.kind, **{k: float(v) for k, v in options.items()}
    )
