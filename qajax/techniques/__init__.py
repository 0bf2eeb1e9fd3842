"""Fine-tuning techniques as small transforms around the task and the step (see ../shared/STYLE.md and the
interface every technique implements, `qajax.techniques.base.Technique`).

Order. Techniques apply in the order of REGISTRY below, whatever order a config lists them in:
parameter surgery (`prepare_params`) and forward wraps in that order, so LoRA's adapters exist before a
prompt is prepended and freezing sees both; loss transforms wrap the task loss innermost first in that
order, so SDA/SDV distil the task loss, L2 is added around them and SMART, outermost, smooths all of it;
`finalize_params` undoes the parameter surgery in reverse. `apply_techniques` is the one place this happens.
EDA (data) and PCGrad (gradient) come first: their task applies them (`base.AppliedByTask`) before any of
the above sees a batch or a loss: EDA while it makes the training batches, PCGrad inside the task loss, so
that the loss transforms wrap the projected loss (SMART smooths it, distillation distils it).
"""

from __future__ import annotations

import dataclasses
import importlib

import ml_collections

from qajax.errors import ConfigError
from qajax.techniques.base import Technique

# config section name -> (module, builder, default config function)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "eda": ("eda", "build", "default_config"),
    "pcgrad": ("pcgrad", "build", "default_config"),
    "sda": ("distill", "build_sda", "default_config_sda"),
    "sdv": ("distill", "build_sdv", "default_config_sdv"),
    "lora": ("lora", "build", "default_config"),
    "prompt": ("prompt", "build", "default_config"),
    "freeze": ("freeze", "build", "default_config"),
    "l2": ("l2", "build", "default_config"),
    "smart": ("smart", "build", "default_config"),
}


def _module(name: str):
    return importlib.import_module(f"qajax.techniques.{REGISTRY[name][0]}")


def techniques_section() -> ml_collections.ConfigDict:
    """`config.techniques`: every technique's section with its defaults, all disabled."""
    section = ml_collections.ConfigDict()
    for name, (_, _, defaults) in REGISTRY.items():
        section[name] = getattr(_module(name), defaults)()
    return section


def build_techniques(config, task) -> list[Technique]:
    """The techniques whose config section is enabled, in REGISTRY's order (see the module docstring)."""
    section = config.techniques
    for name in section:
        if name not in REGISTRY:
            raise ConfigError(f"techniques.{name}: unknown technique; expected one of {sorted(REGISTRY)}")
    return [getattr(_module(name), REGISTRY[name][1])(section[name], task) for name in REGISTRY
            if name in section and section[name].enabled]  # fmt: skip


def apply_techniques(task, techniques, optimizer_config):
    """(task with prepared params and wrapped forward, optimizer config with frozen patterns and the task's
    learning-rate groups and no-decay params, init_extras(params) -> the techniques' initial state, traced
    inside the state's creation)."""
    params, forward = task.initial_params, task.forward
    for t in techniques:
        params = t.prepare_params(params)
    for t in techniques:
        forward = t.wrap_forward(forward)
    frozen = list(optimizer_config.frozen)
    for t in techniques:
        frozen.extend(t.frozen_patterns(params))
    optimizer_config = optimizer_config.copy_and_resolve_references()
    with optimizer_config.unlocked():
        optimizer_config.frozen = tuple(dict.fromkeys(frozen))
        optimizer_config.lr_multipliers = (*optimizer_config.lr_multipliers, *task.lr_multipliers)
        optimizer_config.no_decay = tuple(dict.fromkeys((*optimizer_config.no_decay, *task.no_decay)))
    # Evaluation must see what training sees (LoRA merge, prompts): rebuild predict from the wrapped forward.
    predict_fn = task.make_predict(forward) if task.make_predict else task.predict_fn
    task = dataclasses.replace(task, initial_params=params, forward=forward, predict_fn=predict_fn)
    for t in techniques:
        t.bind(task)

    def init_extras(params) -> dict:
        states = {t.name: t.init_extras(params) for t in techniques}
        return {name: state for name, state in states.items() if state is not None}

    return task, optimizer_config, init_extras


def finalize_params(techniques: list[Technique], params):
    for t in reversed(techniques):
        params = t.finalize_params(params)
    return params
