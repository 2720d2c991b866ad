"""Which decoder: the weights-only loss of E.D / SANE, or with the functional term, and how strong?

Builds the run's decoder data once, trains one decoder per (function weight, seed), chooses the
weight by the decoded models' agreement with the originals on the *validation* split, and reports
every figure on the test split beside the two references (the mean model, the nearest training
model). Mean ± std over decoder seeds.

    python benchmarks/decoder_study.py --run artifacts/runs/demo --weights 0 0.3 1 3 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from peace.learn.decoder import DecoderConfig, fit_decoder
from peace.learn.generation import decoder_groups, reconstruction
from peace.learn.run import RunDir

COLUMNS = ["original_acc", "decoded_acc", "decoded_kept", "decoded_agreement", "decoded_probe_agreement", "mean_acc",
           "nearest_acc", "nearest_kept", "nearest_agreement"]


def _figures(table: pd.DataFrame, held: pd.Series) -> dict:
    """Means over all test models and over those of tasks seen in encoder training (``seen_*``)."""
    for m in ("decoded", "nearest"):
        table[f"{m}_kept"] = (table[f"{m}_acc"] >= 0.9 * table["original_acc"]).astype(float)
    seen = table[~table["model_id"].map(held).fillna(False).astype(bool)]
    return {**table[COLUMNS].mean().to_dict(), **{f"seen_{c}": v for c, v in seen[COLUMNS].mean().items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0], help="embedding jitter levels to compare too")
    args = ap.parse_args()
    base = DecoderConfig(epochs=args.epochs)
    t0 = time.perf_counter()
    zoo, groups, skipped = decoder_groups(args.run, base, progress=True)
    print(f"decoder data: {sum(len(g.ids) for g in groups['train'])} training models of {len(groups['train'])} "
          f"architectures in {time.perf_counter() - t0:.0f} s; left out: {skipped or 'none'}", flush=True)
    held = RunDir(args.run).splits().set_index("model_id")["heldout_task"].astype(bool)
    rows = []
    for w, noise in [(w, n) for w in args.weights for n in args.noise]:
        for seed in args.seeds:
            cfg = dataclasses.replace(base, function_weight=w, noise=noise, seed=seed)
            t0 = time.perf_counter()
            dec, history = fit_decoder([g.spec for g in groups["train"]], [g.pairs() for g in groups["train"]],
                                       [g.pairs() for g in groups["val"]], cfg)
            took = time.perf_counter() - t0
            for split in ("val", "test"):
                table = reconstruction(dec, zoo, groups[split], groups["train"])
                rows.append({"function_weight": w, "noise": noise, "seed": seed, "split": split, "epochs": len(history),
                             "fit_s": took, **_figures(table, held)})
            print(f"weight {w} noise {noise} seed {seed}: {len(history)} epochs in {took:.0f} s, val agreement "
                  f"{rows[-2]['decoded_agreement']:.3f}, test agreement {rows[-1]['decoded_agreement']:.3f}", flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    for cols in (COLUMNS[:5] + ["fit_s"], COLUMNS[5:], [f"seen_{c}" for c in COLUMNS[:5]]):
        print(df.groupby(["split", "function_weight", "noise"])[cols].agg(["mean", "std"]).round(3).to_string(), "\n")
    val = df[df["split"] == "val"].groupby(["function_weight", "noise"])["decoded_agreement"].mean()
    print(f"chosen on validation (decoded agreement): function_weight, noise = {val.idxmax()}")


if __name__ == "__main__":
    main()
