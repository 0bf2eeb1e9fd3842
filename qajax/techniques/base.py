"""The technique interface: what a fine-tuning technique may change, declared once.

A technique is one of four kinds (../shared/STYLE.md) and overrides only the hooks of its kind; every hook
has a default that changes nothing, so the composition point (`qajax.techniques.apply_techniques`) and the
step call each hook of every technique without probing for it:

    parameters   prepare_params(params) -> params       surgery before training (LoRA adapters, prompts)
                 wrap_forward(forward) -> forward       how params reach the model (LoRA merge, prompt, freezing)
                 finalize_params(params) -> params      back to plain model params for export (its inverse)
    optimizer    frozen_patterns(params) -> [regex]     parameters the optimizer must not touch
    loss         wrap_loss(loss_fn) -> loss_fn          loss transforms (distillation, SMART, L2)
                 bind(task)                             receives the final task (wrapped forward) first
    data         the task applies it while it makes its batches (EDA: task.make_train_batches)

A technique that needs what only a task knows (EDA: the examples' text and answer spans; PCGrad: the loss
of each task of a multitask batch) is an `AppliedByTask`: the task reads `config.techniques.<name>` and
applies it, the technique's hooks stay no-ops, and building it checks that the task declares it in
`Task.applies_techniques`, so a config that enables it for another task fails instead of doing nothing.

and any kind may keep state in `TrainState.extras[name]`: `init_extras(params)` (None: no state) and
`update_extras(own, params, step)`, run inside the compiled step after each update.

A subclass method whose name is one letter or two off a hook's (`wrap_los`) is refused when the class is
defined: a misspelled hook would otherwise do nothing, silently.
"""

from __future__ import annotations

import difflib

from qajax.errors import ConfigError

KINDS = ("parameters", "optimizer", "loss", "data")
HOOKS = (
    "prepare_params",
    "wrap_forward",
    "finalize_params",
    "frozen_patterns",
    "wrap_loss",
    "bind",
    "init_extras",
    "update_extras",
)


class Technique:
    name: str = ""  # its config section under `techniques.` and its key in `TrainState.extras`
    kind: str = ""  # one of KINDS

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attribute in vars(cls):
            if attribute.startswith("_") or attribute in HOOKS:
                continue
            near = difflib.get_close_matches(attribute, HOOKS, n=1, cutoff=0.85)
            if near:
                raise TypeError(f"{cls.__name__}.{attribute}: not a technique hook; did you mean {near[0]!r}?")

    # -- parameters ---------------------------------------------------------------------------------------
    def prepare_params(self, params):
        return params

    def wrap_forward(self, forward):
        return forward

    def finalize_params(self, params):
        return params

    # -- optimizer ----------------------------------------------------------------------------------------
    def frozen_patterns(self, params) -> list[str]:
        return []

    # -- loss ---------------------------------------------------------------------------------------------
    def bind(self, task) -> None:
        """The final task (its forward wrapped by every technique) before `wrap_loss` is called."""

    def wrap_loss(self, loss_fn):
        return loss_fn

    # -- state --------------------------------------------------------------------------------------------
    def init_extras(self, params):
        """This technique's initial state in `TrainState.extras[name]`, or None for none."""
        return None

    def update_extras(self, own, params, step):
        return own


class AppliedByTask(Technique):
    """A technique its task applies (see the module docstring): it only checks that the task does."""

    applied_by: tuple[str, ...] = ()  # the `task.name`s that apply it, for the error

    def __init__(self, task):
        if self.name not in task.applies_techniques:
            raise ConfigError(
                f"techniques.{self.name}.enabled=True: this config's task does not apply {self.name}; "
                f"task.name must be one of {self.applied_by}, or set techniques.{self.name}.enabled=false"
            )
