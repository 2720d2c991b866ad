"""Batched population training vs one model at a time, side by side in one run.

Trains a recipe's first population (default: TETRIS-SEED, 1000 models) batched, and the first
``--sequential`` of its models one by one with an ordinary ``torch.optim`` loop (``train_single``),
both recording the same checkpoints; prints the time per model each way and their ratio.

    python benchmarks/bench_population.py [--preset tetris-seed] [--sequential 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from peace.zoo.population import train_population, train_single
from peace.zoo.recipe import expand, load_recipe, populations
from peace.zoo.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tetris-seed")
    ap.add_argument("--sequential", type=int, default=20, help="models trained one at a time (time is per model)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.preset)
    pop = populations(expand(recipe), recipe.chunk_size)[0]
    task, spec, sched = load_task(pop[0].task), pop[0].spec, pop[0].schedule
    print(f"{args.preset}: {len(pop)} models of {spec.describe()} on {task.name}, {sched.epochs} epochs, "
          f"{len(sched.checkpoints)} checkpoints each, {args.threads} threads")
    t0 = time.perf_counter()
    train_population(task, spec, [r.hparams for r in pop], sched)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in pop[: args.sequential]:
        train_single(task, spec, r.hparams, sched)
    seq = (time.perf_counter() - t0) / args.sequential
    print(f"batched population : {batched:8.2f} s for {len(pop)} models = {batched / len(pop) * 1e3:8.2f} ms/model")
    print(f"one at a time      : {seq * args.sequential:8.2f} s for {args.sequential} models = {seq * 1e3:8.2f} ms/model "
          f"(whole population would take ~{seq * len(pop):.0f} s)")
    print(f"speed-up           : {seq * len(pop) / batched:8.1f}x")


if __name__ == "__main__":
    main()
