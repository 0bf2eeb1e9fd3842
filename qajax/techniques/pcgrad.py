"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning") as a gradient transform: the task
gradients of a step with several tasks are projected off each other's conflicting directions.

The multitask task applies it inside its loss (`qajax.tasks.multitask.task.MultitaskTask.loss_fn`, the
projection in `qajax.tasks.multitask.pcgrad`), since the optimizer only ever sees the summed gradient and
only the task can split a batch into its tasks' losses. It needs steps with several tasks
(`task.schedule=together`).
"""

from __future__ import annotations

import ml_collections

from qajax.techniques.base import AppliedByTask


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"enabled": False})


class PCGrad(AppliedByTask):
    name, kind = "pcgrad", "optimizer"
    applied_by = ("multitask",)


def build(section, task) -> PCGrad:
    return PCGrad(task)
