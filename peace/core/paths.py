"""Paths read from files (zoo manifests, model configs) must stay inside the directory they describe."""
from __future__ import annotations

from pathlib import Path

from peace.core.errors import PeaceError

__all__ = ["contained"]


def contained(base: str | Path, relative: str, what: str) -> Path:
    """``base / relative``, refusing absolute paths and ``..`` that would leave ``base``."""
    base = Path(base).resolve()
    path = (base / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(base):
        raise PeaceError(f"{what} {relative!r} points outside {base}; paths in it must be relative and stay inside "
                         f"that directory (a tampered or foreign file?)")
    return path

