"""Where fanned-out work runs: here, one piece after another, or as Ray tasks on a cluster.

Commands that fan out (``peace zoo build``, ``embed``, ``ablate``, ``evaluate``'s transfer study)
take an engine. ``Serial`` runs each piece at once in this process (the default: nothing changes
and Ray is not imported). ``RayEngine`` submits pieces as Ray tasks, to a local Ray started with
this machine's cores (``--ray local``) or to a running cluster (``--ray auto``: ``RAY_ADDRESS`` or
the cluster ``ray start`` made here). Pieces are module-level functions of ``peace``: every node
needs PEACE installed and the artifacts on a path all nodes see (a shared filesystem).

Each Ray task sets torch's thread count to the CPUs it asked for, so a piece computes exactly what
``Serial`` computes at that thread count (float sums in matrix products depend on it).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

from peace.core.errors import PeaceError, unknown

__all__ = ["RAY_MODES", "Engine", "RayEngine", "Serial", "Threads", "chunks", "local_cores", "open_engine"]

RAY_MODES = ("local", "auto")


def local_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``RAY_ADDRESS`` (host:port) nothing answers at: Ray itself retries for minutes."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # unset, "auto" or a ray:// client address: Ray's own lookup and errors
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise PeaceError(f"RAY_ADDRESS={address} does not answer ({e}); is the cluster's head running (`ray start "
                         f"--head` prints its address)? Fix or unset RAY_ADDRESS, or use --ray local") from None


def _with_threads(fn: Callable, threads: int, args: tuple) -> Any:
    """Run ``fn(*args)`` with torch on ``threads`` threads (inside a Ray worker)."""
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(*args)


class Engine:
    """Runs pieces of work: ``submit`` one (a ``concurrent.futures.Future``), ``map_with`` many
    through workers that set up a state once (e.g. load an encoder)."""

    slots = 1  # pieces worth keeping in flight at once

    def submit(self, fn: Callable, *args: Any, cpus: int = 1, gpus: float = 0) -> Future:
        raise NotImplementedError

    def map_with(self, setup: Callable, setup_args: tuple, fn: Callable, items: Sequence, cpus: int = 1,
                 progress: str | None = None) -> list:
        """``[fn(state, x) for x in items]`` where each worker makes ``state = setup(*setup_args)`` once;
        ``progress`` names a bar that counts finished items."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Serial(Engine):
    """Everything in this process, in submission order: each ``submit`` runs its piece at once."""

    def submit(self, fn: Callable, *args: Any, cpus: int = 1, gpus: float = 0) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - handed to whoever reads the future, as Ray does
            f.set_exception(e)
        return f

    def map_with(self, setup: Callable, setup_args: tuple, fn: Callable, items: Sequence, cpus: int = 1,
                 progress: str | None = None) -> list:
        state = setup(*setup_args)
        return [fn(state, x) for x in _bar(items, progress)]


class Threads(Serial):
    """Pieces on a pool of threads in this process (for pieces that wait on subprocesses, e.g. papermill).

    While the pool is open, the subprocesses its pieces start (notebook kernels) share the cores: each
    gets ``OMP_NUM_THREADS`` = cores // workers unless the user set it. Left to torch, every kernel
    takes every core, and OpenMP threads that outnumber the cores spin against each other (two tiny
    ablation runs at once on 2 cores took several times as long as one after the other).
    """

    def __init__(self, workers: int = 1):
        from concurrent.futures import ThreadPoolExecutor

        self.slots = max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.slots)
        self._set_omp = self.slots > 1 and "OMP_NUM_THREADS" not in os.environ
        if self._set_omp:
            os.environ["OMP_NUM_THREADS"] = str(max(1, local_cores() // self.slots))

    def submit(self, fn: Callable, *args: Any, cpus: int = 1, gpus: float = 0) -> Future:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown()
        if self._set_omp:
            os.environ.pop("OMP_NUM_THREADS", None)


class _Holder:
    """A Ray actor body: builds its state once, then applies functions to it."""

    def __init__(self, setup: Callable, setup_args: tuple, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.state = setup(*setup_args)

    def apply(self, fn: Callable, item: Any) -> Any:
        return fn(self.state, item)


class RayEngine(Engine):
    """Pieces as Ray tasks (retried when a worker dies), results fetched by the driver."""

    def __init__(self, mode: str = "local", num_cpus: int | None = None, quiet: bool = True):
        if mode not in RAY_MODES:
            raise unknown("--ray mode", mode, list(RAY_MODES))
        try:
            import ray
        except ImportError:
            raise PeaceError("--ray needs the `ray` package (pip install 'ray==2.40.0'); it is in PEACE's "
                             "dependencies, so reinstall PEACE in this environment") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            import logging

            kw: dict = {"include_dashboard": False, "logging_level": logging.WARNING if quiet else logging.INFO,
                        "log_to_driver": not quiet}
            if mode == "local":  # always a new local instance: never a cluster someone else started
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kw)
            else:
                if num_cpus is not None:
                    raise PeaceError("--ray auto joins a running cluster, whose CPUs are its own; leave out num_cpus")
                _check_reachable(os.environ.get("RAY_ADDRESS", ""))
                try:
                    ray.init(address="auto", **kw)
                except ConnectionError as e:
                    raise PeaceError(f"--ray auto found no running Ray cluster ({e}). Start one with `ray start "
                                     f"--head` (and `ray start --address HEAD:6379` on the other nodes), set "
                                     f"RAY_ADDRESS, or use --ray local") from None
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, fn: Callable, *args: Any, cpus: int = 1, gpus: float = 0) -> Future:
        task = self.ray.remote(_with_threads).options(num_cpus=cpus, num_gpus=gpus, max_retries=3)
        return task.remote(fn, cpus, args).future()

    def map_with(self, setup: Callable, setup_args: tuple, fn: Callable, items: Sequence, cpus: int = 1,
                 progress: str | None = None) -> list:
        from ray.util import ActorPool

        actor = self.ray.remote(_Holder).options(num_cpus=cpus, max_restarts=3, max_task_retries=3)
        n = max(1, min(len(items), self.slots // max(1, cpus)))
        pool = ActorPool([actor.remote(setup, setup_args, cpus) for _ in range(n)])
        return list(_bar(pool.map(lambda a, x: a.apply.remote(fn, x), items), progress, len(items)))

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _bar(items: Iterable, desc: str | None, total: int | None = None) -> Iterable:
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, disable=desc is None, leave=False)


def open_engine(ray: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> Engine:
    """``Serial()`` without ``ray``; else a ``RayEngine`` in that mode (``local`` or ``auto``)."""
    return Serial() if ray is None else RayEngine(ray, num_cpus, quiet)


def chunks(items: Iterable, size: int) -> list[list]:
    """Consecutive pieces of at most ``size`` items."""
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]
