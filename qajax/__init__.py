"""qajax: fine-tuning BERT-family encoders in JAX for extractive QA and multitask sentence tasks.

The names a notebook needs are here, imported on first use (`import qajax` loads no JAX):
`load_config`, `fit` (train a config), `prepare`, `load_model`, `predictor`, `answer`, `evaluate` (see `qajax.api`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_config": ("qajax.config", "load"),
    "fit": ("qajax.run", "train"),
    "prepare": ("qajax.run", "prepare"),
    "load_model": ("qajax.api", "load_model"),
    "predictor": ("qajax.api", "predictor"),
    "answer": ("qajax.api", "answer"),
    "evaluate": ("qajax.api", "evaluate"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # once: later lookups do not come here
        return value
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("qajax")
        except PackageNotFoundError:
            return "unknown"
    raise AttributeError(f"module 'qajax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
