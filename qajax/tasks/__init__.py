"""Tasks: each wires data, a head on the encoder, a loss and an evaluation into a `qajax.train.task.Task`,
and registers its builder here."""

from __future__ import annotations

import importlib

from qajax.errors import ConfigError

# task.name -> the module whose `build(config) -> Task` makes it
REGISTRY: dict[str, str] = {
    "synthetic_span": "qajax.tasks.synthetic",
    "squad": "qajax.tasks.squad.task",
    "multitask": "qajax.tasks.multitask.task",
}


def build_task(config):
    name = config.task.name
    if name not in REGISTRY:
        raise ConfigError(f"task.name={name!r}: expected one of {tuple(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).build(config)


def build_task_for_shapes(config):
    """(task, batch_shapes(num_examples)) without reading data or weights, for `qajax compile`."""
    name = config.task.name
    if name not in REGISTRY:
        raise ConfigError(f"task.name={name!r}: expected one of {tuple(REGISTRY)}")
    module = importlib.import_module(REGISTRY[name])
    if not hasattr(module, "build_for_shapes"):
        raise ConfigError(f"task.name={name!r} cannot be compiled ahead of time yet (span-QA tasks can)")
    return module.build_for_shapes(config)
