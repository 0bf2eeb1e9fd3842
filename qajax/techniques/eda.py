"""EDA (report 000 section 2.3) as a data transform: the training contexts are augmented anew every epoch.

The span-QA task applies it (`qajax.tasks.squad.task.eda_batches`, the augmentation in
`qajax.tasks.squad.eda`) from this section, since only it knows the contexts and their answer spans.
"""

from __future__ import annotations

import ml_collections

from qajax.techniques.base import AppliedByTask


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            # linear: start_rate at epoch 0 -> end_rate at the last ramp epoch; constant: end_rate
            "schedule": "linear",
            "start_rate": 0.0,
            "end_rate": 0.1,  # report 000: constant 0.1 and 0.05 hurt, linear 0 -> 0.1 came closest to no EDA
            "ramp_epochs": 0,  # 0: the whole run (train.epochs, or train.steps in epochs)
            "swap": 1.0,  # each operation's rate = scheduled rate * this share; 0 turns it off
            "delete": 1.0,
            "duplicate": 1.0,
        }
    )


class Eda(AppliedByTask):
    name, kind = "eda", "data"
    applied_by = ("squad",)


def build(section, task) -> Eda:
    return Eda(task)
