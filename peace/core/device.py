"""Which torch device a command runs on (``cpu``, ``cuda``, ``cuda:N``, ``auto``), checked against this machine."""
from __future__ import annotations

import torch

from peace.core.errors import PeaceError, unknown

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a device this machine lacks is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise unknown("device", device, ["auto", "cpu", "cuda", "cuda:N"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PeaceError(f"device {device!r} asked for but torch {torch.__version__} sees no CUDA GPU here; "
                         f"use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PeaceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise unknown("device", device, ["auto", "cpu", "cuda", "cuda:N"])
    return dev
