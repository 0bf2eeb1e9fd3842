"""Reading JSON with an error that names the file, and writing files and folders so that an interrupted write
never leaves a half-written result."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qajax.errors import CheckpointError, DataError


def read_json(path: str | os.PathLike) -> Any:
    """The parsed file; a missing, unreadable or malformed one raises DataError naming the file (and, for
    malformed JSON, the line and column)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror}", path=str(path)) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON: {e}", path=str(path)) from e


def _umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere reading it means setting it for an instant, which
    a file created meanwhile by another thread (Orbax writes in the background) would see."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike, *, folder: bool) -> None:
    """mkstemp / mkdtemp create 0600 / 0700 whatever the umask: give `path` the mode that open / mkdir would."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `out_dir`; renames it to `out_dir` only if the block succeeds."""
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise CheckpointError(f"{out_dir} exists and is not empty (pass overwrite=True / --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        follow_umask(tmp, folder=True)
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        follow_umask(tmp, folder=False)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
