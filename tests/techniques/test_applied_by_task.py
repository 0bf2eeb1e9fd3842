"""EDA and PCGrad are applied by their tasks from `techniques.eda` / `techniques.pcgrad`: enabling one for a
task that cannot apply it is a ConfigError naming the key, not a run that silently trains without it."""

import pytest

from qajax import config as config_lib
from qajax.errors import ConfigError
from qajax.tasks import build_task, build_task_for_shapes
from qajax.tasks.squad import task as squad
from qajax.techniques import build_techniques
from tests.tasks.multitask.tiny import tiny_config


def _squad_for_shapes(*overrides):
    """The span-QA task on configs/tiny.py's random encoder, without data or weights."""
    config = config_lib.load("configs/tiny.py", list(overrides))
    with config.unlocked():
        config.task = squad.default_config()
    return config, build_task_for_shapes(config)[0]


def test_eda_only_on_squad():
    config, task = _squad_for_shapes("techniques.eda.enabled=true")
    assert [(t.name, t.kind) for t in build_techniques(config, task)] == [("eda", "data")]
    config = config_lib.load("configs/tiny.py", ["techniques.eda.enabled=true"])
    with pytest.raises(ConfigError, match=r"techniques\.eda\.enabled.*\('squad',\)"):
        build_techniques(config, build_task_for_shapes(config)[0])  # synthetic_span


def test_pcgrad_only_on_multitask(tmp_path):
    config, task = _squad_for_shapes("techniques.pcgrad.enabled=true")
    with pytest.raises(ConfigError, match=r"techniques\.pcgrad\.enabled.*\('multitask',\)"):
        build_techniques(config, task)
    config = tiny_config(tmp_path, "task.schedule=together", "techniques.pcgrad.enabled=true")
    task = build_task(config)
    assert task.pcgrad
    assert [(t.name, t.kind) for t in build_techniques(config, task)] == [("pcgrad", "optimizer")]
    config = tiny_config(tmp_path, "techniques.eda.enabled=true")
    with pytest.raises(ConfigError, match=r"techniques\.eda\.enabled"):
        build_techniques(config, build_task(config))
