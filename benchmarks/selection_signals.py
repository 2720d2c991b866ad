"""Which label-free signal ranks a task's models by accuracy? Consensus (majority or spectral, on the task's
unlabelled inputs or on Gaussian probes), confidence, and PEACE's own readings, side by side.

For each run: on ``--split test`` the held-out tasks' test models (``peace evaluate``'s model-selection
set); on ``--split val`` every validation model, grouped by task (to choose on: no signal here is
trained on these models, but the ridge probe has seen most of their tasks). Kendall tau inside each
task, averaged over tasks (``within_group_tau``); then mean ± std over runs.

    python benchmarks/selection_signals.py --split val artifacts/runs/demo artifacts/runs/demo-s1 artifacts/runs/demo-s2

With ``--zoo`` instead: ``peace rank`` on every task of a zoo (all its models, every epoch), on Gaussian
probes and on the task's unlabelled inputs: its Kendall tau against the recorded test accuracy and its time.

    python benchmarks/selection_signals.py --zoo artifacts/zoos/demo
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from peace.evaluate.baselines import Models
from peace.evaluate.metrics import ridge, within_group_tau
from peace.evaluate.selection import confidence, consensus
from peace.learn.run import RunDir
from peace.orchestrate.evaluation import split_models
from peace.orchestrate.selection import agreement_with_record, rank_models
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
        for how in ("majority", "spectral"):
            scores[f"consensus, {how}, {name}"] = consensus(models.specs, models.params, tasks, inputs, split, how)
    scores["confidence, task's unlabelled inputs"] = confidence(models.specs, models.params, tasks, split)
    z = encoder.embed(models.specs, models.params).numpy()
    scores["peace centrality"] = _centrality(z, tasks)
    scores["peace + ridge"] = ridge(encoder.embed(train.specs, train.params).numpy(),
                                    train.rows["test_acc"].to_numpy()).predict(z)
    return {k: within_group_tau(y, v, tasks) for k, v in scores.items()}


def whole_zoo(path: str) -> None:
    """``peace rank`` per task of the zoo, both kinds of input: tau against the record, and seconds."""
    zoo, rows = Zoo(path), []
    for task in sorted(zoo.manifest["task"].unique()):
        row = {"task": task}
        for name, kind in (("probes", None), ("unlabelled inputs", task)):
            t = time.perf_counter()
            ranked, _ = rank_models(zoo, f"task == '{task}'", task=kind)
            row |= {"models": len(ranked), f"tau, {name}": agreement_with_record(ranked),
                    f"s, {name}": time.perf_counter() - t}
        rows.append(row)
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    print(df.drop(columns=["task", "models"]).mean().round(3).to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--zoo", help="rank every task of this zoo instead (peace rank)")
    args = ap.parse_args()
    if args.zoo:
        return whole_zoo(args.zoo)
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
