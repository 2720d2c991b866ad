"""The Hyper-representations table (Schurholt et al. 2021, table 5) on our paper-faithful zoos:
linear-probe R^2 (%) of epoch, test accuracy and generalization gap, and linear-classifier accuracy
(%) of learning rate, activation and initialization where the zoo varies them, from raw weights W,
weight statistics s(W), the function-space baseline and each trained PEACE run.

    peace zoo build --preset tetris-seed --out artifacts/zoos/tetris-seed
    peace train --zoo artifacts/zoos/tetris-seed --config tetris-seed --out artifacts/runs/tetris-seed
    peace train --zoo artifacts/zoos/tetris-seed --config paper-probe --out artifacts/runs/tetris-seed-probe
    peace train --zoo artifacts/zoos/tetris-seed --config paper-probe --set train.reconstruction=0.1 \
        --out artifacts/runs/tetris-seed-ed        # E.D: trained jointly with a weight decoder (row "PEACE E.D")
    python benchmarks/paper_table.py --zoo artifacts/zoos/tetris-seed \
        --run artifacts/runs/tetris-seed artifacts/runs/tetris-seed-probe artifacts/runs/tetris-seed-ed

Splits are the runs' own (by lineage, i.e. by seed; every run must share one split): probes are
fitted on the training models (ridge, alpha by cross-validation; logistic regression for the
categorical columns), PEACE's variant is chosen by its mean validation score, and every figure is
on the test models. The paper's own figures are printed beside ours where we carry them (TETRIS-SEED).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from peace.core.errors import PeaceError
from peace.evaluate.baselines import FunctionSpace, Models, RawWeights, WeightStats
from peace.evaluate.metrics import linear_probe
from peace.learn.run import load_encoder
from peace.serve.export import embed_zoo
from peace.zoo.splits import split_zoo
from peace.zoo.store import open_zoo

NUMERIC = ("epoch", "test_acc", "gen_gap")
CATEGORICAL = ("lr", "activation", "init")
# Table 5 of the paper, TETRIS-SEED, R^2 in % (the only zoo whose figures we carry; DESIGN.md)
PAPER = {"tetris-seed": {"s(W), paper": {"epoch": 96.4, "test_acc": 86.9, "gen_gap": 81.0},
                         "E.D, paper": {"epoch": 97.0, "test_acc": 90.2, "gen_gap": 81.9}}}


def columns(rows: pd.DataFrame) -> list[str]:
    """The table's columns this zoo can fill: every numeric target, and categorical ones that vary."""
    return list(NUMERIC) + [c for c in CATEGORICAL if rows[c].nunique() > 1]


def scores(X: np.ndarray, rows: pd.DataFrame, fit: np.ndarray, on: np.ndarray, cols: list[str]) -> dict[str, float]:
    """Probe scores in % per column: R^2 for numeric targets, accuracy for categorical ones."""
    out = {}
    for c in cols:
        cat = c in CATEGORICAL
        y = rows[c].astype(str).to_numpy() if cat else rows[c].to_numpy(float)
        r = linear_probe(X[fit], y[fit], X[on], y[on], categorical=cat)
        out[c] = 100 * (r["accuracy"] if cat else r["r2"])
    return out


def _label(run: Path, config: dict) -> str:
    """A run's row: ``PEACE E.D`` when its config trained it with a decoder (``train.reconstruction``)."""
    return f"PEACE{' E.D' if config['train'].get('reconstruction') else ''} {run.name}"


def paper_table(zoo_dir: Path, runs: list[Path], max_models: int | None = None, seed: int = 0,
                progress: bool = True) -> tuple[pd.DataFrame, str]:
    """(table of test scores, one row per method; the PEACE run chosen on validation). Without runs,
    the baselines alone, on the split a default run of seed 0 would use."""
    zoo = open_zoo(zoo_dir)
    splits = []
    for r in runs:
        if not (r / "encoder.safetensors").exists() or not (r / "splits.parquet").exists():
            raise PeaceError(f"{r} is not a trained run; train it with: peace train --zoo {zoo_dir} --config "
                             f"CONFIG --out {r}")
        splits.append(pd.read_parquet(r / "splits.parquet").set_index("model_id")["split"])
    if any(not s.equals(splits[0]) for s in splits[1:]):
        raise PeaceError("the runs were trained on different splits (another seed or fractions); probes need one split")
    rows = zoo.manifest[zoo.manifest["status"] == "ok"]
    if not runs:  # baselines only: the split a run with the default fractions and seed 0 would make
        splits = [split_zoo(rows.reset_index(drop=True), holdout=0, min_train_tasks=1).set_index("model_id")["split"]]
    rows = rows[rows.index.isin(splits[0].index)]
    if max_models is not None and len(rows) > max_models:  # subsample checkpoints, keeping whole splits honest
        rows = rows.sample(max_models, random_state=seed)
    ids = list(rows.index)
    side = splits[0].loc[ids].to_numpy()
    tr, va, te = side == "train", side == "val", side == "test"
    rows = rows.reset_index(drop=True)
    cols = columns(rows)
    t0 = time.perf_counter()
    models = Models.from_zoo(zoo, ids)
    fit_on = Models(models.rows[tr].reset_index(drop=True), [s for s, k in zip(models.specs, tr) if k],
                    [p for p, k in zip(models.params, tr) if k])
    features = {"W": RawWeights().fit(fit_on).transform(models), "s(W)": WeightStats().fit(fit_on).transform(models),
                "function space": FunctionSpace().fit(fit_on).transform(models)}
    for r in runs:
        enc = load_encoder(r)
        features[_label(r, enc.meta["config"])] = embed_zoo(enc, zoo, ids, batch_size=512, progress=progress)
    if progress:
        print(f"{len(ids)} checkpoints ({tr.sum()} train / {va.sum()} val / {te.sum()} test) featurized "
              f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    table = pd.DataFrame({name: scores(X, rows, tr, te, cols) for name, X in features.items()}).T
    val = {name: np.mean(list(scores(X, rows, tr, va, cols).values())) for name, X in features.items()
           if name.startswith("PEACE")}
    chosen = max(val, key=val.get) if val else "none (no run given)"
    if progress and val:
        print("validation mean score (%): " + ", ".join(f"{k} {v:.1f}" for k, v in val.items()), file=sys.stderr)
    for name, ref in PAPER.get(zoo.name, {}).items():
        table.loc[name] = pd.Series(ref)
    table.index.name = f"{zoo.name} (test, {te.sum()} checkpoints)"
    return table, chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True, help="a built zoo (peace zoo build)")
    ap.add_argument("--run", type=Path, nargs="*", default=[], help="trained PEACE runs on that zoo (peace train); "
                    "none: the baselines alone")
    ap.add_argument("--max-models", type=int, default=None, help="probe a random sample of this many checkpoints")
    ap.add_argument("--seed", type=int, default=0, help="of that sample")
    args = ap.parse_args()
    try:
        table, chosen = paper_table(args.zoo, args.run, args.max_models, args.seed)
    except PeaceError as e:
        sys.exit(f"error: {e}")
    print("R^2 (%) for epoch / test_acc / gen_gap, accuracy (%) for categorical columns; "
          f"PEACE chosen on validation: {chosen}")
    print(table.round(1).to_string())


if __name__ == "__main__":
    main()
