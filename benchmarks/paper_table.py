"""Replicate the Hyper-representations TETRIS-SEED table: linear-probe R^2 (%) for epoch, test
accuracy and generalization gap from raw weights W, weight statistics s(W) and PEACE embeddings.

    python benchmarks/paper_table.py [--zoo artifacts/zoos/tetris-seed] [--run artifacts/runs/tetris-seed]

Builds the zoo (preset tetris-seed) and trains the encoder (config tetris-seed) when missing, embeds
every checkpoint, splits the models 70/15/15 at random (by model, as the paper does), fits ridge
probes (alpha by cross-validation) on the 70 % and reports R^2 on the 15 % test part.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from peace.baselines import Models, RawWeights, WeightStats
from peace.recipe import load_recipe
from peace.trainer import embed_zoo, fit, load_config, load_encoder
from peace.zoo import build_or_open

PAPER = {"W": None, "s(W) (paper)": (96.4, 86.9, 81.0), "E.D (paper)": (97.0, 90.2, 81.9)}
TARGETS = ("epoch", "test_acc", "gen_gap")


def probe_r2(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15))).fit(X[train], y[train])
    return 100 * r2_score(y[test], model.predict(X[test]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=Path("artifacts/zoos/tetris-seed"))
    ap.add_argument("--run", type=Path, default=Path("artifacts/runs/tetris-seed"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    zoo = build_or_open(load_recipe("tetris-seed"), args.zoo)
    print(f"zoo: {len(zoo)} checkpoints ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not (args.run / "encoder.safetensors").exists():
        t0 = time.perf_counter()
        res = fit(zoo, load_config("tetris-seed"), args.run, resume=(args.run / "config.yaml").exists())
        print(f"encoder: best epoch {res.best_epoch}, validation same-run mAP {res.best_val_map:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    ok = zoo.manifest[zoo.manifest["status"] == "ok"]
    ids = list(ok.index)
    t0 = time.perf_counter()
    emb = embed_zoo(load_encoder(args.run), zoo, ids, batch_size=512, progress=True)
    print(f"embedded {len(ids)} models ({time.perf_counter() - t0:.0f} s)", flush=True)
    models = Models.from_zoo(zoo, ids)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ids))
    n_tr, n_va = int(0.7 * len(ids)), int(0.15 * len(ids))
    train, test = order[:n_tr], order[n_tr + n_va:]
    fit_rows = Models(models.rows.iloc[train].reset_index(drop=True), [models.specs[i] for i in train],
                      [models.params[i] for i in train])
    features = {"W": RawWeights().fit(fit_rows).transform(models),
                "s(W)": WeightStats().fit(fit_rows).transform(models),
                "PEACE": emb}
    rows = ok.reset_index(drop=True)
    print(f"\nlinear-probe R^2 (%) on {len(test)} test models (70/15/15 split by model, seed {args.seed})")
    print(f"{'features':16s}" + "".join(f"{t:>12s}" for t in TARGETS))
    for name, X in features.items():
        print(f"{name:16s}" + "".join(f"{probe_r2(X, rows[t].to_numpy(), train, test):12.1f}" for t in TARGETS))
    for name, vals in PAPER.items():
        if vals:
            print(f"{name:16s}" + "".join(f"{v:12.1f}" for v in vals))


if __name__ == "__main__":
    main()
