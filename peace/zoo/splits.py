"""Train / validation / test splits of a zoo by lineage, with whole tasks held out.

All checkpoints of a run, and every fine-tune started from it, land on the same side, so a model
is never evaluated against its own earlier or later self. Held-out tasks go entirely to test, so
evaluation measures generalization to functions the encoder never saw; validation can hold out
tasks of its own too, so that choosing an epoch or a configuration rewards the same thing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from peace.core.errors import PeaceError, unknown

__all__ = ["choose_holdout", "split_zoo"]


def choose_holdout(tasks: list[str], holdout: int | list[str], seed: int, min_train_tasks: int = 2) -> list[str]:
    """``holdout`` task names (checked) or that many tasks drawn with ``seed``, leaving
    ``min_train_tasks`` (2 for same-task validation) to train on."""
    tasks = sorted(tasks)
    if isinstance(holdout, int):
        if holdout < 0:
            raise PeaceError(f"holdout_tasks must be >= 0 or a list of task names, got {holdout}")
        if len(tasks) - holdout < min_train_tasks:
            raise PeaceError(f"the zoo has {len(tasks)} task(s) {tasks}; training needs at least {min_train_tasks} "
                             f"training task(s) after holding out {holdout}. Set train.holdout_tasks lower (a "
                             f"single-task zoo: train.holdout_tasks=0, validated by lineage) or build a zoo with "
                             f"more tasks.")
        return sorted(np.random.default_rng(seed).choice(tasks, size=holdout, replace=False).tolist())
    for t in holdout:
        if t not in tasks:
            raise unknown("held-out task", t, tasks)
    if len(set(tasks) - set(holdout)) < min_train_tasks:
        raise PeaceError(f"holding out {holdout} leaves fewer than {min_train_tasks} training task(s) of {tasks}")
    return sorted(holdout)


def split_zoo(manifest: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.15,
              holdout: int | list[str] = 1, seed: int = 0, min_train_tasks: int = 2,
              val_holdout: int | list[str] = 0) -> pd.DataFrame:
    """One row per model: ``model_id``, ``split`` (train / val / test), ``heldout_task`` (its task is
    held out to test) and ``val_heldout_task`` (held out to validation).

    Lineages (a run and its fine-tunes) are shuffled within their root task and cut by the fractions;
    a lineage touching a test held-out task goes to test, else one touching a validation held-out
    task goes to validation.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise PeaceError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, "
                         f"got {val_fraction} and {test_fraction}")
    tasks = list(manifest["task"].unique())
    held = choose_holdout(tasks, holdout, seed, min_train_tasks)
    val_held = choose_holdout([t for t in tasks if t not in held], val_holdout, seed + 1, min_train_tasks) \
        if val_holdout else []
    lin = manifest.groupby("lineage_id").agg(tasks=("task", lambda t: set(t)),
                                             root=("task", "first"))
    rng = np.random.default_rng(seed)
    side: dict[str, str] = {}
    for lid, touched in lin["tasks"].items():
        if touched & set(held):
            side[lid] = "test"
        elif touched & set(val_held):
            side[lid] = "val"
    rest = lin[~lin.index.isin(list(side))]
    for _, group in rest.groupby("root", sort=True):
        ids = list(group.index)
        rng.shuffle(ids)
        n_val, n_test = int(round(val_fraction * len(ids))), int(round(test_fraction * len(ids)))
        for i, lid in enumerate(ids):
            side[lid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    out = pd.DataFrame({"model_id": manifest["model_id"].to_numpy(),
                        "split": manifest["lineage_id"].map(side).to_numpy(),
                        "heldout_task": manifest["task"].isin(held).to_numpy(),
                        "val_heldout_task": manifest["task"].isin(val_held).to_numpy()})
    return out
