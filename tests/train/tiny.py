"""A tiny span-QA task built from configs/tiny.py, for tests of the machinery."""

from qajax import config as config_lib
from qajax.tasks import build_task


def tiny_config(*overrides: str):
    return config_lib.load("configs/tiny.py", list(overrides))


def tiny_task(dropout: float = 0.0, dtype: str = "float32", *overrides: str):
    config = tiny_config(
        f"model.hidden_dropout={dropout}", f"model.attention_dropout={dropout}", f"model.dtype={dtype}", *overrides
    )
    return build_task(config)
