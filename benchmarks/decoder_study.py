"""Which decoder: the weights-only loss of E.D / SANE, or with the functional term, and how strong? Refined or not?

Builds the run's decoder data once, trains one decoder per (function weight, seed), chooses the
weight by the decoded models' agreement with the originals on the *validation* split, and reports
every figure on the test split beside the two references (the mean model, the nearest training
model). Mean ± std over decoder seeds. ``--refine-steps`` / ``--temperatures`` also judge each decoder's
models refined towards the embeddings' function block (``peace.learn.refine``; 0 steps: the decoder alone).

    python benchmarks/decoder_study.py --run artifacts/runs/demo --weights 0 0.3 1 3 --seeds 0 1 2
    python benchmarks/decoder_study.py --run artifacts/runs/demo --weights 10 --noise 0.3 --seeds 0 \
        --refine-steps 0 100 200 --lrs 0.01 0.03 --temperatures 1 0.5
    python benchmarks/decoder_study.py --run artifacts/runs/demo --weights 10 --noise 0.3 --seeds 0 \
        --hidden 256 512 1024 --layers 2 3 --refine-steps 100 --temperatures 0.1    # the decoder's size

``--val-zoo`` adds a second validation set, ``newval``: models of tasks that no split of the run uses (for
the demo run, ``peace zoo build --config benchmarks/newtask_val.yaml``), where refinement for tasks the
encoder never saw can be chosen (the run's own validation split holds out one 10-class task, not refined):

    peace zoo build --config benchmarks/newtask_val.yaml --out /tmp/newval
    python benchmarks/decoder_study.py --run artifacts/runs/demo --val-zoo /tmp/newval --weights 10 --noise 0.3 \
        --seeds 0 1 2 --refine-steps 0 100 200 --temperatures 0.1 0.25
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from peace.learn.decoder import DecoderConfig, fit_decoder
from peace.learn.generation import decoder_groups, reconstruction, zoo_groups
from peace.learn.refine import RefineConfig, sketch_fit
from peace.learn.run import RunDir
from peace.zoo.store import Zoo

COLUMNS = ["original_acc", "decoded_acc", "decoded_kept", "decoded_agreement", "decoded_probe_agreement", "mean_acc",
           "nearest_acc", "nearest_kept", "nearest_agreement"]


def _figures(table: pd.DataFrame, held: pd.Series) -> dict:
    """Means over all test models and over those of tasks seen in encoder training (``seen_*``)."""
    for m in ("decoded", "nearest"):
        table[f"{m}_kept"] = (table[f"{m}_acc"] >= 0.9 * table["original_acc"]).astype(float)
    seen = table[~table["model_id"].map(held).fillna(False).astype(bool)]
    return {**table[COLUMNS].mean().to_dict(), **{f"seen_{c}": v for c, v in seen[COLUMNS].mean().items()}}


def _brief(row: dict) -> str:
    return f"{row['decoded_agreement']:.3f} / {row['decoded_kept']:.3f} / {row['seen_decoded_kept']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--hidden", type=int, nargs="+", default=[DecoderConfig.hidden], help="trunk widths to compare")
    ap.add_argument("--layers", type=int, nargs="+", default=[DecoderConfig.layers], help="trunk depths to compare")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0], help="embedding jitter levels to compare too")
    ap.add_argument("--refine-steps", type=int, nargs="+", default=[0], help="refinement steps to compare (0: none)")
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01], help="refinement step sizes to compare")
    ap.add_argument("--retrieve", type=int, nargs="+", default=[1], choices=[0, 1],
                    help="refine from the retrieved training model too (1) or from the decoded weights only (0)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0], help="refinement temperatures to compare")
    ap.add_argument("--val-zoo", help="a zoo of tasks no split of the run uses: a second validation set (newval)")
    args = ap.parse_args()
    base = DecoderConfig(epochs=args.epochs)
    t0 = time.perf_counter()
    zoo, groups, skipped = decoder_groups(args.run, base, progress=True)
    print(f"decoder data: {sum(len(g.ids) for g in groups['train'])} training models of {len(groups['train'])} "
          f"architectures in {time.perf_counter() - t0:.0f} s; left out: {skipped or 'none'}", flush=True)
    held = RunDir(args.run).splits().set_index("model_id")["heldout_task"].astype(bool)
    encoder = RunDir(args.run).load_encoder()
    zoos = {"val": zoo, "test": zoo}
    if args.val_zoo:
        zoos = {"val": zoo, "newval": Zoo(args.val_zoo), "test": zoo}
        groups["newval"], _ = zoo_groups(zoos["newval"], encoder, [g.spec for g in groups["train"]], 10**6)
        held = pd.concat([held, pd.Series(True, index=[i for g in groups["newval"] for i in g.ids])])
    rows = []
    sizes = [(h, k) for h in args.hidden for k in args.layers]
    for w, noise, (hidden, layers) in [(w, n, s) for w in args.weights for n in args.noise for s in sizes]:
        for seed in args.seeds:
            cfg = dataclasses.replace(base, function_weight=w, noise=noise, hidden=hidden, layers=layers, seed=seed)
            t0 = time.perf_counter()
            dec, history = fit_decoder([g.spec for g in groups["train"]], [g.pairs() for g in groups["train"]],
                                       [g.pairs() for g in groups["val"]], cfg)
            took = time.perf_counter() - t0
            grid = [(s, lr, t, r) for s in args.refine_steps for lr in (args.lrs if s else [0.0])
                    for t in (args.temperatures if s else [1.0]) for r in (args.retrieve if s else [0])]
            for steps, lr, temp, retrieve in grid:  # unrefined rows: lr 0, no retrieval
                fit = sketch_fit(encoder, RefineConfig(steps, lr, temp, retrieve=bool(retrieve))) if steps else None
                for split, split_zoo in zoos.items():
                    t1 = time.perf_counter()
                    table = reconstruction(dec, split_zoo, groups[split], fit)
                    if fit is not None:  # judge the refined models in the decoded models' columns
                        table = table.drop(columns=[c for c in table if c.startswith("decoded_")])
                        table = table.rename(columns=lambda c: c.replace("refined_", "decoded_"))
                    rows.append({"function_weight": w, "noise": noise, "hidden": hidden, "layers": layers,
                                 "refine_steps": steps, "lr": lr, "temperature": temp, "retrieve": retrieve,
                                 "seed": seed, "split": split, "epochs": len(history), "fit_s": took,
                                 "judge_s": time.perf_counter() - t1, **_figures(table, held)})
                print(f"weight {w} noise {noise} trunk {layers} x {hidden} seed {seed} refine {steps} x lr {lr} x T "
                      f"{temp}, retrieve {retrieve}: {len(history)} epochs in {took:.0f} s; agreement / kept / seen "
                      f"kept: " + ", ".join(f"{r['split']} {_brief(r)}" for r in rows[-len(zoos):]), flush=True)
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    keys = ["split", "function_weight", "noise", "hidden", "layers", "refine_steps", "lr", "temperature", "retrieve"]
    for cols in (COLUMNS[:5] + ["fit_s", "judge_s"], COLUMNS[5:], [f"seen_{c}" for c in COLUMNS[:5]]):
        print(df.groupby(keys)[cols].agg(["mean", "std"]).round(3).to_string(), "\n")
    for splits in (["val"], ["newval"], ["val", "newval"]) if args.val_zoo else (["val"],):
        val = df[df["split"].isin(splits)].groupby(keys[1:] + ["split"])["decoded_agreement"].mean()
        val = val.groupby(keys[1:]).mean()  # the validation sets weigh the same
        print(f"chosen on {' + '.join(splits)} (decoded agreement): {', '.join(keys[1:])} = {val.idxmax()}")


if __name__ == "__main__":
    main()
