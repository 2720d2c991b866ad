"""Atomic file writes (a reader sees the old file or the complete new one, never half of it) and the
writer's lock of a directory (two writers of one zoo or embedding set take turns, never lose a write)."""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "atomic_path", "is_temporary", "locked", "read_json_or_none", "remove_temporaries", "sha256_file",
           "staged_dir", "sync_all", "write_json"]

_TMP = ".tmp-"  # what marks a writer's temporary file: ".NAME.tmp-PID-RANDOM"


def is_temporary(name: str) -> bool:
    """Whether a file name is one of ``atomic_path``'s temporary files (an interrupted write's, if it stays)."""
    return name.startswith(".") and _TMP in name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``. ``sync=False``
    leaves the syncing to the caller (``sync_all``, once after thousands of small files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")  # unique per writer and call
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync:
            _sync_dir(path.parent)  # persist the rename itself
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)


def sync_all(paths: list[Path]) -> None:
    """Make files written with ``atomic_path(sync=False)`` durable: one ``sync`` of the system where there is one
    (one flush instead of two fsyncs a file), else each file and its directory."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    for directory in {p.parent for p in paths}:
        _sync_dir(directory)


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Delete the temporary files that writers killed inside ``atomic_path`` left under ``directory``
    (a shard half-written can be hundreds of MB); how many. Call it holding the directory's lock, when
    no live writer has one open."""
    stale = [p for p in Path(directory).rglob(f"*{_TMP}*") if p.is_file() and is_temporary(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


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
def locked(directory: str | os.PathLike, what: str, timeout: float = 3600, beside: bool = False) -> Iterator[None]:
    """Hold the writer's lock of ``directory`` (created if missing; with ``beside``, the lock file lies next
    to it, for a directory that is replaced whole). A second writer waits, saying so on stderr, and gets a
    ``PeaceError`` after ``timeout`` seconds. The OS releases the lock of a killed process, so a leftover
    lock file never blocks anyone."""
    from filelock import FileLock, Timeout

    from peace.core.errors import PeaceError

    directory = Path(directory)
    lock_file = directory.parent / f".{directory.name}{LOCK_NAME}" if beside else directory / LOCK_NAME
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        if lock_file.is_symlink():
            raise PeaceError(f"the lock file {lock_file} is a symbolic link; remove it (PEACE makes its own)")
        lock = FileLock(str(lock_file))
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
    except OSError as e:
        raise PeaceError(f"cannot lock {what} {directory} for writing ({e.strerror or e}); make it writable, or "
                         f"name another output directory (nothing was changed)") from None
    try:
        yield
    finally:
        lock.release()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):  # not a pid, or another user's process: leave it
        return True
    return True


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty directory beside ``path``; when the block succeeds it takes the place of ``path``
    (swapped in one step where the OS can, the old one deleted after), and when it fails it is deleted and
    ``path`` is untouched. A directory rebuilt this way is the old complete one or the new complete one,
    never a mix, and a failed rebuild (a full disk, a crash) loses nothing. Callers hold a ``beside`` lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for left in path.parent.glob(f".{path.name}.new-*-*"):  # of a writer that was killed mid-way
        if not _alive(left.name.rsplit("-", 2)[-2]):
            shutil.rmtree(left, ignore_errors=True)
    stage = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    stage.mkdir()
    try:
        yield stage
        if not path.exists():
            os.rename(stage, path)
        elif _exchange(stage, path):
            pass  # stage now holds the old directory
        else:  # no atomic exchange here: a moment without ``path``; the old one waits beside it until the swap
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(path, old)
            os.rename(stage, path)
            os.rename(old, stage)
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            os.fsync(dir_fd)
            os.close(dir_fd)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
