"""Teaching demos of weight-space symmetries on zoo models (used by notebook 06 and the explorer)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.alignment import align, interpolation_path, loss_barrier
from peace.nets.architectures import forward, stack_params
from peace.nets.symmetry import RandomSymmetry, allowed, random_symmetry
from peace.zoo.store import Zoo, usable

__all__ = ["SymmetryDemo", "interpolation_demo", "partner", "pick_model", "symmetry_demo"]


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
    final = m[(m["epoch"] == m["epochs"]) & usable(m)]
    pool = final[final["family"] == "mlp"] if (final["family"] == "mlp").any() else final
    if pool.empty:
        raise PeaceError(f"zoo {zoo.path} has no finished, non-diverged model to demonstrate with")
    return str(pool.sort_values(["test_acc", "model_id"], ascending=[False, True]).iloc[0]["model_id"])


def symmetry_demo(zoo: Zoo, model_id: str, seed: int = 0, kind: RandomSymmetry = RandomSymmetry()) -> SymmetryDemo:
    """Apply a random function-preserving transform to a zoo model and measure what changed on its
    task's test inputs."""
    spec, before = zoo.spec(model_id), zoo.weights(model_id)
    after = random_symmetry(spec, before, seed, kind)
    X = torch.from_numpy(zoo.task(model_id).X_test)
    with torch.no_grad():
        out_b, out_a = forward(spec, stack_params([before, after]), X.reshape(len(X), *spec.input_shape))
    flat = lambda p: torch.cat([v.flatten() for v in p.values()])  # noqa: E731
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
             & (m["seed"] != row["seed"]) & usable(m) & m["parent_id"].isna()]
    if same.empty:
        raise PeaceError(f"no model in {zoo.path} shares {model_id}'s architecture, task and epoch with another "
                         f"seed; pick two models of one architecture")
    return str(same.sort_values(["seed", "model_id"]).iloc[0]["model_id"])


def interpolation_demo(zoo: Zoo, a_id: str, b_id: str, n_points: int = 21) -> dict[str, dict]:
    """Loss/accuracy on the task's test split along the straight line from A to B, without ("naive")
    and with ("aligned") permuting B's units to match A first; each path also holds its loss
    barrier and its end point's weights (``end``)."""
    spec = zoo.spec(a_id)
    if zoo.spec(b_id) != spec:
        raise PeaceError(f"{a_id} ({spec.describe()}) and {b_id} ({zoo.spec(b_id).describe()}) have different "
                         f"architectures; weight-space interpolation needs one architecture")
    a, b = zoo.weights(a_id), zoo.weights(b_id)
    X, y = (torch.from_numpy(v) for v in zoo.task(a_id).split("test"))
    X = X.reshape(len(X), *spec.input_shape)
    paths = {}
    for name, end in (("naive", b), ("aligned", align(spec, a, b)[0])):
        paths[name] = interpolation_path(spec, a, end, X, y, n_points)
        paths[name].update(barrier=np.array(loss_barrier(paths[name])), end=end)
    return paths
