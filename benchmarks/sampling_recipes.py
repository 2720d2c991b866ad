"""Which sampling recipe: plain KDE, SANE's subsampling, or subsampling bootstrapped over rounds?

For one prompt (``peace sample``'s syntax; default: the run's default prompt), draws ``--n`` models per
recipe (candidates x rounds x bandwidth) and seed with the run's decoder, fine-tunes them one epoch
(Adam 1e-3, batch 32, as the generative study) and prints their accuracy at epoch 0 and 1 on the
task's *validation* split (to choose on) and *test* split (to report), mean ± std over seeds, beside
the prompt models' median. Selection inside a recipe reads only the task's training split. A fourth
field refines the decoded draws that many steps towards their function block (``peace.learn.refine``).

    python benchmarks/sampling_recipes.py --run artifacts/runs/demo --recipes 5:1:1 20:5:0.5 20:5:0.5:200
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from peace.evaluate.baselines import Models
from peace.evaluate.transfer import TransferConfig, finetune_curves
from peace.learn.generation import SampleConfig, accuracy, run_decoder, sample_models
from peace.learn.refine import RefineConfig, sketch_fit
from peace.learn.run import RunDir
from peace.orchestrate.evaluation import markdown_table
from peace.orchestrate.generation import default_prompt, resolve_prompt
from peace.zoo.store import Zoo
from peace.zoo.tasks import load_task

GRID = ["1:1:1", "5:1:1", "5:1:0.5", "5:1:0.25", "5:3:1", "5:3:0.5", "5:3:0.25", "5:5:0.5", "5:5:0.25", "20:1:1",
        "20:1:0.5", "20:1:0.25", "20:3:0.5", "20:3:0.25", "20:5:0.5", "20:5:0.25"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--prompt", help="model ids or a manifest query (default: the run's default prompt)")
    ap.add_argument("--recipes", nargs="+", default=GRID, metavar="K:R:B[:S]",
                    help="candidates:rounds:bandwidth[:refinement steps]")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()

    run = RunDir(args.run)
    dec, meta = run_decoder(run.path)
    zoo = Zoo(meta["zoo"])
    p = resolve_prompt(zoo, args.prompt or default_prompt(zoo, run, dec))
    task = load_task(p.task)
    encoder = run.load_encoder()
    z = encoder.embed([p.spec] * len(p.ids), zoo.load_many(p.ids))
    prompt_models = zoo.load_many(p.ids)
    print(f"prompt: {len(p.ids)} {p.spec.describe()} models of {p.task!r}; their median accuracy: validation "
          f"{np.median(accuracy(p.spec, prompt_models, task, 'val')):.3f}, test "
          f"{np.median(accuracy(p.spec, prompt_models, task, 'test')):.3f}")
    one_epoch = TransferConfig(epochs=1, lr=1e-3, batch_size=32, also_at=())
    rows = []
    for recipe in args.recipes:
        k, r, b, steps = (recipe + ":0").split(":")[:4]
        fit = sketch_fit(encoder, RefineConfig(int(steps)))
        t = time.perf_counter()
        for seed in range(args.seeds):
            cfg = SampleConfig(n=args.n, candidates=int(k), bandwidth=float(b), seed=seed, rounds=int(r))
            models, _ = sample_models(dec, z, p.spec, task, cfg, fit)
            drawn = Models(pd.DataFrame({"model_id": [f"{recipe}-{seed}-{j}" for j in range(len(models))]}),
                           [p.spec] * len(models), models)
            row = {"candidates": int(k), "rounds": int(r), "bandwidth": float(b), "steps": int(steps), "seed": seed}
            for split in ("val", "test"):
                curve = np.nanmean(finetune_curves(task, drawn, one_epoch, seed, split=split), 0)
                row |= {f"{split} epoch 0": curve[0], f"{split} epoch 1": curve[1]}
            rows.append(row)
        print(f"  {recipe}: {time.perf_counter() - t:.1f} s", flush=True)
    table = pd.DataFrame(rows).assign(recipe=lambda t: [
        f"{k} x {r} rounds, bandwidth {b}" + (f", refined {s} steps" if s else "")
        for k, r, b, s in zip(t["candidates"], t["rounds"], t["bandwidth"], t["steps"])])
    g = table.drop(columns=["candidates", "rounds", "bandwidth", "steps", "seed"]).groupby("recipe", sort=False)
    mean, std = g.mean(), g.std()
    print(markdown_table(mean.map(lambda v: f"{v:.3f}") + std.map(lambda v: f" ± {v:.3f}")))
    print(f"best on validation after 1 epoch: {mean['val epoch 1'].idxmax()}")


if __name__ == "__main__":
    main()
