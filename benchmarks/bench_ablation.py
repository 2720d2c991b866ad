"""An ablation grid with several workers on a small machine, side by side: kernels that share the cores
against kernels that each take every core (how `peace ablate --workers N` ran before).

    python benchmarks/bench_ablation.py [--grid tiny] [--workers 2] [--zoo DIR]

Runs the grid (by default the tiny grid on a tiny zoo built here) three times into fresh directories:
one worker; ``--workers`` workers with ``OMP_NUM_THREADS`` set to every core (each notebook kernel's torch
takes all of them, as before); ``--workers`` workers as ``run_ablation`` runs them now (``Threads`` gives
each kernel cores // workers threads). Prints wall seconds, the ratios, and each run's task mAP (the same
computation at a different thread count: equal up to float sums).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from peace.core.cluster import local_cores
from peace.orchestrate.ablation import load_grid, run_ablation
from peace.zoo.recipe import load_recipe
from peace.zoo.store import build_zoo


def timed(grid, out: Path, workers: int, omp: str | None) -> tuple[float, list[float]]:
    before = os.environ.pop("OMP_NUM_THREADS", None)
    if omp is not None:
        os.environ["OMP_NUM_THREADS"] = omp
    try:
        t0 = time.perf_counter()
        s = run_ablation(grid, out, workers=workers, progress=False)
        return time.perf_counter() - t0, [round(x, 3) for x in s["retrieval_task.map"]]
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        if before is not None:
            os.environ["OMP_NUM_THREADS"] = before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="tiny")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zoo", help="a built zoo (default: the tiny preset, built here)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        grid = load_grid(args.grid)
        grid.zoo = args.zoo or str(build_zoo(load_recipe("tiny"), Path(tmp) / "zoo", progress=False).path)
        cores = local_cores()
        runs = {"1 worker": (1, None),
                f"{args.workers} workers, every core each (before)": (args.workers, str(cores)),
                f"{args.workers} workers, cores shared (now)": (args.workers, None)}
        seconds = {}
        print(f"grid {args.grid}: {len(grid.configurations)} configurations x {len(grid.seeds)} seeds, {cores} cores")
        for i, (name, (workers, omp)) in enumerate(runs.items()):
            seconds[name], maps = timed(grid, Path(tmp) / f"run{i}", workers, omp)
            print(f"  {name:<40} {seconds[name]:7.1f} s   task mAP {maps}", flush=True)
        before, now = seconds[list(runs)[1]], seconds[list(runs)[2]]
        print(f"shared / every core each: {before / now:.2f}x faster; 1 worker / shared: {seconds['1 worker'] / now:.2f}x")


if __name__ == "__main__":
    main()
