"""The one exception type PEACE raises for bad input, so callers can catch it and show the message."""
from __future__ import annotations

__all__ = ["PeaceError", "unknown"]


class PeaceError(ValueError):
    """Bad input or a broken artifact. The message names the problem and how to fix it."""


def unknown(kind: str, name: object, valid: list[str] | tuple[str, ...] | set[str], hint: str = "") -> PeaceError:
    """An error for a name that is not one of ``valid``, listing what is."""
    msg = f"unknown {kind} {name!r}; valid: {', '.join(sorted(map(str, valid)))}"
    return PeaceError(msg + (f". {hint}" if hint else ""))
