"""The experiment scripts (`scripts/experiments/*.py`) as modules, for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "scripts" / "experiments"


def load_script(name: str):
    """A fresh module of scripts/experiments/NAME.py, registered as NAME. The folder stays on sys.path, as when
    a script runs from it (scripts import their siblings, some inside functions), and the module is in
    sys.modules because dataclasses look their module up there."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
