"""Experiment configs: Python files whose `get_config()` returns a ConfigDict (big_vision style),
`dotted.key=value` overrides typed by the field they replace, and the resolved copy saved with a run.

    config = load("configs/squad.py:model=minilm", ["optimizer.learning_rate=1e-4", "train.steps=200"])
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections.config_dict import FieldReference, RequiredValueError

from qajax import config_checks
from qajax.errors import ConfigError
from qajax.files import atomic_write_text

SAVED_NAME = "config.json"
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_NONE = ("none", "null")
_SCALAR_TYPES = (bool, int, float, str)  # bool first: it is a subclass of int
_NoneType = type(None)


def load(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Runs `get_config` of the file `path` or `path:arg`, applies `overrides` and returns the config locked."""
    file_path, arg = _split_arg(path)
    config = _call_get_config(_import_get_config(file_path), arg, file_path)
    return apply_overrides(config, overrides)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets each `dotted.key=value` in place, parsed as the type of the field it replaces; returns `config` locked.

    Every override is checked before any is set, so a typo leaves `config` as it was. A key given twice
    keeps its last value, as repeated command-line flags do.
    """
    fields = dict(_leaves(config))
    values: dict[str, Any] = {}
    for override in overrides:
        key, has_equals, text = override.partition("=")
        key = key.strip()
        if not has_equals:
            raise ConfigError(f"override {override!r} has no '=': write it as dotted.key=value, e.g. train.steps=100")
        if key not in fields:
            raise ConfigError(_unknown_key_message(key, fields))
        values[key] = _parse_override(key, text, fields[key])
    for key in config_checks.DTYPE_KEYS:  # `bf16` in a config file or an override reads as `bfloat16`
        if key in fields and not isinstance(fields[key], FieldReference):
            values.setdefault(key, fields[key])
    for key, value in values.items():
        parent, _, name = key.rpartition(".")
        (config[parent] if parent else config)[name] = config_checks.normalize(key, value)
    # Fails here, before anything runs, if a required placeholder is still unset or a value is not allowed.
    config_checks.check(flatten(config))
    return config.lock()


def flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{"optimizer": {"learning_rate": 1e-4}} -> {"optimizer.learning_rate": 1e-4}; sequences stay whole."""
    flat = {}
    for key, field in _leaves(config):
        try:
            flat[key] = field.get() if isinstance(field, FieldReference) else field
        except RequiredValueError:
            raise ConfigError(f"config key {key!r} is required and has no value: set it with --set {key}=...") from None
    return flat


def save(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Writes the resolved config to `workdir/config.json` (sorted keys, tuples as lists) and returns that path."""
    path = Path(workdir) / SAVED_NAME
    for key, value in flatten(config).items():  # to_json's own error would not say which key
        try:
            json.dumps(value, cls=ml_collections.config_dict.CustomJSONEncoder)
        except TypeError:
            raise ConfigError(f"cannot save config key {key!r}: a {type(value).__name__} is not JSON") from None
    atomic_write_text(path, config.to_json(sort_keys=True, indent=2) + "\n")
    return path


def read_saved(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config that `save` wrote, locked. JSON has only lists, so sequences come back as tuples (as configs
    write them); placeholders come back as plain None, without their declared type."""
    path = Path(workdir) / SAVED_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; expected the config.json that a run saves in its workdir") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys, found a {type(data).__name__}")
    return _from_json(data).lock()


# Loading the file.


def _split_arg(path: str) -> tuple[Path, str | None]:
    """`configs/squad.py:model=minilm,runlocal` -> (Path("configs/squad.py"), "model=minilm,runlocal")."""
    if ":" not in path or Path(path).is_file():
        return Path(path), None
    file_part, _, arg = path.partition(":")
    return Path(file_part), arg


def _import_get_config(file_path: Path):
    if not file_path.is_file():
        raise ConfigError(f"config file {file_path} does not exist (expected a Python file defining get_config())")
    # By path, not by module name: config files live outside the package and need not be importable.
    spec = importlib.util.spec_from_file_location(f"qajax_config_{file_path.stem}", file_path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {file_path} is not a Python file (expected a .py file defining get_config())")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{file_path}, line {e.lineno}: {e.msg}") from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{file_path} defines no get_config(); expected get_config() or get_config(arg: str)")
    return get_config


def _call_get_config(get_config, arg: str | None, file_path: Path) -> ml_collections.ConfigDict:
    parameters = inspect.signature(get_config).parameters.values()
    if arg is not None and not parameters:
        raise ConfigError(f"{file_path}: get_config() takes no argument, but {arg!r} was given after ':'")
    if arg is None and any(p.default is p.empty and p.kind != p.VAR_POSITIONAL for p in parameters):
        raise ConfigError(f"{file_path}: get_config(arg) needs an argument; write {file_path}:ARG")
    config = get_config() if arg is None else get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{file_path}: get_config() returned a {type(config).__name__}; expected a ConfigDict")
    return config


# Overrides.


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, field) of every leaf; a field is its value, or the FieldReference behind a placeholder.

    FieldReferences are kept, not read: they carry the declared type of a None placeholder, and reading
    an unset required placeholder raises.
    """
    for name, field in config.items(preserve_field_references=True):
        if isinstance(field, ml_collections.ConfigDict):
            yield from _leaves(field, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _unknown_key_message(key: str, fields: dict[str, Any]) -> str:
    below = [k for k in fields if k.startswith(f"{key}.")]
    if below:
        return f"config key {key!r} is a group of settings; set one of its keys: {', '.join(below)}"
    same_leaf = [k for k in fields if k.endswith(f".{key.rpartition('.')[2]}")]
    close = same_leaf + [k for k in difflib.get_close_matches(key, fields, n=3, cutoff=0.6) if k not in same_leaf]
    hint = f"; did you mean {' or '.join(repr(k) for k in close[:3])}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def _parse_override(key: str, text: str, field: Any) -> Any:
    if isinstance(field, FieldReference):  # a placeholder or a shared value: its declared type rules
        declared, current, accepts_none = field.get_type(), None if field.empty() else field.get(), True
    else:
        declared, current, accepts_none = type(field), field, field is None
    if accepts_none and text.strip().lower() in _NONE:
        return None
    element_type = _element_type(current) if declared in (tuple, list) else None
    if declared not in (*_SCALAR_TYPES, _NoneType, tuple, list) or element_type not in (None, *_SCALAR_TYPES):
        raise ConfigError(f"config key {key!r} holds a {_type_name(declared, current)}, which --set cannot write")
    try:
        return _parse(text, declared, element_type)
    except ValueError:
        raise ConfigError(f"config key {key!r} expects {_type_name(declared, current)}, got {text!r}") from None


def _parse(text: str, declared: type, element_type: type | None = None) -> Any:
    if declared is bool:
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise ValueError(text)
    if declared in (int, float, str):
        return declared(text)  # int("1.5") raises, float("3") and float("1e-5") parse
    if declared is _NoneType:  # a plain None field declares nothing, so take the value as written
        return _literal(text)
    # A sequence: JSON / Python in brackets (`[1, 2]`, `["a", "b"]`), else comma-separated (`a,b`, `[a,b]`).
    # Only bracketed text is read as a literal, so that `1,2` for a tuple of str stays ("1", "2").
    stripped = text.strip()
    bracketed = stripped[:1] + stripped[-1:] in ("[]", "()")
    items = _literal(stripped) if bracketed else None
    if isinstance(items, (list, tuple)):
        return declared(_coerce(item, element_type) for item in items)
    inner = stripped[1:-1] if bracketed else stripped
    parts = [part.strip() for part in inner.split(",") if part.strip()]
    return declared(_parse(part, element_type) if element_type else _literal(part) for part in parts)


def _literal(text: str) -> Any:
    """`3` -> 3, `[1, 2]` -> [1, 2], `true`/`null` (JSON) -> True/None, anything else -> the text itself."""
    stripped = text.strip()
    if stripped.lower() in _NONE:
        return None
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(stripped)
        except (ValueError, SyntaxError, TypeError):
            pass
    return text


def _coerce(item: Any, element_type: type | None) -> Any:
    """A parsed JSON element as `element_type`, with the one widening ml_collections allows (int -> float)."""
    if element_type is None or type(item) is element_type:
        return item
    if element_type is float and type(item) is int:
        return float(item)
    raise ValueError(item)


def _element_type(current: Sequence | None) -> type | None:
    """The one type of the existing elements, or None when there are none or they differ."""
    types = {type(item) for item in current or ()}
    return types.pop() if len(types) == 1 else None


def _type_name(declared: type, current: Any) -> str:
    element_type = _element_type(current) if declared in (tuple, list) else None
    return f"{declared.__name__} of {element_type.__name__}" if element_type else declared.__name__


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return ml_collections.ConfigDict({key: _from_json(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_from_json(item) for item in value)
    return value
