"""Which label-free signal ranks a task's models by accuracy? Consensus (centrality, majority or spectral, on the
task's unlabelled inputs or on Gaussian probes), the written score (each model's probability of the classes that
inputs written by the better models were written for, after one or two rounds of writing), confidence, and PEACE's
own readings, side by side.

For each run: on ``--split test`` the held-out tasks' test models (``peace evaluate``'s model-selection
set); on ``--split val`` every validation model, grouped by task (to choose on: no signal here is
trained on these models, but the ridge probe has seen most of their tasks). Kendall tau inside each
task, averaged over tasks (``within_group_tau``); then mean ± std over runs.

    python benchmarks/selection_signals.py --split val artifacts/runs/demo artifacts/runs/demo-s1 artifacts/runs/demo-s2

With ``--zoo`` instead: consensus (``peace rank``'s centrality, and the majority and spectral alternatives) on every
task of a zoo (all its models, every epoch, or those ``--query`` picks), on Gaussian probes and on the
task's unlabelled inputs, and the written score (``peace rank``'s default): Kendall tau against the recorded
test accuracy, and seconds per task.

    python benchmarks/selection_signals.py --zoo artifacts/zoos/demo
    python benchmarks/selection_signals.py --zoo artifacts/zoos/tetris-seed --query "epoch == 75"
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata

from peace.evaluate.baselines import Models
from peace.evaluate.metrics import ridge, within_group_tau
from peace.evaluate.selection import confidence, consensus, written_score
from peace.learn.run import RunDir
from peace.orchestrate.evaluation import split_models
from peace.zoo.store import Zoo


def _centrality(z: np.ndarray, tasks: np.ndarray) -> np.ndarray:
    """Mean cosine of each model's vector to the other models of its task."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    out = np.zeros(len(z))
    for t in np.unique(tasks):
        i = tasks == t
        out[i] = (z[i] @ z[i].sum(0) - 1) / max(1, i.sum() - 1)
    return out


def signals(run_dir: str, split: str) -> dict[str, float]:
    run = RunDir(run_dir)
    encoder = run.load_encoder()
    zoo = Zoo(encoder.meta["zoo"])
    train, models = split_models(run_dir, zoo, ("train", split))
    keep = models.rows["heldout_task"].to_numpy(bool) if split == "test" else np.ones(len(models.rows), bool)
    idx = np.flatnonzero(keep)
    models = Models(models.rows.iloc[idx].reset_index(drop=True), [models.specs[i] for i in idx],
                    [models.params[i] for i in idx])
    tasks, y = models.rows["task"].to_numpy(object), models.rows["test_acc"].to_numpy()
    scores: dict[str, np.ndarray] = {}
    for inputs, name in (("data", "task's unlabelled inputs"), ("probes", "Gaussian probes")):
        for how in ("centrality", "majority", "spectral"):
            scores[f"consensus, {how}, {name}"] = consensus(models.specs, models.params, tasks, inputs, split, how)
    probed = scores["consensus, centrality, Gaussian probes"]
    for rounds in (1, 2):
        scores[f"written score, {rounds} round{'s' * (rounds > 1)}"] = written_score(models.specs, models.params, tasks,
                                                                                    rounds, probed)
    scores["confidence, task's unlabelled inputs"] = confidence(models.specs, models.params, tasks, split)
    z = encoder.embed(models.specs, models.params).numpy()
    scores["peace centrality"] = _centrality(z, tasks)
    scores["peace + ridge"] = ridge(encoder.embed(train.specs, train.params).numpy(),
                                    train.rows["test_acc"].to_numpy()).predict(z)
    for reading in ("peace + ridge", "peace centrality"):  # weights only, beside PEACE's two readings
        scores[f"consensus (Gaussian probes) and {reading}, mean rank"] = _mean_rank(tasks, probed, scores[reading])
    return {k: within_group_tau(y, v, tasks) for k, v in scores.items()}


def _mean_rank(tasks: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    """Two signals joined without a fit: each model's rank inside its task, as a share, averaged over them."""
    out = np.zeros(len(tasks))
    for t in np.unique(tasks):
        i = tasks == t
        out[i] = np.mean([rankdata(s[i]) / i.sum() for s in scores], axis=0)
    return out


def whole_zoo(path: str, query: str | None) -> None:
    """Consensus per task of the zoo (or of the models ``query`` picks), centrality, majority vote and spectral, on
    Gaussian probes and on the task's unlabelled inputs, and the written score after one and two rounds: tau
    against the recorded accuracy."""
    zoo, rows = Zoo(path), []
    m = zoo.manifest if query is None else zoo.manifest.query(query)
    for task in sorted(m["task"].unique()):
        ids = list(m.index[m["task"] == task])
        specs, params, y = [zoo.spec(i) for i in ids], zoo.load_many(ids), m.loc[ids, "test_acc"].to_numpy()
        row, t0 = {"task": task, "models": len(ids)}, time.perf_counter()
        for inputs, name in (("probes", "probes"), ("data", "unlabelled inputs")):
            for how in ("centrality", "majority", "spectral"):
                s = consensus(specs, params, [task] * len(ids), inputs, how=how)
                row[f"{how}, {name}"] = kendalltau(y, s).statistic
                if (inputs, how) == ("probes", "centrality"):
                    probed = s  # what picks the written score's first writers
        for rounds in (1, 2):
            s = written_score(specs, params, [task] * len(ids), rounds, probed)
            row[f"written, {rounds} round{'s' * (rounds > 1)}"] = kendalltau(y, s).statistic
        rows.append(row | {"s": time.perf_counter() - t0})
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    print(df.drop(columns=["task", "models"]).mean().round(3).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--zoo", help="rank every task of this zoo instead (all its models, or --query's)")
    ap.add_argument("--query", help="with --zoo: a manifest query picking the models (e.g. \"epoch == 75\")")
    args = ap.parse_args()
    if args.zoo:
        return whole_zoo(args.zoo, args.query)
    table = {}
    for r in args.runs:
        t = time.perf_counter()
        table[r] = signals(r, args.split)
        print(f"{r}: {time.perf_counter() - t:.0f} s", flush=True)
    df = pd.DataFrame(table)
    df = df.assign(mean=df.mean(axis=1), std=df.std(axis=1))
    print(df.sort_values("mean", ascending=False).round(3).to_string())


if __name__ == "__main__":
    main()
