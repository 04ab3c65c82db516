"""Files of the benchmark written whole or not at all, and read back with a one-line error when they are not whole.

A driver killed while it writes ``results.json``, ``summary.json``, a method's state file or a reporting-cache entry
must not leave half a file that a later ``--resume`` (or ``benchmarks_md.py``) reads as a smaller table: every such
file is written to a temporary file in the same folder, flushed, and renamed over the old one (``os.replace`` is
atomic on one file system). A file that is truncated or corrupt all the same (a full disk, a hand edit, a copy cut
short) is reported by :func:`read_json` as a :class:`~ray_bilevel.config.ConfigError` that names it and what to do.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

from ray_bilevel.config import ConfigError

__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "CORRUPT_FILE"]

#: The error of a file that is not whole; ``fix`` says what to delete (the file, or the folder that holds it).
CORRUPT_FILE = "{path} is truncated or corrupt ({why}); {fix}"


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, flushed, then renamed over it.

    The temporary name is hidden and unique per process and thread (``.NAME.PID.THREAD.tmp``); a writer killed
    before the rename leaves it behind and ``path`` untouched. The file gets the permissions ``open`` gives.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump(obj, **dump_kwargs)`` into ``path`` via :func:`atomic_write_bytes`; an object that cannot be
    serialised (``allow_nan=False`` and a NaN) raises before anything is written."""
    atomic_write_bytes(path, json.dumps(obj, **dump_kwargs).encode())


def read_json(path: str, fix: str, expect: type | tuple[type, ...] | None = None) -> Any:
    """The JSON in ``path``; a truncated, corrupt or (``expect``) mistyped file raises a one-line
    :class:`ConfigError` naming it and ``fix`` (what to do, e.g. "delete it and run with --resume again").
    A missing file raises ``FileNotFoundError`` as ``open`` does."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        value = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        why = "empty" if not data.strip() else (
            f"invalid JSON at byte {exc.pos} of {len(data)}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8")
        raise ConfigError(CORRUPT_FILE.format(path=path, why=why, fix=fix)) from None
    if expect is not None and not isinstance(value, expect):
        raise ConfigError(CORRUPT_FILE.format(path=path, why=f"holds a JSON {type(value).__name__}", fix=fix))
    return value
