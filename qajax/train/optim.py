"""The optimizer, built from the `optimizer` config section.

For trainable parameters an update is

    -multiplier(path) * schedule(step) * (base(clip(grad)) + weight_decay * decay_mask(path) * param)

where `base` is Adam's scaled moments (adamw, adam), momentum (sgd with momentum) or the identity (plain
sgd). The decay term sits inside the learning rate, as in AdamW (Loshchilov & Hutter, Algorithm 2 line 12)
and `optax.adamw`, so that with no multipliers and nothing frozen "adamw" is exactly `optax.adamw` (after
`optax.clip_by_global_norm`). A multiplier scales the whole update, decay included: it is a per-group
learning rate, as a PyTorch parameter group's `lr` is. Frozen parameters get zero updates and no optimizer
state. Every mask is a list of regexes over `/`-joined parameter paths, resolved by `qajax.tree`. The
update itself is one expression per parameter (`qajax.train.fused_update`), not a chain of optax links.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping

import jax
import ml_collections
import optax

from qajax import tree
from qajax.errors import ConfigError
from qajax.train.fused_update import LeafRule, fused_update

NAMES = ("adamw", "adam", "sgd")
SCHEDULES = ("linear", "cosine", "exponential", "constant")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "adamw",  # one of NAMES
            "learning_rate": 3e-5,  # peak learning rate, reached at the end of warmup
            "b1": 0.9,  # adam/adamw: first-moment decay
            "b2": 0.999,  # adam/adamw: second-moment decay
            "eps": 1e-8,  # adam/adamw: added to the root of the second moment
            "momentum": 0.0,  # sgd: 0 is plain SGD (and keeps no state)
            "nesterov": False,  # sgd: Nesterov momentum
            "weight_decay": 0.01,  # adamw only, decoupled and scaled by the learning rate; must be 0 otherwise
            "no_decay": (r".*/bias", r".*(LayerNorm|layer_norm)/scale"),  # paths excluded from weight decay
            "grad_clip_norm": 1.0,  # clip the global gradient norm of trainable params; None or 0 turns it off
            "schedule": "linear",  # one of SCHEDULES, each after a linear warmup from 0
            "warmup_steps": 0,  # steps of linear warmup from 0 to learning_rate
            "warmup_ratio": 0.0,  # or warmup as a fraction of total_steps (rounded up); not both
            "end_learning_rate_ratio": 0.0,  # linear/cosine: final learning rate as a fraction of the peak
            "decay_gamma": 0.9,  # exponential: factor applied once per epoch (epochs counted from warmup's end)
            "lr_multipliers": (),  # ((regex, multiplier), ...): first matching rule wins, unmatched paths get 1
            "frozen": (),  # (regex, ...): matching params get zero updates and no optimizer state
        }
    )


def make_optimizer(
    config: ml_collections.ConfigDict, params: Mapping, *, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
    """(tx, learning_rate_schedule) for `params`; the schedule is what to log as `train/learning_rate`."""
    _check(config)
    schedule = make_schedule(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    _check_patterns_match(params, config.frozen, "optimizer.frozen")
    multipliers = [(pattern, float(multiplier)) for pattern, multiplier in config.lr_multipliers]
    _check_patterns_match(params, [pattern for pattern, _ in multipliers], "optimizer.lr_multipliers")
    frozen = tree.flatten(tree.mask(params, config.frozen))
    decays = tree.flatten(decay_mask(params, config.no_decay))
    per_param = tree.flatten(tree.match_rules(params, multipliers, default=1.0, require_all=False))
    rules = tree.unflatten(
        {path: LeafRule(not frozen[path], decays[path], per_param[path]) for path in tree.flatten(params)}
    )
    base = "adam" if config.name in ("adamw", "adam") else "momentum" if config.momentum else "identity"
    tx = fused_update(
        schedule,
        rules,
        base=base,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        clip_norm=config.grad_clip_norm or None,
    )
    return tx, schedule


def make_schedule(config: ml_collections.ConfigDict, *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then `config.schedule`, which starts counting at warmup's end."""
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(f"total_steps={total_steps}, steps_per_epoch={steps_per_epoch}: expected positive ints")
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={config.schedule!r}: expected one of {SCHEDULES}")
    if config.warmup_steps and config.warmup_ratio:
        raise ConfigError(
            f"optimizer.warmup_steps={config.warmup_steps} and optimizer.warmup_ratio={config.warmup_ratio}: "
            "set one of them, not both"
        )
    if not 0.0 <= config.warmup_ratio < 1.0:
        raise ConfigError(f"optimizer.warmup_ratio={config.warmup_ratio}: expected a fraction in [0, 1)")
    # Rounded up as transformers' `get_warmup_steps` does, so that a small ratio still warms up.
    warmup_steps = int(config.warmup_steps) or math.ceil(config.warmup_ratio * total_steps)
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(
            f"optimizer.warmup_steps={warmup_steps} (from warmup_steps/warmup_ratio): "
            f"expected 0 <= warmup_steps < total_steps={total_steps}"
        )
    peak = config.learning_rate
    if not peak > 0:
        raise ConfigError(f"optimizer.learning_rate={peak}: expected a positive number")
    end_ratio = config.end_learning_rate_ratio
    if not 0.0 <= end_ratio <= 1.0:
        raise ConfigError(f"optimizer.end_learning_rate_ratio={end_ratio}: expected a fraction in [0, 1]")
    if not 0.0 < config.decay_gamma <= 1.0:
        raise ConfigError(f"optimizer.decay_gamma={config.decay_gamma}: expected a factor in (0, 1]")

    decay_steps = total_steps - warmup_steps
    after_warmup = {
        "linear": lambda: optax.linear_schedule(peak, end_ratio * peak, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(peak, decay_steps, alpha=end_ratio),
        "exponential": lambda: optax.exponential_decay(peak, steps_per_epoch, config.decay_gamma, staircase=True),
        "constant": lambda: optax.constant_schedule(peak),
    }[config.schedule]()
    if warmup_steps == 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, after_warmup], boundaries=[warmup_steps])


def decay_mask(params: Mapping, no_decay_patterns: Iterable[str]) -> dict:
    """True where weight decay applies: every path that none of `no_decay_patterns` fully matches."""
    return jax.tree.map(operator.not_, tree.mask(params, no_decay_patterns))


def _check(config: ml_collections.ConfigDict) -> None:
    if config.name not in NAMES:
        raise ConfigError(f"optimizer.name={config.name!r}: expected one of {NAMES}")
    if config.weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={config.weight_decay}: expected a number >= 0")
    if config.weight_decay and config.name != "adamw":
        # Coupled L2 (decay added to the gradient before Adam) is a different, weaker regulariser; rather
        # than silently give it under the same key, ask for adamw or an explicit 0.
        raise ConfigError(
            f"optimizer.weight_decay={config.weight_decay} with optimizer.name={config.name!r}: "
            "decoupled weight decay is adamw's; set optimizer.weight_decay=0 or optimizer.name='adamw'"
        )
    if config.grad_clip_norm is not None and config.grad_clip_norm < 0:
        raise ConfigError(f"optimizer.grad_clip_norm={config.grad_clip_norm}: expected None, 0 (off) or > 0")
    if config.name == "sgd" and not 0.0 <= config.momentum < 1.0:
        raise ConfigError(f"optimizer.momentum={config.momentum}: expected a number in [0, 1)")
    if config.name != "sgd" and not (0.0 <= config.b1 < 1.0 and 0.0 <= config.b2 < 1.0 and config.eps > 0):
        raise ConfigError(
            f"optimizer.b1={config.b1}, optimizer.b2={config.b2}, optimizer.eps={config.eps}: "
            "expected b1 and b2 in [0, 1) and eps > 0"
        )


def _check_patterns_match(params: Mapping, patterns: Iterable[str], key: str) -> None:
    """A regex that matches no parameter is almost always a typo: say which one, and under which key."""
    for pattern in patterns:
        try:
            hits = jax.tree.leaves(tree.mask(params, [pattern]))
        except re.error as error:
            raise ConfigError(f"{key}: {pattern!r} is not a valid regex ({error})") from error
        if not any(hits):
            example = next(iter(tree.flatten(params)))
            raise ConfigError(f"{key}: {pattern!r} matches no parameter (regexes match whole paths, e.g. {example!r})")
