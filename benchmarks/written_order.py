"""Accuracy predictors' within-task order blended with the written score (a one-off study, not adopted).

The written score (``peace.evaluate.selection.written_score``) ranks a task's models from their weights alone
(within-task tau 0.85 on held-out tasks), while the supervised predictors set each model's level across tasks.
Here each predictor keeps its own predicted values per task and re-orders them by a blend of its ranks and the
written score's (weight ``w``; 0 is the predictor as trained). The writers are the task's better half by
consensus on the probes (as ``peace rank``) or by the predictor's own predictions. Reads the predictions that
``benchmarks/renamed_predictors.py --predictions FILE`` wrote; the written score reads the other models of each
model's task (no labels), so unlike the predictors alone it needs the task column and a group of models.

    python benchmarks/written_order.py /tmp/pred_peace.parquet /tmp/pred_peers.parquet
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata

from peace.evaluate.prediction import _take, largest_group
from peace.evaluate.selection import written_score
from peace.learn.run import load_encoder
from peace.orchestrate.evaluation import split_models
from peace.zoo.store import Zoo

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend(pred: np.ndarray, score: np.ndarray, tasks: np.ndarray, w: float) -> np.ndarray:
    """``pred`` with each task's values re-assigned in the order of (1 - w) its ranks + w the score's ranks."""
    out = pred.copy()
    for t in np.unique(tasks):
        i = np.flatnonzero(tasks == t)
        key = (1 - w) * rankdata(pred[i]) + w * rankdata(score[i])
        out[i[np.argsort(key, kind="stable")]] = np.sort(pred[i])
    return out


def study(predictions: pd.DataFrame) -> pd.DataFrame:
    models = {}
    for run in predictions.run.unique():
        encoder = load_encoder(run)
        tr, va, te = split_models(run, Zoo(encoder.meta["zoo"]), ("train", "val", "test"))
        arch = largest_group(tr, va, te)
        models[run] = {"val": _take(va, arch), "test": _take(te, arch)}
    if "tta" in predictions:  # renamed_predictors.py --tta: the plain predictions only
        predictions = predictions[predictions["tta"] == 0]
    rows, consensus_writers = [], {}
    for (run, name, seed, split), g in predictions.groupby(["run", "predictor", "seed", "split"], sort=False):
        m = models[run][split]
        assert (m.rows["model_id"].to_numpy() == g.model.to_numpy()).all(), "predictions of other models"
        tasks, y, p = g.task.to_numpy(), g.y.to_numpy(), g.prediction.to_numpy()
        if (run, split) not in consensus_writers:
            consensus_writers[run, split] = written_score(m.specs, m.params, list(tasks))
        scores = {"consensus writers": consensus_writers[run, split],
                  "predictor's writers": written_score(m.specs, m.params, list(tasks), probed=p)}
        for writers, s in scores.items():
            for w in WEIGHTS:
                rows.append({"run": run, "predictor": name, "seed": seed, "split": split, "writers": writers,
                             "w": w, "tau": kendalltau(y, blend(p, s, tasks, w)).statistic})
        print(run, name, seed, split, flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", nargs="+", help="parquet files of renamed_predictors.py --predictions")
    df = study(pd.concat([pd.read_parquet(f) for f in ap.parse_args().predictions], ignore_index=True))
    pd.set_option("display.width", 250)
    print(df.pivot_table(index=["predictor", "writers", "w"], columns="split", values="tau",
                         aggfunc=["mean", "std"]).round(3).to_string())
    print(df.pivot_table(index=["predictor", "writers", "w"], columns=["split", "run"], values="tau").round(3).to_string())


if __name__ == "__main__":
    main()
