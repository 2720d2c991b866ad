"""Transfer-learning efficiency and zero-shot task prediction.

A user holds a model of a task the encoder never saw and asks the zoo for models to fine-tune.
Each method ranks the compatible zoo models (same input shape and classes) by embedding similarity
to that query; its top k are fine-tuned on the task with the batched population trainer, next to
k random compatible models. Reported per method: fine-tuning steps until a target accuracy (by
default the median final accuracy of every fine-tuned candidate; as a ratio to random) and
validation accuracy after a fixed budget. Zero-shot: over a random sample of compatible models, the rank
correlation between a model's mean similarity to the task's models and its fine-tuned accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from peace.core.cluster import Engine, Serial
from peace.core.errors import PeaceError
from peace.core.rng import model_seed
from peace.evaluate.baselines import Baseline, Models
from peace.evaluate.metrics import normalize_rows
from peace.nets.architectures import ArchSpec, stack_params
from peace.zoo.population import HParams, Schedule, train_population
from peace.zoo.store import usable
from peace.zoo.tasks import Task, load_task

__all__ = ["TransferConfig", "finetune_curves", "io_key", "steps_to_target", "subset", "transfer_study"]


@dataclass(frozen=True)
class TransferConfig:
    """What the transfer study fine-tunes, and for how long."""

    k: int = 5  # models retrieved per query
    queries: int = 3  # query models per held-out task
    pool: int = 48  # random compatible models fine-tuned for the zero-shot correlation
    task_models: int = 32  # models of the task its mean similarity is taken over
    epochs: int = 20  # fine-tuning budget
    also_at: tuple[int, ...] = (5,)  # shorter budgets reported too (read off the same fine-tuning curves)
    lr: float = 1e-3
    batch_size: int = 32
    target: float = 0.5  # target accuracy: this quantile of all fine-tuned candidates' final accuracies

    def __post_init__(self) -> None:
        if min(self.k, self.queries, self.epochs, self.batch_size, self.task_models) < 1 or self.pool < 0:
            raise PeaceError(f"transfer k, queries, task_models, epochs and batch_size must be >= 1 and pool >= 0, "
                             f"got {self}")
        if not 0 < self.target <= 1:
            raise PeaceError(f"transfer target must be a quantile in (0, 1], got {self.target}")
        if any(int(b) < 1 for b in self.also_at):
            raise PeaceError(f"transfer also_at budgets must be >= 1 epoch, got {self.also_at}")
        # budgets at or beyond the full one say nothing new
        object.__setattr__(self, "also_at", tuple(sorted({int(b) for b in self.also_at if b < self.epochs})))

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.also_at) | {self.epochs}))


def io_key(spec: ArchSpec) -> tuple[tuple[int, ...], int]:
    """(input shape, classes): models with equal keys can be fine-tuned on each other's tasks (an
    equal input size alone is not enough: a 4x4 image model would read tabular features as pixels)."""
    return tuple(spec.input_shape), spec.n_classes


def subset(models: Models, idx: Sequence[int]) -> Models:
    idx = list(idx)
    return Models(models.rows.iloc[idx].reset_index(drop=True), [models.specs[i] for i in idx],
                  [models.params[i] for i in idx])


def _finetune_metrics(task: Task, spec: ArchSpec, hparams: list[HParams], schedule: Schedule,
                      start: dict) -> list[dict]:
    """One architecture's fine-tuning: its metric rows only (a piece of work an engine may run elsewhere)."""
    return train_population(task, spec, hparams, schedule, start=start).metrics


def finetune_curves(task: Task, models: Models, cfg: TransferConfig, seed: int = 0,
                    engine: Engine | None = None, split: str = "val") -> np.ndarray:
    """Accuracy on ``split`` (validation by default) of each model fine-tuned on ``task`` (Adam, ``cfg.lr``), at epochs
    0..``cfg.epochs``: shape (models, epochs + 1); NaN where a model diverged. Each architecture's
    models are one population; ``engine`` trains the populations side by side."""
    curves = np.full((len(models), cfg.epochs + 1), np.nan)
    groups: dict[ArchSpec, list[int]] = {}
    for i, spec in enumerate(models.specs):
        groups.setdefault(spec, []).append(i)
    schedule = Schedule(cfg.epochs, cfg.batch_size, "adam", tuple(range(cfg.epochs + 1)))
    engine, futures = engine or Serial(), []
    for spec, idx in groups.items():
        hps = [HParams(seed=model_seed(seed, models.rows["model_id"].iloc[i], "finetune:" + task.name), lr=cfg.lr)
               for i in idx]  # keyed by model: its curve does not depend on what is fine-tuned beside it
        futures.append(engine.submit(_finetune_metrics, task, spec, hps, schedule,
                                     stack_params([models.params[i] for i in idx])))
    for idx, f in zip(groups.values(), futures):
        for r in f.result():
            if r["status"] == "ok":
                curves[idx[r["model_index"]], r["epoch"]] = r[f"{split}_acc"]
    return curves


def steps_to_target(curves: np.ndarray, target: float, steps_per_epoch: int) -> np.ndarray:
    """Optimizer steps until each curve first reaches ``target``; one epoch past the budget where
    it never does (a censored count, so methods that fail more often score worse)."""
    reached = np.nan_to_num(curves, nan=-1.0) >= target
    first = np.where(reached.any(1), reached.argmax(1), curves.shape[1])
    return first * steps_per_epoch


def _mean(values: list) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def transfer_study(methods: Sequence[Baseline], library: Models, test: Models, cfg: TransferConfig = TransferConfig(),
                   seed: int = 0, progress: bool = False, engine: Engine | None = None) -> dict:
    """Fine-tune what each (fitted) method retrieves from ``library`` for the held-out tasks of
    ``test`` (rows with ``heldout_task``); per-task and task-averaged figures. ``engine`` fine-tunes
    each task's architectures side by side (Ray); the figures do not depend on it."""
    rows = test.rows.reset_index(drop=True)
    final = rows["epoch"] == rows["epochs"]
    tasks = sorted(rows.loc[rows["heldout_task"].astype(bool) & usable(rows), "task"].unique())
    out: dict = {"config": asdict(cfg), "tasks": {}, "skipped": {}}
    rng = np.random.default_rng(seed)
    for name in tqdm(tasks, desc="transfer", disable=not progress, leave=False):
        of_task = np.flatnonzero((rows["task"] == name) & usable(rows))
        last = [i for i in of_task if final[i]] or list(of_task)
        queries = subset(test, rng.choice(last, min(cfg.queries, len(last)), replace=False))
        task_models = subset(test, rng.choice(of_task, min(cfg.task_models, len(of_task)), replace=False))
        key = io_key(queries.specs[0])
        pool_idx = [i for i, s in enumerate(library.specs) if io_key(s) == key]
        if len(pool_idx) < cfg.k:
            out["skipped"][name] = (f"{len(pool_idx)} zoo models share its input shape and classes {key}; "
                                    f"the study needs at least k={cfg.k}")
            continue
        pool = subset(library, pool_idx)
        e_pool = {m.name: normalize_rows(m.transform(pool)) for m in methods}  # once per method: picks and zero-shot
        picks = {m.name: np.argsort(-normalize_rows(m.transform(queries)) @ e_pool[m.name].T, axis=1,
                                    kind="stable")[:, :cfg.k] for m in methods}
        picks["random"] = np.stack([rng.choice(len(pool), cfg.k, replace=False) for _ in range(len(queries))])
        sample = rng.choice(len(pool), min(cfg.pool, len(pool)), replace=False)
        need = np.unique(np.concatenate([p.ravel() for p in picks.values()] + [sample]))
        task = load_task(name)
        curves = dict(zip(need.tolist(), finetune_curves(task, subset(pool, need), cfg, seed, engine)))
        per_epoch = math.ceil(len(task.y_train) / cfg.batch_size)
        task_sim = {m.name: (e_pool[m.name][sample] @ normalize_rows(m.transform(task_models)).T).mean(1)
                    for m in methods}  # each sampled model's mean similarity to the task's models
        out["tasks"][name] = {"pool": len(pool), "steps_per_epoch": per_epoch, "budgets": {}}
        for budget in cfg.budgets:
            cut = {i: c[:budget + 1] for i, c in curves.items()}
            out["tasks"][name]["budgets"][budget] = _score_picks(picks, cut, pool, sample, task_sim, cfg.target,
                                                                 per_epoch)
    names = [m.name for m in methods] + ["random"]
    keys = ("final_val_acc", "step_ratio_vs_random", "reached_target", "zero_shot_spearman", "picked_epoch",
            "picked_own_acc")
    out["budgets"] = {b: {m: {k: _mean([t["budgets"][b]["methods"][m].get(k) for t in out["tasks"].values()])
                              for k in keys} for m in names} for b in cfg.budgets}
    out["methods"] = out["budgets"][cfg.epochs]  # the headline: the full budget
    return out


def _score_picks(picks: dict, curves: dict, pool: Models, sample: np.ndarray, task_sim: dict, quantile: float,
                 per_epoch: int) -> dict:
    """Every method's figures for one task at one budget (``curves`` already cut to it)."""
    finals = np.array([c[-1] for c in curves.values()])
    target = float(np.nanquantile(finals, quantile))
    res = {}
    for m, p in picks.items():
        c = np.stack([curves[i] for i in p.ravel()])
        picked = pool.rows.iloc[p.ravel()]
        res[m] = {"final_val_acc": float(np.nanmean(c[:, -1])), "start_val_acc": float(np.nanmean(c[:, 0])),
                  "steps_to_target": float(steps_to_target(c, target, per_epoch).mean()),
                  "reached_target": float((np.nan_to_num(c, nan=-1.0) >= target).any(1).mean()),
                  "picked_epoch": float(picked["epoch"].mean()), "picked_own_acc": float(picked["test_acc"].mean())}
    z = np.array([curves[i][-1] for i in sample])
    ok = np.isfinite(z)
    for m, sim in task_sim.items():
        rho = spearmanr(sim[ok], z[ok]).statistic if ok.sum() > 2 and np.ptp(z[ok]) > 0 else float("nan")
        res[m]["zero_shot_spearman"] = float(rho)
    for m in res:
        res[m]["step_ratio_vs_random"] = res[m]["steps_to_target"] / max(res["random"]["steps_to_target"], 1e-12)
    return {"target_val_acc": target, "best_val_acc": float(np.nanmax(finals)), "methods": res}
