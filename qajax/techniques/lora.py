"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") by parameter surgery.

`prepare_params` adds two leaves beside each targeted Dense kernel W [in, out], in the same module:
`lora_a` [in, rank] and `lora_b` [rank, out] (scanned layers carry their leading [num_layers] axis on both).
B starts at zero (section 4.1), so training starts exactly at the pretrained function; A is drawn as PEFT
draws it (kaiming-uniform with a=sqrt(5): uniform in +-1/sqrt(in)), per a seed and the kernel's path. The
model never sees the adapters: `wrap_forward` merges

    W' = W + (alpha / rank) * A @ B                                            (Eq. 3 and section 4.1)

and calls the plain model. Gradients reach A and B through the merge; the base params enter through
`lax.stop_gradient`, so the backward computes no weight gradient for them (only W''s, which A and B need),
and the optimizer freezes them (`frozen_patterns`). `merge` (= `finalize_params`) gives plain params that
`qajax.hf.save_pretrained` exports; `adapters_only` / `load_adapters` save and restore what trained alone.

Dropout (PEFT's `lora_dropout`) drops the adapter's input, x W + s * dropout(x) A B, which no merged weight
can express. With `dropout` > 0 a training-mode forward therefore runs the adapters unmerged, through a
flax method interceptor around each adapted Dense (the model is unchanged; the adapters reach the Dense's
scope as extra leaves, which `nn.scan` slices per layer like the kernel). Evaluation always merges. Its step
time measured within 5% of the merged one (MiniLM shape, 8 x 128 tokens, CPU): the weight gradient of W'
that it skips costs about what the adapters' own small matmuls add.

The helpers at the end (frozen patterns, saved leaves, `trainable_fraction`) are shared with prompt tuning.
"""

from __future__ import annotations

import re
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from qajax import tree
from qajax.errors import CheckpointError, ConfigError
from qajax.models.dropout import dropout
from qajax.techniques.base import Technique

KEY = "techniques.lora"
ADAPTERS = ("lora_a", "lora_b")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "targets": (r".*/attention/(self/)?(query|value)/kernel",),  # Dense kernels (BERT and ALBERT paths)
            "rank": 8,
            "alpha": 16.0,  # the update is scaled by alpha / rank
            "dropout": 0.0,  # on the adapter's input, training only; > 0 runs the adapters unmerged
            "train_head": True,  # the task head (qa_outputs / classifier) trains in full
            "seed": 0,  # A's draw: one stream per (seed, kernel path)
        }
    )


def has_adapters(params) -> bool:
    return any(_is_adapter(p) for p in tree.flatten(params))


def merge_adapters(params, scale: float) -> dict:
    """Plain model params: each adapted kernel becomes W + scale * A @ B (scale = alpha / rank), the adapter
    leaves go."""
    flat = tree.flatten(params)
    out = {}
    for path, leaf in flat.items():
        module, _, name = path.rpartition("/")
        if name in ADAPTERS:
            continue
        if name == "kernel" and f"{module}/lora_a" in flat:
            # HIGHEST: the merged weight is exported, so no TF32/bf16 passes on accelerators.
            delta = jnp.matmul(flat[f"{module}/lora_a"], flat[f"{module}/lora_b"], precision="highest")
            leaf = leaf + (scale * delta).astype(leaf.dtype)
        out[path] = leaf
    return tree.unflatten(out)


def adapter_scale(section) -> float:
    """alpha / rank: how much of A @ B a section's adapters add (training, merging and export use this)."""
    return float(section["alpha"]) / int(section["rank"])


class LoRA(Technique):
    name, kind = "lora", "parameters"

    def __init__(self, targets: list[re.Pattern], rank: int, scale: float, dropout: float, train_head, seed, family):
        self.targets, self.rank, self.scale = targets, rank, scale
        self.dropout, self.train_head, self.seed, self.family = dropout, train_head, seed, family

    def targeted(self, params) -> list[str]:
        """The kernel paths the targets match, checked: each target matches, only Dense kernels, no trained head."""
        flat = tree.flatten(params)
        hits = {r.pattern: [p for p in flat if r.fullmatch(p)] for r in self.targets}
        if unused := [pattern for pattern, paths in hits.items() if not paths]:
            raise ConfigError(f"{KEY}.targets: {unused} match no parameter (whole paths, e.g. {next(iter(flat))!r})")
        paths = sorted({p for paths in hits.values() for p in paths})
        if bad := [p for p in paths if not p.endswith("/kernel") or np.ndim(flat[p]) < 2]:
            raise ConfigError(f"{KEY}.targets match {bad[:3]}: expected Dense kernels (paths ending in /kernel)")
        if self.train_head and (head := [p for p in paths if re.fullmatch(HEAD, p)]):
            raise ConfigError(f"{KEY}.targets match the head {head} that train_head=True trains in full")
        return paths

    def prepare_params(self, params) -> dict:
        flat = tree.flatten(params)
        if any(_is_adapter(p) for p in flat):
            raise ValueError("params already carry LoRA adapters")
        for path in self.targeted(params):
            kernel, module = flat[path], path.rpartition("/")[0]
            rng = np.random.default_rng([self.seed, zlib.crc32(path.encode())])
            bound = 1.0 / np.sqrt(kernel.shape[-2])
            flat[f"{module}/lora_a"] = rng.uniform(-bound, bound, kernel.shape[:-1] + (self.rank,)).astype(kernel.dtype)
            flat[f"{module}/lora_b"] = np.zeros(kernel.shape[:-2] + (self.rank, kernel.shape[-1]), kernel.dtype)
        return tree.unflatten(flat)

    def merge(self, params) -> dict:
        """Plain model params: each adapted kernel becomes W + scale * A @ B, the adapter leaves go."""
        return merge_adapters(params, self.scale)

    finalize_params = merge

    def frozen_patterns(self, params) -> list[str]:
        if not any(_is_adapter(p) for p in tree.flatten(params)):
            raise ValueError("params carry no LoRA adapters: run prepare_params first")
        return frozen_base(params, self.family, self.train_head)

    def wrap_forward(self, forward):
        def forward_with_lora(params, batch, rng=None, *, deterministic=True, **model_options):
            params = stop_frozen(params, self.frozen_patterns(params))
            if self.dropout and not deterministic:
                with nn.intercept_methods(adapter_interceptor(self.scale, self.dropout)):
                    return forward(params, batch, rng, deterministic=False, **model_options)
            return forward(self.merge(params), batch, rng, deterministic=deterministic, **model_options)

        return forward_with_lora

    def adapters_only(self, params) -> dict:
        """What training changed, to save beside the base checkpoint: the adapters, and the head with
        train_head (it trained in full, as PEFT's `modules_to_save` are saved with the adapters)."""
        return trained_leaves(params, ADDED["adapter"], self.train_head)

    def load_adapters(self, params, saved) -> dict:
        """`params` (with or without adapters) with `saved` (from `adapters_only`) in place."""
        base = tree.unflatten({p: v for p, v in tree.flatten(params).items() if not _is_adapter(p)})
        expected = {p: np.shape(v) for p, v in tree.flatten(self.prepare_params(base)).items() if _is_adapter(p)}
        where = f"{KEY} (rank={self.rank}, targets={[r.pattern for r in self.targets]})"
        return load_leaves(base, saved, {**expected, **head_shapes(base, self.train_head)}, where)


def adapter_interceptor(scale: float, rate: float):
    """A flax interceptor: a Dense whose scope holds adapters returns x W + b + scale * dropout(x) A B."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense):
            return next_fun(*args, **kwargs)
        if not module.has_variable("params", "lora_a"):
            return next_fun(*args, **kwargs)
        (x,) = args  # [..., in]
        y = next_fun(x)
        if rate:  # inverted dropout on the adapter's input, as the encoder's own dropout
            x = dropout(x, rate, module.make_rng("dropout"))
        a, b = (module.get_variable("params", name).astype(y.dtype) for name in ADAPTERS)
        return y + (scale * ((x.astype(y.dtype) @ a) @ b)).astype(y.dtype)

    return intercept


def build(config: ml_collections.ConfigDict, task) -> LoRA:
    if not (isinstance(config.rank, int) and config.rank >= 1):
        raise ConfigError(f"{KEY}.rank={config.rank!r}: expected an int >= 1")
    if not config.alpha > 0:
        raise ConfigError(f"{KEY}.alpha={config.alpha}: expected a number > 0")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"{KEY}.dropout={config.dropout}: expected a rate in [0, 1)")
    if not config.targets or isinstance(config.targets, str):
        raise ConfigError(f"{KEY}.targets={config.targets!r}: expected a non-empty tuple of regexes")
    try:
        targets = [re.compile(p) for p in config.targets]
    except re.error as error:
        raise ConfigError(f"{KEY}.targets: {error.pattern!r} is not a valid regex ({error})") from error
    family = task.spec.encoder.family
    return LoRA(
        targets, config.rank, adapter_scale(config), float(config.dropout), config.train_head, config.seed, family
    )


# Shared with prompt tuning. The model's own leaves are the ones flax's Dense, LayerNorm and Embed create;
# techniques add leaves with other names (lora_a, lora_b) or outside the model (prompt/embedding).
MODEL_LEAF = r"(kernel|bias|scale|embedding)"
HEAD = rf"(qa_outputs|classifier|span_head)/(.*/)?{MODEL_LEAF}"
ADDED = {"adapter": r".*/lora_[ab]", "prompt": r"prompt/embedding"}


def _is_adapter(path: str) -> bool:
    return re.fullmatch(ADDED["adapter"], path) is not None


def frozen_base(params, family: str, train_head: bool) -> list[str]:
    """What a parameter-efficient technique freezes: the model's own leaves, the head too unless it trains.

    Leaves that techniques add fall outside these patterns, so that LoRA and prompt tuning combine (each
    freezes the model, neither the other's leaves). Every path must fit exactly one role, or this raises.
    """
    encoder = rf"{family}/.*/{MODEL_LEAF}"
    roles = {"encoder": encoder, "head": HEAD, **ADDED}
    found = {}
    for path in tree.flatten(params):
        fits = [role for role, pattern in roles.items() if re.fullmatch(pattern, path)]
        if len(fits) != 1:
            raise ValueError(f"{path}: fits roles {fits}, expected exactly one of {roles}")
        found[path] = fits[0]
    return [encoder] + ([HEAD] if not train_head and "head" in found.values() else [])


def trained_leaves(params, own: str, train_head: bool) -> dict:
    """The leaves whose path fully matches `own`, and the head's with `train_head`."""
    keep = lambda path: re.fullmatch(own, path) or (train_head and re.fullmatch(HEAD, path))
    return tree.unflatten({p: v for p, v in tree.flatten(params).items() if keep(p)})


def head_shapes(params, train_head: bool) -> dict[str, tuple]:
    return {p: np.shape(v) for p, v in tree.flatten(params).items() if train_head and re.fullmatch(HEAD, p)}


def load_leaves(params, saved, expected: dict[str, tuple], where: str) -> dict:
    """`params` with the leaves of `saved` in place, which must be exactly the `expected` paths and shapes."""
    given = {p: np.shape(v) for p, v in tree.flatten(saved).items()}
    if given != expected:
        missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
        shapes = [(p, given[p], s) for p, s in expected.items() if p in given and given[p] != s]
        raise CheckpointError(
            f"saved leaves do not fit {where}: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"(path, saved shape, expected shape) {shapes[:4]}"
        )
    return tree.unflatten({**tree.flatten(params), **tree.flatten(saved)})


def stop_frozen(params, frozen_patterns) -> dict:
    """Frozen leaves through `lax.stop_gradient`: the backward then skips their weight-gradient matmuls."""
    regexes = [re.compile(p) for p in frozen_patterns]
    stop = lambda path, leaf: jax.lax.stop_gradient(leaf) if any(r.fullmatch(path) for r in regexes) else leaf
    return tree.map_with_path(stop, params)


def trainable_fraction(params, frozen_patterns) -> float:
    """Trainable elements / all elements of `params` (arrays or shapes), adapters and prompts included."""
    sizes = {p: int(np.prod(np.shape(v))) for p, v in tree.flatten(params).items()}
    frozen = tree.flatten(tree.mask(params, frozen_patterns))
    return sum(n for p, n in sizes.items() if not frozen[p]) / sum(sizes.values())
