"""The error types a user sees. Library code raises them; only `qajax.cli` prints them and exits."""

from __future__ import annotations


class QajaxError(Exception):
    """Base class: the message alone must tell the user what was found and what was expected."""


class ConfigError(QajaxError):
    """A config key, value or type is wrong (names the key)."""


class CheckpointError(QajaxError):
    """A checkpoint folder is missing files, has unknown or missing weights, or a shape disagrees."""


class DataError(QajaxError):
    """An input file is malformed (names the file, the line or record, and the field)."""

    def __init__(self, message: str, *, path: str | None = None, where: str | None = None):
        location = ", ".join(x for x in (path, where) if x)
        super().__init__(f"{location}: {message}" if location else message)
        self.path = path
        self.where = where
