"""How long pipeline steps will take here: the last time each took on this machine, else the time
measured on a reference 2-core machine scaled by a one-second calibration of this one.

The calibration is the work that dominates the pipeline: training steps of the default encoder (frozen as
``CALIBRATION_ENCODER``) on a fixed batch of small models (MLPs and a CNN, as in the demo zoo), on one
thread, timed here and on the reference machine; a machine that runs it 2x slower (slower or busy cores)
is told every step takes 2x longer, and 1.4x again on a single core. A first calibration of small matrix
products said 5.3x on an AMD machine whose pipeline took 2.6x: what a calibration measures has to be what
the pipeline does.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

from peace.core.cluster import local_cores

__all__ = ["REFERENCE_MINUTES", "TIMINGS", "describe", "machine_factor", "plan"]

TIMINGS = "timings.json"  # beside the executed notebooks: how long each step last took on this machine
# Minutes on the reference machine: since 2026-12-07 a 2-core Intel Xeon, idle, where the demo pipeline took
# 39 / 220 / 23 / 133 s and the tiny one 4.4 / 5.9 / 5.8 / 7.5 s (docs/benchmarks.md "Demo pipeline"). The
# vision ones were measured on the reference machine before (a 2-core AMD EPYC), converted by the two machines'
# calibrations of one workload (0.084 s against 0.29 s: x 0.29).
# The demo's evaluation grew 2.22 -> 2.5 (x 1.12, 2026-12-07: the written score's two rounds and PEACE's fine-tuned
# predictor reading renamed copies; `peace evaluate --run artifacts/runs/demo --transfer-epochs 20`, before / after
# in one session, 129 s / 139-150 s).
REFERENCE_MINUTES = {"demo": {"build zoo": 0.65, "train encoder": 3.67, "export embeddings": 0.38, "evaluate": 2.5},
                     "tiny": {"build zoo": 0.073, "train encoder": 0.099, "export embeddings": 0.097,
                              "evaluate": 0.125},
                     "vision": {"build zoo": 2.55, "train encoder": 9.6}}
# The calibration step on two threads runs 1.4x faster than on one (0.19-0.23 s against 0.28-0.31 s here);
# a one-core machine loses that on every step (the tiny pipeline, all overheads, loses less: 77 s against 71).
SINGLE_CORE = 1.4
REFERENCE_CALIBRATION_S = 0.074  # ``_calibration_seconds()`` on the reference machine, idle (0.073-0.076, 6 runs)
# The calibration's workload, frozen (the default encoder of 2026-12-07): a calibration that followed the default
# would change with it while REFERENCE_CALIBRATION_S does not (trying gated messages as the default halved this
# machine's factor for a pipeline that took 0.55x the time).
CALIBRATION_ENCODER = {"hidden": 64, "rounds": 3, "message": "mlp", "transformer_layers": 2, "heads": 4,
                       "pooling": "attention", "embedding_dim": 64, "projection_dim": 0, "function_tokens": True,
                       "probes": 256, "function_block": 1024, "function_block_weight": 0.5,
                       "function_block_projection": "orthogonal"}


def _calibration_seconds(steps: int = 8, models_per_arch: int = 8) -> float:
    """The fastest of a few training steps (forward and backward) of ``CALIBRATION_ENCODER`` on 24 small
    models, after one untimed step; one thread, since several beside another busy process spin against
    it and time the contention, not the machine. Eight steps, not three: the fastest of three was 1.3-1.5x
    the machine's usual step in 2 of 6 fresh processes (0.108-0.128 s against 0.084), that of eight within
    1.1x; the five more cost half a second."""
    import torch

    from peace.learn.encoder import EncoderConfig, PeaceEncoder
    from peace.nets.architectures import ArchSpec, build_module

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            encoder = PeaceEncoder(EncoderConfig(**CALIBRATION_ENCODER))
            archs = [ArchSpec("mlp", (16,), 4, (16,)), ArchSpec("mlp", (64,), 10, (32, 16), "tanh"),
                     ArchSpec("cnn2d", (1, 8, 8), 10, (4, 8))]
            specs = [a for a in archs for _ in range(models_per_arch)]
            params = [{k: v.detach() for k, v in build_module(a).state_dict().items()} for a in specs]
        encoder.fit_standardization(specs, params)
        best = float("inf")
        for i in range(steps + 1):
            t0 = time.perf_counter()
            responses = encoder.responses(specs, params)
            out = encoder(encoder.batch(specs, params, torch.device("cpu"), responses=responses))
            out["projection"].square().mean().backward()
            best = best if i == 0 else min(best, time.perf_counter() - t0)
        return best
    finally:
        torch.set_num_threads(threads)


def machine_factor() -> float:
    """How many times longer this machine takes than the reference one: the calibration's best step
    (one hiccup does not double an estimate), times ``SINGLE_CORE`` on one core (the reference has two;
    more are not counted, as the pipeline does not use them all), clamped to [0.1, 20]."""
    single = SINGLE_CORE if local_cores() < 2 else 1.0
    return min(20.0, max(0.1, _calibration_seconds() / REFERENCE_CALIBRATION_S * single))


def describe(seconds: float) -> str:
    """A duration as people say it: seconds up to 90, minutes after."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def plan(steps: Sequence, runs: Sequence[bool], timings: dict, reference: dict, opens: Sequence[bool] = ()) -> str:
    """A few lines saying which steps run and how long each should take here: the time it last took on
    this machine, else the reference minutes scaled by ``machine_factor()`` (measured only then); a step
    in ``opens`` runs but only opens its current output (a forced zoo step: zoos are never rebuilt)."""
    lines, total = [], 0.0
    factor = None
    for i, (s, run) in enumerate(zip(steps, runs), 1):
        if not run:
            why = ", skipped" if not any(runs[:i]) else ", unless the steps before change its inputs"
            lines.append(f"[peace]   {i}/{len(steps)} {s.name}: current{why}")
            continue
        if i <= len(opens) and opens[i - 1]:
            lines.append(f"[peace]   {i}/{len(steps)} {s.name} ({s.notebook}): runs, opens its current output "
                         f"(seconds)")
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
