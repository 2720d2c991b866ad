"""Accuracy predictors on one architecture, trained with and without class-renamed copies of their training models.

A model's accuracy on its own task does not depend on what its classes are called, so a predictor can be
taught that with copies of its training models whose output rows are permuted, each keeping its original's
target (``PredictorConfig.renamed``, ``peace.evaluate.prediction.with_renamed``). It matters where the test
models include a task whose labels are a renaming of a training task's (seed 2's split holds out
``digits-labelperm``). For each run: the largest MLP group of ``peace evaluate``'s accuracy study, NFN-HNP,
ProbeGen and PEACE's encoder fine-tuned, each trained as the study trains them; Kendall tau on the group's
validation models (to choose on) and test models (and the held-out tasks' test models alone).

    python benchmarks/renamed_predictors.py artifacts/runs/demo artifacts/runs/def-s1 artifacts/runs/def-s2
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from peace.evaluate.prediction import (PredictorConfig, _take, fit_predictor, largest_group, predict_regressor,
                                       with_renamed)
from peace.learn.run import load_encoder
from peace.nets.renaming import relabel_classes
from peace.orchestrate.evaluation import split_models
from peace.zoo.store import Zoo


def predict_renamed(model, spec, params, copies: int, seed: int) -> np.ndarray:
    """The mean prediction over each model and ``copies`` class-renamed copies of it (test-time symmetrization:
    a model's accuracy does not depend on what its classes are called); 0 copies: the plain prediction."""
    rng = np.random.default_rng([seed, 47])
    views = [params] + [[relabel_classes(spec, p, rng) for p in params] for _ in range(copies)]
    return np.mean([predict_regressor(model, v) for v in views], axis=0)


def study(run: str, copies: list[int], seeds: list[int], predictors: list[str],
          config: PredictorConfig = PredictorConfig(), predictions: list | None = None,
          tta: tuple[int, ...] = (0,)) -> list[dict]:
    """One row per (copies, seed, predictor, tta) cell; with ``predictions``, one row per (cell, model) appended to it."""
    encoder = load_encoder(run)
    tr, va, te = split_models(run, Zoo(encoder.meta["zoo"]), ("train", "val", "test"))
    arch = largest_group(tr, va, te)
    tr, va, te = _take(tr, arch), _take(va, arch), _take(te, arch)
    y_tr, y_va, y_te = (m.rows["test_acc"].to_numpy(float) for m in (tr, va, te))
    held = te.rows["heldout_task"].to_numpy(bool)
    rows = []
    for c in copies:
        for seed in seeds:
            params, y = with_renamed(tr.specs[0], tr.params, y_tr, c, seed)
            for name in predictors:
                t = time.perf_counter()
                model = fit_predictor(name, tr.specs[0], params, y, va.params, y_va, config, seed, encoder)
                for views in tta:
                    pv, pt = (predict_renamed(model, tr.specs[0], m.params, views, seed) for m in (va, te))
                    rows.append({"run": run, "arch": arch, "renamed copies": c, "seed": seed, "predictor": name,
                                 "tta": views, "val tau": kendalltau(y_va, pv).statistic,
                                 "test tau": kendalltau(y_te, pt).statistic,
                                 "held-out test tau": kendalltau(y_te[held], pt[held]).statistic if held.sum() > 2
                                 else np.nan, "s": time.perf_counter() - t})
                    print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
                    for split, m, y_s, p_s in (("val", va, y_va, pv), ("test", te, y_te, pt)):
                        if predictions is not None:
                            predictions.append(pd.DataFrame({
                                "run": run, "renamed copies": c, "seed": seed, "predictor": name, "tta": views,
                                "split": split, "model": m.rows["model_id"].to_numpy(),
                                "task": m.rows["task"].to_numpy(), "y": y_s, "prediction": p_s}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--copies", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--predictors", nargs="+", default=["peace fine-tuned", "nfn-hnp", "probegen"])
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="PredictorConfig fields to change, e.g. finetune_lr=1e-4")
    ap.add_argument("--tta", type=int, nargs="+", default=[0],
                    help="also predict as the mean over each model and K class-renamed copies of it")
    ap.add_argument("--predictions", help="write every model's prediction here (parquet), e.g. to combine them later")
    args = ap.parse_args()
    default = PredictorConfig()
    config = PredictorConfig(**{k: type(getattr(default, k))(v) for k, v in (a.split("=", 1) for a in args.set)})
    predictions: list = []
    df = pd.DataFrame([r for run in args.runs for r in study(run, args.copies, args.seeds, args.predictors, config,
                                                             predictions, tuple(args.tta))])
    if args.predictions:
        pd.concat(predictions, ignore_index=True).to_parquet(args.predictions)
    per_run = df.groupby(["predictor", "renamed copies", "tta", "run"])[["val tau", "test tau"]].mean().unstack("run")
    pd.set_option("display.width", 250)
    print(per_run.round(3).to_string())
    print(df.groupby(["predictor", "renamed copies", "tta"])[["val tau", "test tau", "held-out test tau"]]
          .agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
