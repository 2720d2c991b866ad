"""Atomic file writes (a reader sees the old file or the complete new one, never half of it) and the
writer's lock of a directory (two writers of one zoo or embedding set take turns, never lose a write)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "atomic_path", "locked", "read_json_or_none", "sha256_file", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")  # unique per writer and call
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # persist the rename itself
            dir_fd = os.open(path.parent, os.O_RDONLY)
            os.fsync(dir_fd)
            os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a stamp to recompute)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


LOCK_NAME = ".peace.lock"


@contextlib.contextmanager
def locked(directory: str | os.PathLike, what: str, timeout: float = 3600) -> Iterator[None]:
    """Hold the writer's lock of ``directory`` (created if missing). A second writer waits, saying
    so on stderr, and gets a ``PeaceError`` after ``timeout`` seconds. The OS releases the lock of
    a killed process, so a leftover lock file never blocks anyone."""
    from filelock import FileLock, Timeout

    from peace.core.errors import PeaceError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[peace] {what} {directory} is being written by another process; waiting for it to finish ...",
              file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise PeaceError(f"{what} {directory} has been locked by another writer for over {timeout:.0f} s; "
                             f"wait for that process to finish (nothing was changed)") from None
    try:
        yield
    finally:
        lock.release()
