"""Permutation alignment (weight matching) and linear interpolation between two models.

``align(spec, a, b)`` permutes the hidden units of B to match A (Ainsworth et al. 2023, "Git
Re-Basin", weight matching): for each group of hidden units (a layer's, or a residual stream's),
a linear assignment (scipy) maximising the similarity of incoming and outgoing weights, repeated
over groups until no permutation changes. Transformers the same way over their own groups: the
residual stream, and per block the heads (with the query/key and value channels inside each), and
the MLP's units.
B's function is unchanged, so interpolating A and aligned B compares like with like.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec, check_params, evaluate, stack_params
from peace.nets.symmetry import (
    Params,
    UnitGroup,
    ViTSymmetry,
    _with_bias,
    column_index,
    transform,
    unit_groups,
    unit_rows,
    vit_stream_axis,
    vit_transform,
)
from peace.nets.transformer import geometry

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


def _matched(perm: Tensor, cost: np.ndarray) -> float:
    """The summed similarity of a matching: A's unit i with B's unit ``perm[i]``."""
    return float(cost[np.arange(len(perm)), perm.numpy()].sum())


def _match(fa: Tensor, fb: Tensor) -> tuple[Tensor, np.ndarray]:
    """Linear assignment of B's units to A's maximising the summed dot products; (perm, cost)."""
    cost = (fa.double() @ fb.double().T).numpy()
    return torch.as_tensor(linear_sum_assignment(cost, maximize=True)[1], dtype=torch.long), cost


def align(spec: ArchSpec, a: Params, b: Params, max_iter: int = 50) -> tuple[Params, list[Tensor]]:
    """Return B with hidden units permuted to best match A (same function as B), and the permutations."""
    _check_same(spec, a, b)
    if spec.family == "vit":
        return _align_vit(spec, a, b, max_iter)
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
            # only accept strict improvements (ties would make the loop cycle)
            if _matched(new, cost) > _matched(perms[i], cost) + 1e-12:
                perms[i], changed = new, True
        if not changed:
            break
    return transform(spec, b, perms, None), perms


# --- Transformers -----------------------------------------------------------------------------------------

_INTERNAL = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")  # other axis: hidden units


def _stream_features(p: Params, names: list[str], d: int, first: bool) -> Tensor:
    """Each residual-stream channel as one vector: every tensor the stream indexes, along its other axes;
    on the ``first`` pass the axes that hidden units index (qkv, proj, fc1, fc2) are sorted, so that the
    heads' and MLPs' own permutations, not found yet, do not matter."""
    parts = []
    for name in names:
        axis = vit_stream_axis(name)
        if axis is not None:
            t = p[name].movedim(axis % p[name].dim(), 0).reshape(d, -1)
            parts.append(t.sort(1).values if first and name.endswith(_INTERNAL) else t)
    return torch.cat(parts, 1)


def _head_units(p: Params, pre: str, bias: bool, heads: int) -> tuple[Tensor, Tensor]:
    """Per head, its query/key channels (query and key rows side by side) and its value channels (value
    row and the proj column it feeds), each (heads, channels per head, features)."""
    q, k, v = _with_bias(p, f"{pre}.attn.qkv", bias).split(len(p[f"{pre}.attn.proj.weight"]))
    qk, vo = torch.cat([q, k], 1), torch.cat([v, p[f"{pre}.attn.proj.weight"].T], 1)
    return qk.reshape(heads, -1, qk.shape[1]), vo.reshape(heads, -1, vo.shape[1])


def _match_heads(a: Params, b: Params, pre: str, bias: bool, heads: int) -> tuple[Tensor, Tensor, Tensor, float, float]:
    """Heads of B matched to A's, each pair scored by its best query/key and value channel matchings:
    (head permutation, query/key and value permutations inside each head, score found, score as B is)."""
    (qa, va), (qb, vb) = _head_units(a, pre, bias, heads), _head_units(b, pre, bias, heads)
    inner = [[[_match(fa[i], fb[j]) for fa, fb in ((qa, qb), (va, vb))] for j in range(heads)] for i in range(heads)]
    pair = np.array([[sum(_matched(*m) for m in row) for row in inner[i]] for i in range(heads)])
    ph = torch.as_tensor(linear_sum_assignment(pair, maximize=True)[1], dtype=torch.long)
    same = sum(_matched(torch.arange(len(c)), c) for i in range(heads) for _, c in inner[i][i])
    qk = torch.stack([inner[h][int(ph[h])][0][0] for h in range(heads)])
    vp = torch.stack([inner[h][int(ph[h])][1][0] for h in range(heads)])
    return ph, qk, vp, _matched(ph, pair), same


def _mlp_units(p: Params, pre: str, bias: bool) -> Tensor:
    """A block's MLP units: fc1 rows (with bias) and the fc2 columns they feed."""
    return torch.cat([_with_bias(p, f"{pre}.mlp.fc1", bias), p[f"{pre}.mlp.fc2.weight"].T], 1)


def _gain(perm: Tensor, cost: np.ndarray) -> float:
    """How much ``perm`` raises the matched similarity over leaving B's units where they are."""
    return _matched(perm, cost) - _matched(torch.arange(len(perm)), cost)


def _align_vit(spec: ArchSpec, a: Params, b: Params, max_iter: int) -> tuple[Params, list[Tensor]]:
    """``align`` for Transformers: coordinate ascent over the stream, then per block the heads (with the
    channels inside them) and the MLP's units, each step kept only when it raises the matched
    similarity. The permutations returned: the stream's, then per block the query/key rows, the value
    rows (both as flat indices into qkv's head-major D rows) and the MLP's units."""
    _, _, _, d, m = geometry(spec)
    heads, depth, names = spec.heads, spec.blocks[0], list(a)
    only = lambda blk, x: [x if j == blk else None for j in range(depth)]  # noqa: E731  (one block's part)
    found = [torch.arange(d)] + [torch.arange(n) for _ in range(depth) for n in (d, d, m)]
    for sweep in range(max_iter + 1):
        first, changed = sweep == 0, False
        new, cost = _match(_stream_features(a, names, d, first), _stream_features(b, names, d, first))
        if first or _gain(new, cost) > 1e-12:
            b, found[0], changed = vit_transform(spec, b, ViTSymmetry(stream=new)), found[0][new], True
        for blk in range(depth):
            pre, at = f"blocks.{blk}", 1 + 3 * blk
            ph, qk, vp, score, same = _match_heads(a, b, pre, spec.bias, heads)
            if score > same + 1e-12:
                b = vit_transform(spec, b, ViTSymmetry(heads=only(blk, ph), qk=only(blk, qk), v=only(blk, vp)))
                changed = True
                for i, inside in ((at, qk), (at + 1, vp)):
                    found[i] = found[i][(ph.unsqueeze(1) * (d // heads) + inside).reshape(-1)]
            new, cost = _match(_mlp_units(a, pre, spec.bias), _mlp_units(b, pre, spec.bias))
            if _gain(new, cost) > 1e-12:
                b, found[at + 2] = vit_transform(spec, b, ViTSymmetry(mlp=only(blk, new))), found[at + 2][new]
                changed = True
        if not changed:
            break
    return b, found


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
