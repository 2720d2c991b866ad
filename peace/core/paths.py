"""Paths read from files (zoo manifests, model configs) must stay inside the directory they describe."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from peace.core.errors import PeaceError

__all__ = ["SAFE_NAME", "contained", "contained_all", "replacing", "safe_name"]

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # one path component: no separators, no "..", no control


def contained(base: str | Path, relative: str, what: str) -> Path:
    """``base / relative``, refusing absolute paths and ``..`` that would leave ``base``."""
    base = Path(base).resolve()
    path = (base / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(base):
        raise PeaceError(f"{what} {relative!r} points outside {base}; paths in it must be relative and stay inside "
                         f"that directory (a tampered or foreign file?)")
    return path


def contained_all(base: str | Path, relatives: Iterable[str], what: str) -> dict[str, Path]:
    """``contained`` for many paths: each directory resolved once, each file then checked with one ``lstat`` (a
    file that is a symbolic link is resolved in full), so a zoo of 30,000 shards opens in a fraction of a second."""
    base, parents, out = Path(base).resolve(), {}, {}
    for rel in relatives:
        head, _, leaf = rel.rpartition("/")
        if SAFE_NAME.fullmatch(leaf) and ".." not in leaf and not rel.startswith("/"):
            if head not in parents:
                parents[head] = contained(base, head or ".", what)
            if not (parents[head] / leaf).is_symlink():
                out[rel] = parents[head] / leaf
                continue
        out[rel] = contained(base, rel, what)
    return out


def safe_name(value: object, what: str) -> str:
    """``value`` if it can name one file or directory (letters, digits, ``.``, ``_``, ``-``; starts with a
    letter or digit; at most 100 characters), so that a name taken from user data can never leave its root."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise PeaceError(f"{what} {value!r} cannot be used as a file name; use letters, digits, '.', '_' and '-' "
                         f"(starting with a letter or digit, at most 100 characters, no '..')")
    return value


def _owned(path: str | Path, owner: str | Path, verb: str) -> Path:
    path, owner = Path(path), Path(owner).resolve()
    resolved = path.resolve()
    if path.is_symlink() or resolved == owner or not resolved.is_relative_to(owner):
        raise PeaceError(f"refusing to {verb} {path}: it is not a directory inside {owner}, which this command owns")
    return resolved


@contextlib.contextmanager
def replacing(path: str | Path, owner: str | Path) -> Iterator[Path | None]:
    """Rebuild the directory ``path`` (inside ``owner``) in the block: the old one waits beside it (the
    block gets its path, None when there was none), comes back when the block fails, and is deleted once
    it succeeds, so a failed rebuild loses nothing."""
    if not Path(path).exists():
        yield None
        return
    path = _owned(path, owner, "replace")
    aside = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    os.rename(path, aside)
    try:
        yield aside
    except BaseException:
        if path.exists():
            shutil.rmtree(path)
        os.rename(aside, path)
        raise
    shutil.rmtree(aside)
