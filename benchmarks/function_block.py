"""How much of PEACE's gap to the function-space baseline is the function block's sketch?

PEACE's embedding is its learned part followed by a fixed random projection (``peace.nets.probes.sketch``,
``encoder.function_block`` dimensions) of the models' probe fingerprints, weighted to carry
``encoder.function_block_weight`` of the cosine. The projection approximates the fingerprints' dot
products with an error of about 1/sqrt(dim) (``gaussian``), or exactly where the dim holds every answer
(``orthogonal``). Neither the sketch nor its weight is trained, so both can be swept on a trained run:
this script re-weighs each run's own learned part against sketches of other sizes and projections (and
against the exact fingerprints the baseline compares) and prints same-task mAP on the run's validation
and test splits, the baseline beside them. Choose on validation, read test.

    python benchmarks/function_block.py --run artifacts/runs/demo artifacts/runs/demo-s1 artifacts/runs/demo-s2
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from peace.evaluate.baselines import FunctionSpace
from peace.evaluate.metrics import retrieval_scores
from peace.learn.run import load_encoder
from peace.nets.probes import PROJECTIONS, io_space, sketch
from peace.orchestrate.evaluation import split_models
from peace.zoo.store import Zoo


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def sweep(run: str, dims: list[int], weights: list[float], projections: list[str]) -> list[dict]:
    """Same-task mAP of every (block, weight) on the run's validation and test models."""
    enc = load_encoder(run)
    zoo = Zoo(enc.meta["zoo"])
    train, val, test = split_models(run, zoo, ("train", "val", "test"))
    fs = FunctionSpace(spaces=sorted({io_space(s) for s in train.specs + val.specs + test.specs})).fit(train)
    rows = []
    for split, models in (("val", val), ("test", test)):
        full = enc.embed(models.specs, models.params).numpy()
        learned = _unit(full[:, :enc.config.embedding_dim])
        responses, spaces = enc.responses(models.specs, models.params), [io_space(s) for s in models.specs]
        exact, labels = _unit(fs.transform(models)), models.rows["task"].to_numpy()
        blocks = {f"sketch {d} {p}": _unit(sketch(responses, spaces, d, projection=p).numpy())
                  for d in dims for p in projections} | {"exact": exact}
        score = {"function space": exact, "PEACE as trained": full, "learned part alone": learned}
        for (name, block), w in [(b, w) for b in blocks.items() for w in weights]:
            score[f"{name}, weight {w}"] = np.hstack([np.sqrt(1 - w) * learned, np.sqrt(w) * block])
        rows += [{"run": run, "split": split, "variant": k, "map": retrieval_scores(v, labels)["map"]}
                 for k, v in score.items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", required=True, help="trained runs (one per seed)")
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.75, 0.85, 0.9])
    ap.add_argument("--projections", nargs="+", default=["gaussian", "orthogonal"], choices=PROJECTIONS)
    args = ap.parse_args()
    df = pd.DataFrame([r for run in args.run for r in sweep(run, args.dims, args.weights, args.projections)])
    table = df.pivot_table(index="variant", columns=["split", "run"], values="map", sort=False)
    for split in ("val", "test"):
        table[(split, "mean")] = df[df.split == split].groupby("variant")["map"].mean()
        table[(split, "std")] = df[df.split == split].groupby("variant")["map"].std()
    pd.set_option("display.width", 250)
    print(table.sort_index(axis=1, level=0, sort_remaining=False).round(3).to_string())
    val = table[("val", "mean")].drop(["function space"])
    sketches = val[val.index.str.startswith("sketch")]
    print(f"chosen on validation: {val.idxmax()}; among fixed-size sketches (what an encoder can hold for any "
          f"io-space): {sketches.idxmax()}")


if __name__ == "__main__":
    main()
