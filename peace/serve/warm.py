"""Work done ahead while the explorer's server is idle: the imports and computations of pages not yet visited.

The first page opens without torch, scikit-learn and scipy (~1.5 s to import on 2 cores, cold); a user
then looks at it for a few seconds, and ``WarmUp`` spends that time importing them and prefetching
what the other pages' first visits compute. It never starts during a script run (on 2 cores it would
slow that run) and stops between two items when a run begins; a page that needs an item sooner waits
only for the rest of it (Python's import lock, ``cached_property``'s lock).
"""
from __future__ import annotations

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
        self._lock, self._timer, self._runs, self._running = threading.Lock(), None, 0, False

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
            if self._running:
                return
            self._running = True
        try:
            while True:
                with self._lock:
                    if self._runs or not self.todo:
                        return
                    name = next(iter(self.todo))
                    fn = self.todo.pop(name)
                    self.done.append(name)
                with contextlib.suppress(Exception):  # a failure shows where the page itself needs the item
                    fn()
        finally:
            with self._lock:
                self._running = False
