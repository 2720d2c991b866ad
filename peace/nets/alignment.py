"""Permutation alignment (weight matching) and linear interpolation between two models.

``align(spec, a, b)`` permutes the hidden units of B to match A (Ainsworth et al. 2023, "Git
Re-Basin", weight matching): for each group of hidden units (a layer's, or a residual stream's),
a linear assignment (scipy) maximising the similarity of incoming and outgoing weights, repeated
over groups until no permutation changes.
B's function is unchanged, so interpolating A and aligned B compares like with like.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec, check_params, evaluate, stack_params
from peace.nets.symmetry import Params, UnitGroup, column_index, transform, unit_groups, unit_rows

__all__ = ["align", "interpolate", "interpolation_path", "loss_barrier"]


def _check_same(spec: ArchSpec, a: Params, b: Params) -> None:
    for name, params in (("A", a), ("B", b)):
        try:
            check_params(spec, params)
        except PeaceError as e:
            raise PeaceError(f"model {name}: {e}; alignment needs two finite models of one architecture") from None


def _unit_features(groups: list[UnitGroup], p: Params, i: int, perms: list[Tensor], outgoing: str = "aligned") -> Tensor:
    """Each unit of group i as one vector: incoming weights from every writer (inputs already
    permuted by their group's permutation), biases and BatchNorm tensors, and outgoing weights to every
    reader: permuted by the reader's output group ("aligned"), or sorted over its outputs ("sorted",
    which needs no permutation, for the first pass)."""
    g = groups[i]
    group_of = {t: j for j, h in enumerate(groups) for t in h.tensors}
    parts = []
    for layer in g.writers:
        w_in = p[layer.weight_name]
        if layer.src in group_of:
            w_in = w_in[:, column_index(layer, perms[group_of[layer.src]])]
        parts += [w_in.reshape(g.size, -1)] + [p[n].reshape(g.size, -1) for n in unit_rows(layer)[0][1:]]
    for layer in g.readers:
        w_out, j = p[layer.weight_name], group_of.get(layer.dst)
        if j is not None and outgoing == "aligned":
            w_out = w_out[perms[j]]
        w_out = w_out.reshape(layer.out_features, g.size, layer.in_features // g.size, -1)  # blocks > 1 at a flatten
        if j is not None and outgoing == "sorted":
            w_out = w_out.sort(dim=0).values
        parts.append(w_out.permute(1, 0, 2, 3).reshape(g.size, -1))
    return torch.cat(parts, 1)


def _match(fa: Tensor, fb: Tensor) -> tuple[Tensor, np.ndarray]:
    """Linear assignment of B's units to A's maximising the summed dot products; (perm, cost)."""
    cost = (fa.double() @ fb.double().T).numpy()
    return torch.as_tensor(linear_sum_assignment(cost, maximize=True)[1], dtype=torch.long), cost


def align(spec: ArchSpec, a: Params, b: Params, max_iter: int = 50) -> tuple[Params, list[Tensor]]:
    """Return B with hidden units permuted to best match A (same function as B), and the permutations."""
    _check_same(spec, a, b)
    if spec.family == "vit":
        raise PeaceError("weight matching (align) reads MLPs, CNNs and ResNets; Transformers (heads, query/key "
                         "pairs) are not supported yet")
    groups = unit_groups(spec)
    identity = [torch.arange(g.size) for g in groups]
    perms = list(identity)
    for i in range(len(groups)):
        # start group by group from incoming weights and the sorted outgoing ones: exact for exact
        # permutations unless two units share both, where the outgoing order alone tells them apart
        perms[i], _ = _match(_unit_features(groups, a, i, identity, outgoing="sorted"),
                             _unit_features(groups, b, i, perms, outgoing="sorted"))
    fa = [_unit_features(groups, a, i, identity) for i in range(len(groups))]
    rng = np.random.default_rng(0)
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(groups)):
            # B's units with its neighbours' current permutations applied to the shared axes
            new, cost = _match(fa[i], _unit_features(groups, b, i, perms))
            rows = np.arange(len(new))
            # only accept strict improvements (ties would make the loop cycle)
            if cost[rows, new.numpy()].sum() > cost[rows, perms[i].numpy()].sum() + 1e-12:
                perms[i], changed = new, True
        if not changed:
            break
    return transform(spec, b, perms, None), perms


def interpolate(a: Params, b: Params, alpha: float) -> Params:
    """(1 - alpha) * A + alpha * B, parameter by parameter."""
    return {k: torch.lerp(a[k], b[k], float(alpha)) for k in a}


def interpolation_path(spec: ArchSpec, a: Params, b: Params, X: Tensor, y: Tensor,
                       n_points: int = 11) -> dict[str, np.ndarray]:
    """Loss and accuracy on (X, y) at ``n_points`` evenly spaced alphas from A (0) to B (1)."""
    _check_same(spec, a, b)
    alphas = np.linspace(0, 1, n_points)
    res = evaluate(spec, stack_params([interpolate(a, b, t) for t in alphas]), X, y, spec.n_classes)
    return {"alpha": alphas, "loss": res["loss"], "acc": res["acc"]}


def loss_barrier(path: dict[str, np.ndarray]) -> float:
    """Largest rise of the path's loss above the straight line between its endpoint losses."""
    loss, alpha = path["loss"], path["alpha"]
    return float(np.max(loss - ((1 - alpha) * loss[0] + alpha * loss[-1])))
