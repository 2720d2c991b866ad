"""Teaching demos of weight-space symmetries on zoo models (used by notebook 06 and the explorer)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .alignment import align, interpolation_path, loss_barrier
from .architectures import forward
from .errors import PeaceError
from .symmetry import RandomSymmetry, allowed, random_symmetry
from .zoo import Zoo


@dataclass
class SymmetryDemo:
    model_id: str
    applied: dict[str, bool]
    before: dict[str, Tensor]
    after: dict[str, Tensor]
    max_output_change: float      # largest change of any logit on the task's test inputs
    raw_distance: float           # ||w_after - w_before|| / ||w_before||
    predictions_agree: float      # fraction of test inputs with the same predicted class


def pick_model(zoo: Zoo, model_id: str | None = None) -> str:
    """``model_id`` if given, else the most accurate final checkpoint among the zoo's MLPs."""
    if model_id is not None:
        zoo.row(model_id)
        return model_id
    m = zoo.manifest
    final = m[(m["epoch"] == m["epochs"]) & (m["status"] == "ok")]
    pool = final[final["family"] == "mlp"] if (final["family"] == "mlp").any() else final
    if pool.empty:
        raise PeaceError(f"zoo {zoo.path} has no finished, non-diverged model to demonstrate with")
    return str(pool.sort_values(["test_acc", "model_id"], ascending=[False, True]).iloc[0]["model_id"])


def symmetry_demo(zoo: Zoo, model_id: str, seed: int = 0, kind: RandomSymmetry = RandomSymmetry()) -> SymmetryDemo:
    """Apply a random function-preserving transform to a zoo model and measure what changed."""
    spec, before = zoo.spec(model_id), zoo.weights(model_id)
    after = random_symmetry(spec, before, seed, kind)
    X = torch.from_numpy(zoo.task(model_id).X_test)
    with torch.no_grad():
        out_b = forward(spec, {k: v[None] for k, v in before.items()}, X)[0]
        out_a = forward(spec, {k: v[None] for k, v in after.items()}, X)[0]
    flat = lambda p: torch.cat([v.flatten() for v in p.values()])
    ok = allowed(spec)
    applied = {"permute": kind.permute, "scale": ok["scale"] if kind.scale is None else kind.scale,
               "flip": ok["flip"] if kind.flip is None else kind.flip}
    return SymmetryDemo(model_id, applied, before, after, float((out_a - out_b).abs().max()),
                        float((flat(after) - flat(before)).norm() / flat(before).norm()),
                        float((out_a.argmax(1) == out_b.argmax(1)).float().mean()))


def partner(zoo: Zoo, model_id: str) -> str:
    """Another model of the same architecture, task and epoch, trained from a different seed."""
    m, row = zoo.manifest, zoo.row(model_id)
    same = m[(m["arch_spec"] == row["arch_spec"]) & (m["task"] == row["task"]) & (m["epoch"] == row["epoch"])
             & (m["seed"] != row["seed"]) & (m["status"] == "ok") & m["parent_id"].isna()]
    if same.empty:
        raise PeaceError(f"no model in {zoo.path} shares {model_id}'s architecture, task and epoch with another "
                         f"seed; pick two models of one architecture")
    return str(same.sort_values(["seed", "model_id"]).iloc[0]["model_id"])


def interpolation_demo(zoo: Zoo, a_id: str, b_id: str, n_points: int = 21) -> dict[str, dict[str, np.ndarray]]:
    """Loss/accuracy along the straight line from A to B, with and without aligning B to A first."""
    spec = zoo.spec(a_id)
    if zoo.row(b_id)["arch_spec"] != zoo.row(a_id)["arch_spec"]:
        raise PeaceError(f"{a_id} and {b_id} have different architectures; weight-space interpolation needs one")
    a, b = zoo.weights(a_id), zoo.weights(b_id)
    task = zoo.task(a_id)
    X, y = torch.from_numpy(task.X_test), torch.from_numpy(task.y_test)
    paths = {"naive": interpolation_path(spec, a, b, X, y, n_points),
             "aligned": interpolation_path(spec, a, align(spec, a, b)[0], X, y, n_points)}
    for p in paths.values():
        p["barrier"] = np.array(loss_barrier(p))
    return paths
