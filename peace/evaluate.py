"""``peace evaluate``: PEACE against every baseline on the run's held-out models.

Baselines and probes are fit on the training split; every figure is measured on the test split
(held-out runs of training tasks plus whole held-out tasks). Writes ``metrics.json``,
``report.md`` and plotly HTML figures.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .architectures import forward, stack_params
from .atomic import atomic_path, write_json
from .baselines import Baseline, MetadataSearch, Models, weight_baselines
from .errors import PeaceError
from .metrics import clustering_scores, functional_similarity, hard_queries, invariance_ratio, linear_probe, retrieval_scores
from .plots import method_comparison
from .symmetry import random_symmetry
from .trainer import load_encoder
from .transfer import TransferConfig, transfer_study
from .zoo import Zoo

REGRESSION_TARGETS = ("test_acc", "gen_gap", "epoch", "log10_lr")
CATEGORY_TARGETS = ("activation", "init", "optimizer")
# model-card columns that state a probe target outright: metadata search must not see them
REVEALS = {"epoch": ("epoch",), "log10_lr": ("lr",), "activation": ("activation", "arch"), "init": ("init",),
           "optimizer": ("optimizer",)}


class EncoderMethod(Baseline):
    """A trained encoder run behind the baseline interface (PEACE itself, or the flat MLP control)."""

    def __init__(self, run_dir: str | Path, name: str):
        self.encoder, self.name = load_encoder(run_dir), name

    def transform(self, models: Models) -> np.ndarray:
        return self.encoder.embed(models.specs, models.params).numpy()


def _sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return rows if len(rows) <= n else rows.sample(n, random_state=seed)


def _functional(method: Baseline, models: Models, seed: int, per_group: int = 150) -> float:
    """Spearman(embedding distance, prediction disagreement) within groups sharing input and output
    spaces, on shared Gaussian probe inputs; averaged over groups weighted by size."""
    keyed = models.rows.assign(io=[f"{s.input_shape}->{s.n_classes}" for s in models.specs], i=range(len(models)))
    scores, weights = [], []
    for io, g in keyed.groupby("io"):
        g = _sample(g, per_group, seed)
        if len(g) < 3:
            continue
        idx = list(g["i"])
        spec0 = models.specs[idx[0]]
        probe = torch.randn(256, *spec0.input_shape, generator=torch.Generator().manual_seed(seed))
        preds = np.stack([forward(models.specs[i], stack_params([models.params[i]]), probe)[0].argmax(-1).numpy()
                          for i in idx])
        sub = Models(models.rows.iloc[idx].reset_index(drop=True), [models.specs[i] for i in idx],
                     [models.params[i] for i in idx])
        scores.append(functional_similarity(method.transform(sub), preds))
        weights.append(len(idx))
    return float(np.average(scores, weights=weights)) if scores else float("nan")


def evaluate_method(method: Baseline, train: Models, test: Models, seed: int = 0) -> dict:
    """Every metric of one method (already fit on ``train``) on the test models."""
    e_train, e_test = method.transform(train), method.transform(test)
    rows = test.rows
    out: dict = {"retrieval_task": retrieval_scores(e_test, rows["task"].to_numpy()),
                 "retrieval_task_hard": retrieval_scores(e_test, rows["task"].to_numpy(), hard_queries(rows)),
                 "retrieval_task_heldout": retrieval_scores(e_test, rows["task"].to_numpy(), rows["heldout_task"].to_numpy()),
                 "retrieval_lineage": retrieval_scores(e_test, rows["lineage_id"].to_numpy())}
    out["clustering_task"] = clustering_scores(e_test, rows["task"].to_numpy(), seed)
    probes = {}
    tr, te = train.rows.assign(log10_lr=np.log10(train.rows["lr"])), rows.assign(log10_lr=np.log10(rows["lr"]))
    for t in REGRESSION_TARGETS + CATEGORY_TARGETS:
        categorical = t in CATEGORY_TARGETS
        if categorical and tr[t].nunique() < 2:
            continue
        x_tr, x_te = e_train, e_test
        if isinstance(method, MetadataSearch) and t in REVEALS:  # a card without the answer
            blind = MetadataSearch([c for c in method.columns if c not in REVEALS[t]]).fit(train)
            x_tr, x_te = blind.transform(train), blind.transform(test)
        probes[t] = linear_probe(x_tr, tr[t].to_numpy(), x_te, te[t].to_numpy(), categorical=categorical)
    out["probes"] = probes
    inv = _sample(rows.reset_index(drop=True).assign(i=range(len(rows))), 100, seed)
    moved = Models(inv.drop(columns="i"), [test.specs[i] for i in inv["i"]],
                   [random_symmetry(test.specs[i], test.params[i], seed=seed + k) for k, i in enumerate(inv["i"])])
    out["invariance"] = invariance_ratio(e_test[inv["i"].to_numpy()], method.transform(moved), e_test)
    out["functional_spearman"] = _functional(method, test, seed)
    return out


def split_models(run_dir: str | Path, zoo: Zoo) -> tuple[Models, Models]:
    """The run's training and test models (finite ones only); test rows carry the split columns."""
    splits = pd.read_parquet(Path(run_dir) / "splits.parquet")
    rows = zoo.manifest.reset_index(drop=True).merge(splits, on="model_id")
    rows = rows[rows["status"] == "ok"]
    ids = {s: list(rows.loc[rows["split"] == s, "model_id"]) for s in ("train", "test")}
    if min(len(v) for v in ids.values()) < 2:
        raise PeaceError(f"the run's splits leave {len(ids['train'])} training and {len(ids['test'])} test models; "
                         f"evaluation needs at least 2 of each")
    train, test = Models.from_zoo(zoo, ids["train"]), Models.from_zoo(zoo, ids["test"])
    test.rows = test.rows.merge(splits, on="model_id", how="left")
    return train, test


def evaluate(run_dir: str | Path, out: str | Path, zoo: Zoo | str | Path | None = None,
             mlp_run: str | Path | None = None, seed: int = 0, progress: bool = True,
             transfer: TransferConfig | None = TransferConfig()) -> dict:
    """Evaluate the run's encoder and every baseline; write metrics.json, report.md and figures to ``out``.

    ``transfer=None`` skips the fine-tuning study (the slowest part)."""
    run_dir, out = Path(run_dir), Path(out)
    peace = EncoderMethod(run_dir, "peace")
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo or peace.encoder.meta["zoo"])
    if peace.encoder.meta.get("zoo_manifest_sha256") != zoo.info["manifest_sha256"]:
        raise PeaceError(f"the run {run_dir} was trained on another zoo than {zoo.path}; evaluate it on its own zoo "
                         f"(its splits say which models were held out)")
    train, test = split_models(run_dir, zoo)
    methods: list[Baseline] = [peace] + ([EncoderMethod(mlp_run, "mlp-encoder")] if mlp_run else []) + weight_baselines()
    results = {}
    for m in tqdm(methods, desc="evaluate", disable=not progress, leave=False):
        m.fit(train)
        results[m.name] = evaluate_method(m, train, test, seed)
    metrics = {"run": str(run_dir), "zoo": str(zoo.path), "n_train": len(train), "n_test": len(test),
               "heldout_tasks": peace.encoder.meta.get("holdout_tasks", []), "methods": results}
    if transfer is not None:
        metrics["transfer"] = transfer_study(methods, train, test, transfer, seed, progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    table = summary_table(metrics)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_markdown(metrics, table))
    with atomic_path(out / "retrieval.html") as tmp:
        method_comparison(table).write_html(str(tmp), include_plotlyjs=True)  # self-contained: works offline
    return metrics


def summary_table(metrics: dict) -> pd.DataFrame:
    """One row per method with the headline numbers."""
    rows = {}
    for name, r in metrics["methods"].items():
        p = r["probes"]
        rows[name] = {"task mAP": r["retrieval_task"]["map"], "task P@10": r["retrieval_task"]["precision@10"],
                      "hard mAP": r["retrieval_task_hard"]["map"], "held-out task mAP": r["retrieval_task_heldout"]["map"],
                      "lineage mAP": r["retrieval_lineage"]["map"], "NMI": r["clustering_task"]["nmi"],
                      "R2 test_acc": p["test_acc"]["r2"], "R2 gen_gap": p["gen_gap"]["r2"], "R2 epoch": p["epoch"]["r2"],
                      "func. Spearman": r["functional_spearman"], "invariance ratio": r["invariance"]["ratio"]}
    return pd.DataFrame(rows).T.rename_axis("method")


def report_markdown(metrics: dict, table: pd.DataFrame) -> str:
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    head = "| method | " + " | ".join(table.columns) + " |\n|---|" + "---|" * len(table.columns) + "\n"
    body = "".join(f"| {m} | " + " | ".join(fmt(v) for v in r) + " |\n" for m, r in table.iterrows())
    return (f"# PEACE evaluation\n\nRun `{metrics['run']}` on zoo `{metrics['zoo']}`: {metrics['n_train']} training "
            f"models (baselines and probes fit on them), {metrics['n_test']} test models (every figure below), "
            f"held-out tasks {', '.join(metrics['heldout_tasks']) or 'none'}.\n\n{head}{body}\n"
            "mAP: leave-one-out cosine retrieval among test models, relevance = same task (hard: queries whose "
            "architecture is trained on other tasks too; held-out: queries of tasks never seen in training) or same "
            "fine-tune lineage. R2: ridge probes. Func. Spearman: rank correlation of embedding distance with "
            "prediction disagreement on shared probe inputs. Invariance ratio: distance to a random symmetry "
            "transform over distance to the nearest other model (lower is better; 0 = exactly invariant).\n\n"
            f"{transfer_markdown(metrics.get('transfer'))}All numbers: `metrics.json`.\n")


def transfer_markdown(transfer: dict | None) -> str:
    """The transfer-learning and zero-shot table of the report (empty when the study was skipped)."""
    if not transfer:
        return ""
    skipped = "".join(f"- {t} skipped: {why}\n" for t, why in transfer["skipped"].items())
    if not transfer["tasks"]:
        return f"## Transfer learning\n\nNo held-out task could be studied.\n{skipped}\n"
    c = transfer["config"]
    table = pd.DataFrame(transfer["methods"]).T
    head = "| method | " + " | ".join(table.columns) + " |\n|---|" + "---|" * len(table.columns) + "\n"
    body = "".join(f"| {m} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.3f}" for v in r) + " |\n"
                   for m, r in table.iterrows())
    return (f"## Transfer learning\n\nHeld-out tasks {', '.join(transfer['tasks'])}: for {c['queries']} query models "
            f"per task, each method's top {c['k']} compatible training models (and {c['k']} random ones) were "
            f"fine-tuned for {c['epochs']} epochs (Adam, lr {c['lr']}). final_val_acc: after the budget; "
            f"step_ratio_vs_random: steps until the target accuracy (quantile {c['target']} of every candidate's "
            f"final accuracy) over random's (lower is better); zero_shot_spearman: rank correlation of a model's mean "
            f"similarity to the task's models with its fine-tuned accuracy ({c['pool']} random compatible models).\n\n"
            f"{head}{body}\n{skipped}\n")
