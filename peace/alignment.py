"""Permutation alignment (weight matching) and linear interpolation between two models.

``align(spec, a, b)`` permutes the hidden units of B to match A (Ainsworth et al. 2023, "Git
Re-Basin", weight matching): for each hidden layer, a linear assignment (scipy) maximising the
similarity of incoming and outgoing weights, repeated over layers until no permutation changes.
B's function is unchanged, so interpolating A and aligned B compares like with like.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .architectures import ArchSpec, check_params, stack_params
from .errors import PeaceError
from .population import evaluate
from .symmetry import Params, _column_index, hidden_sizes, transform


def _check_same(spec: ArchSpec, a: Params, b: Params) -> None:
    for name, params in (("A", a), ("B", b)):
        try:
            check_params(spec, params)
        except PeaceError as e:
            raise PeaceError(f"model {name}: {e}; alignment needs two finite models of one architecture") from None


def _unit_features(spec: ArchSpec, p: Params, i: int, perms: list[Tensor], outgoing: str = "aligned") -> Tensor:
    """Each hidden unit of layer i as one vector: incoming weights (inputs already permuted by the
    previous layer's permutation), bias, and outgoing weights: permuted by the next layer's
    permutation ("aligned"), or sorted over the next layer's units ("sorted", which needs no
    permutation, for the first pass)."""
    layer, nxt = spec.layers[i], spec.layers[i + 1]
    w_in = p[layer.weight_name]
    if i > 0:
        w_in = w_in[:, _column_index(layer, perms[i - 1])]
    parts = [w_in.reshape(layer.out_features, -1)]
    if layer.bias:
        parts.append(p[layer.bias_name].unsqueeze(1))
    w_out = p[nxt.weight_name]
    hidden_next = i + 1 < len(perms)
    if hidden_next and outgoing == "aligned":
        w_out = w_out[perms[i + 1]]
    block = nxt.in_features // layer.out_features  # > 1 at a conv -> linear flatten
    w_out = w_out.reshape(nxt.out_features, layer.out_features, block, -1)
    if hidden_next and outgoing == "sorted":
        w_out = w_out.sort(dim=0).values
    parts.append(w_out.permute(1, 0, 2, 3).reshape(layer.out_features, -1))
    return torch.cat(parts, 1)


def _match(fa: Tensor, fb: Tensor) -> tuple[Tensor, np.ndarray]:
    """Linear assignment of B's units to A's maximising the summed dot products; (perm, cost)."""
    cost = (fa.double() @ fb.double().T).numpy()
    return torch.as_tensor(linear_sum_assignment(cost, maximize=True)[1], dtype=torch.long), cost


def align(spec: ArchSpec, a: Params, b: Params, max_iter: int = 50) -> tuple[Params, list[Tensor]]:
    """Return B with hidden units permuted to best match A (same function as B), and the permutations."""
    _check_same(spec, a, b)
    sizes = hidden_sizes(spec)
    identity = [torch.arange(n) for n in sizes]
    perms = list(identity)
    for i in range(len(sizes)):
        # start layer by layer from incoming weights and the sorted outgoing ones: exact for exact
        # permutations unless two units share both, where the outgoing order alone tells them apart
        perms[i], _ = _match(_unit_features(spec, a, i, identity, outgoing="sorted"),
                             _unit_features(spec, b, i, perms, outgoing="sorted"))
    fa = [_unit_features(spec, a, i, identity) for i in range(len(sizes))]
    rng = np.random.default_rng(0)
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(sizes)):
            # B's units with its neighbours' current permutations applied to the shared axes
            new, cost = _match(fa[i], _unit_features(spec, b, i, perms))
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
