"""How long pipeline steps will take here: the last time each took on this machine, else the time
measured on a reference 2-core machine scaled by a half-second calibration of this one.

The calibration is a fixed torch workload shaped like the pipeline's (small matmuls, elementwise ops
and their backward passes, on one thread), timed here and on the reference machine; a machine that runs
it 2x slower (slower or busy cores) is told every step takes 2x longer, and 2x again on a single core.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

from peace.core.cluster import local_cores

__all__ = ["REFERENCE_MINUTES", "TIMINGS", "describe", "machine_factor", "plan"]

TIMINGS = "timings.json"  # beside the executed notebooks: how long each step last took on this machine
# Measured on the reference machine (2 cores, docs/benchmarks.md "Demo pipeline"), minutes.
REFERENCE_MINUTES = {"demo": {"build zoo": 1.1, "train encoder": 6.5, "export embeddings": 1.15, "evaluate": 3.6},
                     "tiny": {"build zoo": 0.2, "train encoder": 0.2, "export embeddings": 0.35, "evaluate": 0.2},
                     "vision": {"build zoo": 3.4, "train encoder": 11.8}}  # docs/benchmarks.md, the vision zoo
REFERENCE_CALIBRATION_S = 0.10  # best of three ``_calibration_seconds()`` on the reference machine


def _calibration_seconds() -> float:
    """Seconds of a fixed workload like the pipeline's, on one thread (several threads beside another
    busy process spin against it and time the contention, not the machine): a small MLP's forward and
    backward passes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 128, generator=g)
        w1 = torch.randn(128, 128, generator=g).requires_grad_()
        w2 = torch.randn(128, 128, generator=g).requires_grad_()
        t0 = time.perf_counter()
        for _ in range(200):
            h = torch.nn.functional.silu(x @ w1)
            loss = torch.tanh(h @ w2).square().mean()
            loss.backward()
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def machine_factor() -> float:
    """How many times longer this machine takes than the reference one: the best of three one-thread
    calibrations (one hiccup does not double an estimate), times 2 on a single core (the reference has
    two; more than two are not counted, as the pipeline does not use them all), clamped to [0.1, 20]."""
    seconds = min(_calibration_seconds() for _ in range(3))
    return min(20.0, max(0.1, seconds / REFERENCE_CALIBRATION_S * 2 / min(2, local_cores())))


def describe(seconds: float) -> str:
    """A duration as people say it: seconds up to 90, minutes after."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def plan(steps: Sequence, runs: Sequence[bool], timings: dict, reference: dict) -> str:
    """A few lines saying which steps run and how long each should take here: the time it last took on
    this machine, else the reference minutes scaled by ``machine_factor()`` (measured only then)."""
    lines, total = [], 0.0
    factor = None
    for i, (s, run) in enumerate(zip(steps, runs), 1):
        if not run:
            why = ", skipped" if not any(runs[:i]) else ", unless the steps before change its inputs"
            lines.append(f"[peace]   {i}/{len(steps)} {s.name}: current{why}")
            continue
        seen, ref = timings.get(s.name), reference.get(s.name)
        if seen is not None:
            how, total = f"last took {describe(seen)} here", total + seen
        elif ref is not None:
            factor = machine_factor() if factor is None else factor
            how, total = f"about {describe(60 * ref * factor)} on this machine", total + 60 * ref * factor
        else:
            how = "no timing yet"
        lines.append(f"[peace]   {i}/{len(steps)} {s.name} ({s.notebook}): runs, {how}")
    head = f"[peace] plan: {sum(runs)} of {len(steps)} step(s) to run"
    head += f", roughly {describe(total)} in all" if total else ""
    if factor is not None:
        head += f" (this machine ran a calibration {factor:.1f}x the time of the 2-core reference machine)"
    return "\n".join([head, *lines])
