"""Rows grouped by a key: batches of one architecture, one io-space, one task."""
from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

__all__ = ["positions"]

K = TypeVar("K", bound=Hashable)


def positions(keys: Iterable[K]) -> dict[K, list[int]]:
    """Where each distinct key occurs in ``keys``: {key: its indices, ascending}, keys in first-seen order."""
    out: dict[K, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out
