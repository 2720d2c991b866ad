"""``peace ablate``: train and evaluate once per (configuration, seed) of a YAML grid.

A grid names a zoo, a base encoder config, seeds and a list of configurations (each a set of
config overrides). Every configuration is checked against the config before anything runs. Each
(configuration, seed) runs notebooks 02 and 04 into ``<out>/runs/<name>-s<seed>/``; finished ones
are skipped (resumable), failed ones are recorded with their error, and every run's PEACE metrics
are collected into ``<out>/summary.parquet``.
"""
from __future__ import annotations

import contextlib
import json
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from peace.core.atomic import atomic_path
from peace.core.cluster import Engine, Threads
from peace.core.config import checked, read_yaml
from peace.core.errors import PeaceError
from peace.core.paths import safe_name
from peace.learn.runconfig import load_config
from peace.orchestrate.pipeline import Step, evaluate_step, notebook_path, run_steps, train_step

__all__ = [
    "FULL", "GRID_DIR", "LOWER_IS_BETTER", "Configuration", "Grid", "best_per_metric", "compare", "grid_names",
    "load_grid", "run_ablation", "run_one"
]

GRID_DIR = Path(__file__).resolve().parents[1] / "presets" / "ablation"
FULL = "full"  # the name of the unablated method in a grid; charts highlight it


@dataclass
class Configuration:
    name: str
    set: dict = field(default_factory=dict)  # dotted config key -> value

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.set.items()]  # JSON values are YAML: types survive


@dataclass
class Grid:
    zoo: str  # a built zoo (relative paths: from the current directory)
    configurations: list
    base: str = "default"
    overrides: list = field(default_factory=list)  # applied to every configuration first
    seeds: list = field(default_factory=lambda: [0])
    device: str = "cpu"
    transfer_epochs: int = 0  # the transfer study per run is slow; off unless asked for
    accuracy_epochs: int = 0  # so is the accuracy-prediction study against NFN


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def load_grid(source: str | Path) -> Grid:
    """A grid from a built-in name or a YAML file, fully validated (keys, values, unique names)."""
    path = GRID_DIR / f"{source}.yaml" if str(source) in grid_names() else Path(source)
    d = read_yaml(path, "ablation grid")
    grid = checked(Grid, d, f"ablation grid {path}")
    if not isinstance(grid.configurations, list) or not grid.configurations:
        raise PeaceError(f"ablation grid {path}: 'configurations' must be a non-empty list of {{name, set}}")
    grid.configurations = [checked(Configuration, c, f"configuration #{i + 1} of {path}")
                           for i, c in enumerate(grid.configurations)]
    names = [safe_name(c.name, f"ablation grid {path}: configuration name") for c in grid.configurations]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PeaceError(f"ablation grid {path}: duplicate configuration name(s) {dupes}; each name must be unique")
    if (not isinstance(grid.seeds, list) or not grid.seeds or not all(map(_is_seed, grid.seeds))
            or len(set(grid.seeds)) != len(grid.seeds)):
        raise PeaceError(f"ablation grid {path}: seeds must be a non-empty list of integers in [0, 2**31) without "
                         f"repeats, got {grid.seeds!r}")
    for c in grid.configurations:
        try:
            load_config(grid.base, list(grid.overrides) + c.overrides)
        except PeaceError as e:
            raise PeaceError(f"ablation grid {path}, configuration {c.name!r}: {e}") from None
    return grid


def _is_seed(seed: object) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**31


def _steps(grid: Grid, c: Configuration, seed: int, run: Path) -> list[Step]:
    zoo = Path(grid.zoo).resolve()
    return [train_step(zoo, grid.base, list(grid.overrides) + c.overrides, grid.device, seed, run / "run"),
            evaluate_step(zoo, run / "run", run / "eval", seed, grid.transfer_epochs, grid.accuracy_epochs)]


def _flatten(metrics: dict) -> dict:
    """PEACE's metrics of one run as flat columns (``retrieval_task.map``, ``probes.test_acc.r2``, ...)."""
    flat = pd.json_normalize(metrics["methods"]["peace"], sep=".").iloc[0].to_dict()
    if metrics.get("transfer", {}).get("methods"):
        flat.update({f"transfer.{k}": v for k, v in metrics["transfer"]["methods"]["peace"].items()})
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float, np.floating, np.integer))}


def run_one(grid: Grid, c: Configuration, seed: int, out: Path) -> dict:
    """Train and evaluate one (configuration, seed) into ``out/runs/NAME-sSEED``; its summary row."""
    if not _is_seed(seed):
        raise PeaceError(f"seed {seed!r} must be an integer in [0, 2**31)")
    run = out / "runs" / f"{safe_name(c.name, 'configuration name')}-s{seed}"
    row = {"configuration": c.name, "seed": seed, "overrides": " ".join(c.overrides), "run": str(run)}
    (run / "error.txt").unlink(missing_ok=True)
    try:
        outcome = run_steps(_steps(grid, c, seed, run), run / "notebooks", progress=False)
    except Exception as e:  # noqa: BLE001 - recorded, the other configurations go on
        (run / "error.txt").parent.mkdir(parents=True, exist_ok=True)
        (run / "error.txt").write_text(str(e))
        return row | {"status": "failed", "error": str(e)}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    return row | {"status": "skipped (done)" if set(outcome) == {"current"} else "ran", "error": "",
                  **_flatten(metrics)}


def run_ablation(grid: Grid | str | Path, out: str | Path, workers: int = 1, progress: bool = True,
                 seeds: list[int] | None = None, engine: Engine | None = None) -> pd.DataFrame:
    """Run every (configuration, seed) not finished yet, seed by seed (every configuration at the first
    seed before any at the second); write and return ``summary.parquet``.

    ``seeds`` runs a subset of the grid's seeds (a quick first pass); the summary keeps the rows of
    the grid's other seeds from earlier invocations, so passes add up. ``workers`` runs that many at
    once here; ``engine`` (Ray) runs each as a task with one CPU (and one GPU when the grid trains on
    a GPU) instead, on a path every node sees.
    """
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    out = Path(out).resolve()
    if seeds is not None and not set(seeds) <= set(grid.seeds):
        raise PeaceError(f"seeds {sorted(set(seeds) - set(grid.seeds))} are not in the grid's seeds {grid.seeds}; "
                         "pick from those (or add them to the grid file)")
    from peace.zoo.store import Zoo

    Zoo(grid.zoo)  # a missing or broken zoo fails here, before any run
    for nb in ("02_train_encoder.ipynb", "04_evaluate.ipynb"):
        notebook_path(nb)
    everything = [(c, s) for s in grid.seeds for c in grid.configurations]
    jobs = [(c, s) for c, s in everything if seeds is None or s in seeds]
    gpus = 1 if grid.device.startswith("cuda") else 0
    rows = []
    with Threads(workers) if engine is None else contextlib.nullcontext(engine) as eng:
        futures = [eng.submit(run_one, grid, c, s, out, cpus=1, gpus=gpus) for c, s in jobs]
        for f in tqdm(as_completed(futures), total=len(futures), desc="ablation", disable=not progress):
            rows.append(f.result())
    order = {(c.name, s): i for i, (c, s) in enumerate(everything)}
    ran = {(r["configuration"], r["seed"]) for r in rows}
    if (out / "summary.parquet").exists():  # rows of seeds not run this time, from earlier passes
        rows += [r for r in pd.read_parquet(out / "summary.parquet").to_dict("records")
                 if (r["configuration"], r["seed"]) in order and (r["configuration"], r["seed"]) not in ran]
    summary = pd.DataFrame(sorted(rows, key=lambda r: order[(r["configuration"], r["seed"])]))
    with atomic_path(out / "summary.parquet") as tmp:
        summary.to_parquet(tmp)
    return summary


def compare(summary: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds per configuration and metric (finished runs)."""
    ok = summary[summary["status"] != "failed"]
    metrics = metrics or [c for c in ok.columns if "." in c and ok[c].notna().any()]
    long = ok.melt(id_vars=["configuration"], value_vars=metrics, var_name="metric")
    return (long.groupby(["metric", "configuration"], sort=False)["value"].agg(["mean", "std", "count"])
            .reset_index())


LOWER_IS_BETTER = ("invariance.ratio", "invariance.distance_to_transform", "clustering_task.davies_bouldin",
                   "transfer.step_ratio_vs_random")


def best_per_metric(table: pd.DataFrame) -> pd.DataFrame:
    """For each metric, the configuration with the best mean (lowest where lower is better)."""
    rows = []
    for metric, g in table.groupby("metric", sort=False):
        g = g.dropna(subset=["mean"])
        if g.empty:
            continue
        best = g.loc[g["mean"].idxmin() if metric.endswith(LOWER_IS_BETTER) else g["mean"].idxmax()]
        rows.append({"metric": metric, "best configuration": best["configuration"], "mean": best["mean"],
                     "std": best["std"]})
    return pd.DataFrame(rows)
