"""Counter-based random numbers: model i's draws depend only on (its seed, a key), never on which
other models share its population. That is what makes a model trained in a population of 1000 equal
to the same model trained alone, and a resumed build equal to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

__all__ = ["bits", "model_seed", "normal", "permutation", "uniform"]

_M32 = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash on int64 tensors (multipliers < 2**31 keep products below 2**63)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def _key(*parts: int) -> int:
    k = torch.tensor(0x5EED, dtype=torch.int64)
    for p in parts:
        k = _mix(k ^ _mix(torch.tensor(int(p) & _M32, dtype=torch.int64)))
    return int(k)


def bits(seeds: Tensor, key: tuple[int, ...], n: int) -> Tensor:
    """(P, n) independent 32-bit integers for each seed in ``seeds`` (shape (P,)) and stream ``key``."""
    base = _mix(seeds.to(torch.int64).reshape(-1, 1) ^ _key(*key))
    j = _mix(torch.arange(n, dtype=torch.int64).reshape(1, -1) + 0x3C6EF372)
    return _mix(base ^ j)


def uniform(seeds: Tensor, key: tuple[int, ...], shape: tuple[int, ...]) -> Tensor:
    """(P, *shape) float32 uniform in (0, 1)."""
    b = bits(seeds, key, math.prod(shape))
    return (((b >> 8).to(torch.float32) + 0.5) / float(1 << 24)).reshape(-1, *shape)


def normal(seeds: Tensor, key: tuple[int, ...], shape: tuple[int, ...]) -> Tensor:
    """(P, *shape) float32 standard normal (Box-Muller)."""
    u1, u2 = uniform(seeds, (*key, 1), shape), uniform(seeds, (*key, 2), shape)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def permutation(seeds: Tensor, key: tuple[int, ...], n: int) -> Tensor:
    """(P, n) int64: a random permutation of range(n) per seed."""
    return torch.argsort(bits(seeds, key, n), dim=1, stable=True)


def model_seed(seed: int, model_id: str, salt: str = "") -> int:
    """A stable 31-bit seed per (run seed, model, purpose), whatever else is trained beside it."""
    return int(hashlib.sha1(f"{seed}:{model_id}:{salt}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
