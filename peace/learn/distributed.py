"""Data-parallel encoder training over processes with torch DDP (gloo on CPU, NCCL on GPU).

Every process draws the same global batch (the samplers are seeded), encodes its share of it, and
gathers the others' embeddings, so the contrastive loss sees the whole batch as in one process;
DDP averages the gradients. Only rank 0 writes the run directory. Launch with
``peace train --nproc N`` (processes on this machine) or ``torchrun ... -m peace train`` (the
process group then comes from torchrun's environment).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Rank", "current", "first_rank_first", "gather_rows", "launch", "with_own_rows"]


@dataclass(frozen=True)
class Rank:
    """This process's place in the group (``Rank(0, 1)`` when training alone)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        lo, extra = divmod(n, self.size)
        start = self.rank * lo + min(self.rank, extra)
        return slice(start, start + lo + (self.rank < extra))


def current() -> Rank:
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return Rank()


class first_rank_first:
    """Rank 0 runs the block first (e.g. writing a cache), the others after it: ``with first_rank_first():``."""

    def __enter__(self) -> None:
        r = current()
        if r.size > 1 and not r.main:
            dist.barrier()

    def __exit__(self, *exc: object) -> None:
        r = current()
        if r.size > 1 and r.main and exc[0] is None:
            dist.barrier()


def _gathered(x: Tensor) -> list[Tensor]:
    """Every rank's ``x`` (rows may differ in number), in rank order, detached."""
    r = current()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(r.size)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(r.size)]
    dist.all_gather(parts, padded)
    return [p[:s] for p, s in zip(parts, sizes)]


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated in rank order, on every rank (no gradient through it)."""
    return x if current().size == 1 else torch.cat(_gathered(x))


def with_own_rows(x: Tensor) -> Tensor:
    """The whole batch's rows (``gather_rows``) with this rank's own rows keeping their gradient.

    Each rank's loss then differentiates through its own rows only; scaled by the world size and
    averaged by DDP, the gradients sum to those of one process holding the whole batch."""
    r = current()
    if r.size == 1:
        return x
    parts = _gathered(x)
    parts[r.rank] = x
    return torch.cat(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, backend: str, fn: Callable, args: tuple) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def launch(fn: Callable, nproc: int, device: str, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` processes on this machine, joined in one process group."""
    import torch.multiprocessing as mp

    from peace.core.errors import PeaceError

    if nproc < 2:
        raise PeaceError(f"--nproc must be at least 2 to train in several processes, got {nproc}")
    if backend_for(device) == "nccl" and torch.cuda.device_count() < nproc:
        raise PeaceError(f"--nproc {nproc} on {device} needs {nproc} GPUs (one per process); this machine has "
                         f"{torch.cuda.device_count()}")
    try:
        mp.spawn(_worker, args=(nproc, _free_port(), backend_for(device), fn, args), nprocs=nproc, join=True)
    except mp.ProcessRaisedException as e:  # a PeaceError in a process: its message, not a traceback
        said = [line for line in str(e).splitlines() if line.startswith("peace.core.errors.PeaceError: ")]
        if said:
            raise PeaceError(said[-1].removeprefix("peace.core.errors.PeaceError: ")) from None
        raise


def init_from_environment(device: str) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment); False when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend_for(device), init_method="env://")
    return True
