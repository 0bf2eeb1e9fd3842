"""Fine-tuning techniques as small transforms around the task and the step (see ../shared/STYLE.md).

A technique is built from its config section and the task, and may contribute any of these hooks:

    prepare_params(params) -> params           parameter surgery before training (LoRA adapters, prompts)
    wrap_forward(forward) -> forward           how params reach the model (LoRA merge, prompt prepend)
    bind(task)                                 receives the final task (wrapped forward) before wrap_loss
    wrap_loss(loss_fn) -> loss_fn              loss transforms (distillation, SMART, L2)
    init_extras(params) -> dict                its state in `TrainState.extras[name]` (teachers, ...)
    update_extras(extras, params, step)        updated inside the compiled step after each update
    frozen_patterns(params) -> [regex]         parameters the optimizer must not touch
    finalize_params(params) -> params          back to plain model params for export (LoRA merge)

`apply_techniques` wires them in the one place the loop calls; the step and the loop know none of them.
"""

from __future__ import annotations

import dataclasses
import importlib

import ml_collections

from qajax.errors import ConfigError

# config section name -> (module, builder, default config function)
REGISTRY: dict[str, tuple[str, str, str]] = {
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


def build_techniques(config, task) -> list:
    """The techniques whose config section is enabled, in a fixed order (param transforms first)."""
    section = config.get("techniques") if "techniques" in config else None
    if section is None:
        return []
    built = []
    for name in section:
        if name not in REGISTRY:
            raise ConfigError(f"techniques.{name}: unknown technique; expected one of {sorted(REGISTRY)}")
        if not section[name].get("enabled", False):
            continue
        built.append(getattr(_module(name), REGISTRY[name][1])(section[name], task))
    return built


def apply_techniques(task, techniques, optimizer_config):
    """(task with prepared params and wrapped forward, optimizer config with frozen patterns and the task's
    learning-rate groups and no-decay params, init_extras(params) -> the techniques' initial state, traced
    inside the state's creation)."""
    params, forward = task.initial_params, task.forward
    for t in techniques:
        if hasattr(t, "prepare_params"):
            params = t.prepare_params(params)
    for t in techniques:
        if hasattr(t, "wrap_forward"):
            forward = t.wrap_forward(forward)
    frozen = list(optimizer_config.frozen)
    for t in techniques:
        if hasattr(t, "frozen_patterns"):
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
        if hasattr(t, "bind"):
            t.bind(task)
    init_extras = lambda p: {t.name: t.init_extras(p) for t in techniques if hasattr(t, "init_extras")}
    return task, optimizer_config, init_extras


def finalize_params(techniques, params):
    for t in reversed(techniques):
        if hasattr(t, "finalize_params"):
            params = t.finalize_params(params)
    return params
