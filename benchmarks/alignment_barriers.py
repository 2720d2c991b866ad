"""Loss barriers between pairs of a zoo's final models of one (architecture, task), before and after weight
matching (``peace.nets.alignment.align``), per architecture: does alignment put two models in one basin?
Both models in canonical form (``canonicalize``: scales and signs), so only permutations differ; BatchNorm
statistics are interpolated as they are (no recalibration).

    python benchmarks/alignment_barriers.py artifacts/zoos/vision --families mlp vit
"""
from __future__ import annotations

import argparse
import itertools

import pandas as pd
import torch

from peace.nets.alignment import align, interpolation_path, loss_barrier
from peace.nets.symmetry import canonicalize
from peace.zoo.store import Zoo, usable
from peace.zoo.tasks import load_task


def barriers(zoo: Zoo, family: str, per_group: int = 4, inputs: int = 500) -> pd.DataFrame:
    """One row per pair of final models (at most ``per_group`` per architecture and task): naive and aligned barrier."""
    m = zoo.manifest[usable(zoo.manifest)]
    final = m[(m["family"] == family) & (m["epoch"] == m["epochs"])]
    rows = []
    for (arch, task_name), g in final.groupby(["arch", "task"]):
        ids = list(g.index[:per_group])
        spec, task = zoo.spec(ids[0]), load_task(task_name)
        X = torch.from_numpy(task.X_test[:inputs]).reshape(-1, *spec.input_shape)
        y = torch.from_numpy(task.y_test[:inputs])
        models = dict(zip(ids, (canonicalize(spec, p) for p in zoo.load_many(ids))))
        for a, b in itertools.combinations(ids, 2):
            naive = loss_barrier(interpolation_path(spec, models[a], models[b], X, y))
            aligned = loss_barrier(interpolation_path(spec, models[a], align(spec, models[a], models[b])[0], X, y))
            rows.append({"family": family, "arch": arch, "task": task_name, "naive": naive, "aligned": aligned})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", help="a zoo directory")
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn2d", "vit"])
    ap.add_argument("--per-group", type=int, default=4, help="final models per (architecture, task)")
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    df = pd.concat([barriers(zoo, f, args.per_group) for f in args.families], ignore_index=True)
    df["lower"] = df["aligned"] < df["naive"]
    summary = df.groupby(["family", "arch"]).agg(pairs=("naive", "size"), naive=("naive", "mean"),
                                                 aligned=("aligned", "mean"), aligned_lower=("lower", "mean"))
    print(summary.round(3).to_string())
    print(df.groupby("family").agg(pairs=("naive", "size"), naive=("naive", "mean"), aligned=("aligned", "mean"),
                                   aligned_lower=("lower", "mean")).round(3).to_string())


if __name__ == "__main__":
    main()
