"""Work done ahead while the explorer's server is idle: the imports and computations of pages not yet visited.

The first page opens without torch, scikit-learn and scipy (~1.5 s to import on 2 cores, cold); a user
then looks at it for a few seconds, and ``WarmUp`` spends that time importing them and prefetching
what the other pages' first visits compute. It never starts during a script run (on 2 cores it would
slow that run) and stops between two items when a run begins; a page that needs an item sooner waits
only for the rest of it (Python's import lock, ``cached_property``'s lock). At exit it takes no new item
and waits for the one in progress: a daemon thread stopped inside torch aborts the interpreter.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import threading
from collections.abc import Callable
from functools import partial

__all__ = ["WARM_MODULES", "WarmUp"]

# what the pages after the first import
WARM_MODULES = ("peace.serve.baseline_vectors", "peace.serve.teaching", "peace.learn.run", "peace.intake.sandbox")


class WarmUp:
    """One per server: the app calls ``hold`` when a script run starts and ``arm`` when it ends (every
    session's runs: several users' runs may overlap). Once no run has been in progress for ``idle_s`` s,
    the imports of ``modules`` run, then each ``work`` item given to ``arm`` (by name, each once)."""

    def __init__(self, modules: tuple[str, ...] = WARM_MODULES, idle_s: float = 1.5):
        self.idle_s = idle_s
        self.todo: dict[str, Callable[[], object]] = {f"import {m}": partial(importlib.import_module, m) for m in modules}
        self.done: list[str] = []
        self._lock, self._timer, self._runs, self._closed = threading.Lock(), None, 0, False
        self._idle = threading.Event()  # cleared while an item runs
        self._idle.set()
        atexit.register(self.close)

    def close(self, timeout: float = 60.0) -> None:
        """Take no new item and wait (at most ``timeout`` s) for the one in progress to end."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        self._idle.wait(timeout)

    def hold(self) -> None:
        with self._lock:
            self._runs += 1
            if self._timer is not None:
                self._timer.cancel()

    def arm(self, **work: Callable[[], object]) -> None:
        with self._lock:
            self._runs = max(0, self._runs - 1)
            for name, fn in work.items():
                if name not in self.done:
                    self.todo.setdefault(name, fn)
            if self._timer is not None:
                self._timer.cancel()
            if self.todo and not self._runs:
                self._timer = threading.Timer(self.idle_s, self._run)
                self._timer.daemon = True
                self._timer.start()

    def _run(self) -> None:
        with self._lock:
            if not self._idle.is_set() or self._closed:
                return
            self._idle.clear()
        try:
            while True:
                with self._lock:
                    if self._runs or self._closed or not self.todo:
                        return
                    name = next(iter(self.todo))
                    fn = self.todo.pop(name)
                    self.done.append(name)
                with contextlib.suppress(Exception):  # a failure shows where the page itself needs the item
                    fn()
        finally:
            self._idle.set()
