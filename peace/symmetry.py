"""Exact weight-space symmetries: transforms that change the weights but not the function.

The hidden units (neurons, or conv channels) of a network fall into groups (``unit_groups``): the
units of one activation tensor, or of several tensors joined by residual additions (a ResNet's
residual stream is one group: its blocks add into the same channels). Every unit u of a group can be
- permuted with the other units of its group (any activation);
- scaled by s > 0, with 1/s pushed into the layers that read it (positively homogeneous activations:
  relu, leaky_relu, identity);
- sign-flipped, with the flip pushed into the readers (odd activations: tanh, identity; not through
  max pooling, since max(-x) != -max(x)).
All three are one operation here: ``P D`` on the output rows of every layer writing the group (its
weight and bias, or, when a BatchNorm follows it, the BatchNorm's scale and shift, and its running
statistics move with the permutation), ``D^-1 P^T`` on the input columns of every layer reading it.
At a conv -> linear flatten, a channel owns a block of columns of the linear layer, and the block
moves and scales with it.

A model here is ``(spec, params)``: an ``ArchSpec`` and a single-model state dict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .architectures import ACTIVATIONS, ArchSpec, Layer
from .errors import PeaceError

__all__ = [
    "ODD", "POSITIVE_HOMOGENEOUS", "VIT_PARTS", "Params", "RandomSymmetry", "UnitGroup", "allowed",
    "canonical_factor", "canonicalize", "check_factor", "column_index", "group_labels", "hidden_sizes",
    "random_factor", "random_symmetry", "transform", "unit_groups", "unit_rows", "zero_at_zero"
]

POSITIVE_HOMOGENEOUS = ("relu", "leaky_relu", "identity")
ODD = ("tanh", "identity")
Params = dict[str, Tensor]


@dataclass(frozen=True)
class UnitGroup:
    """Hidden activation tensors sharing one permutation; the layers writing and reading them."""

    tensors: tuple[int, ...]
    size: int
    writers: tuple[Layer, ...]
    readers: tuple[Layer, ...]


def unit_groups(spec: ArchSpec) -> list[UnitGroup]:
    """The groups of hidden units, ordered by their first tensor (for a chain: one per hidden layer).
    Transformers' symmetries (heads, query/key pairs) are not groups of this kind: :mod:`peace.transformer`."""
    if spec.family == "vit":
        raise PeaceError("a Transformer's symmetries are not unit groups; use peace.transformer.transform / "
                         "random_symmetry / canonicalize (symmetry.random_symmetry and canonicalize dispatch there)")
    hidden = range(1, len(spec.tensor_sizes) - 1)
    root = {t: t for t in hidden}

    def find(t: int) -> int:
        while root[t] != t:
            t = root[t]
        return t

    for a, b in spec.residuals:
        root[find(b)] = find(a)
    members: dict[int, list[int]] = {}
    for t in hidden:
        members.setdefault(find(t), []).append(t)
    groups = []
    for tensors in sorted(members.values()):
        ts = set(tensors)
        groups.append(UnitGroup(tuple(tensors), spec.tensor_sizes[tensors[0]],
                                tuple(m for m in spec.layers if m.dst in ts), tuple(m for m in spec.layers if m.src in ts)))
    return groups


def _has_max_pool(spec: ArchSpec) -> bool:
    return (spec.family in ("cnn1d", "cnn2d") and spec.pool == "max") or spec.stem_pool == "max"


def allowed(spec: ArchSpec) -> dict[str, bool]:
    """Which symmetries this architecture has (permutation always)."""
    if spec.family == "vit":  # query/key and value channels scale and flip whatever the MLP's activation
        return {"permute": True, "scale": True, "flip": True}
    return {"permute": True, "scale": spec.activation in POSITIVE_HOMOGENEOUS,
            "flip": spec.activation in ODD and not _has_max_pool(spec)}


def hidden_sizes(spec: ArchSpec) -> list[int]:
    """Number of units in each group (for a chain: after each non-final layer)."""
    return [g.size for g in unit_groups(spec)]


def column_index(next_layer: Layer, perm: Tensor) -> Tensor:
    """Input columns of ``next_layer`` in the order given by a permutation of the previous layer's units."""
    if next_layer.flatten_from is None:
        return perm
    block = next_layer.in_features // next_layer.flatten_from[0]
    return (perm.unsqueeze(1) * block + torch.arange(block)).reshape(-1)


def _column_factor(next_layer: Layer, factor: Tensor) -> Tensor:
    if next_layer.flatten_from is None:
        return factor
    return factor.repeat_interleave(next_layer.in_features // next_layer.flatten_from[0])


def unit_rows(layer: Layer) -> tuple[list[str], list[str]]:
    """A writer's tensors indexed by output unit: (all of them, those a unit's factor multiplies)."""
    affine = [layer.weight_name, *([layer.bias_name] if layer.bias else [])]
    if layer.norm is None:
        return affine, affine
    n = layer.norm_names()
    return affine + list(n.values()), [n["weight"], n["bias"]]


def _apply(out: Params, group: UnitGroup, perm: Tensor, f: Tensor) -> None:
    for layer in group.writers:
        moved, scaled = unit_rows(layer)
        for name in moved:
            out[name] = out[name][perm]
        for name in scaled:
            out[name] = out[name] * f.to(out[name].dtype).reshape(-1, *[1] * (out[name].dim() - 1))
    for layer in group.readers:
        w = out[layer.weight_name][:, column_index(layer, perm)]
        out[layer.weight_name] = w / _column_factor(layer, f).to(w.dtype).reshape(1, -1, *[1] * (w.dim() - 2))


def check_factor(f: Tensor, units: str, where: str, activation: str, scale: bool, flip: bool) -> None:
    """Refuse factors (of ``units`` at ``where``) that are not a symmetry: scales where ``scale`` is
    False (the activation is not positively homogeneous), signs where ``flip`` is False (the activation
    is not odd, or max pooling follows), zeros and non-finite values."""
    if (f.abs() != 1).any() and not scale:
        raise PeaceError(f"scaling {units} needs a positively homogeneous activation "
                         f"({', '.join(POSITIVE_HOMOGENEOUS)}); this model uses {activation}")
    if (f < 0).any() and not flip:
        why = "max pooling" if activation in ODD else f"activation {activation}"
        raise PeaceError(f"sign flips need an odd activation ({', '.join(ODD)}) and no max pooling; "
                         f"this model has {why}")
    if (f == 0).any() or not torch.isfinite(f).all():
        raise PeaceError(f"factors of {units} ({where}) must be finite and nonzero")


def random_factor(shape: tuple[int, ...], g: torch.Generator, scale: bool, flip: bool, log_scale_std: float) -> Tensor:
    """Random positive scales (log-normal) and / or signs, drawn from ``g`` in that order."""
    f = torch.ones(shape)
    if scale:
        f = f * torch.exp(log_scale_std * torch.randn(shape, generator=g))
    if flip:
        f = f * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return f


def canonical_factor(incoming: Tensor, scale: bool, flip: bool) -> Tensor:
    """Per unit (row of ``incoming``): 1 / norm where scaling is a symmetry (zero rows stay), times the
    sign that makes the entry of largest magnitude positive where flips are."""
    f = torch.ones(incoming.shape[0], dtype=incoming.dtype)
    if scale:
        norm = incoming.norm(dim=1)
        f = torch.where(norm > 0, 1.0 / norm, f)
    if flip:
        top = incoming.gather(1, incoming.abs().argmax(1, keepdim=True)).squeeze(1)
        f = f * torch.where(top < 0, -1.0, 1.0)
    return f


def zero_at_zero(activation: str) -> bool:
    """act(0) == 0: a unit with zero inputs outputs 0, so its outgoing weights carry nothing."""
    return float(ACTIVATIONS[activation](torch.zeros(1))) == 0.0


def transform(spec: ArchSpec, params: Params, perms: list[Tensor] | None = None,
              factors: list[Tensor] | None = None) -> Params:
    """Apply per-group unit permutations and factors (scales, signs); the function is unchanged.

    ``perms[i]`` and ``factors[i]`` act on the units of group i of ``unit_groups`` (``None`` entries =
    identity). The new unit j is the old unit ``perms[i][j]``, then multiplied by ``factors[i][j]``.
    Raises ``PeaceError`` if a factor is not a symmetry of the activation.
    """
    groups = unit_groups(spec)
    n = len(groups)
    perms = list(perms) if perms is not None else [None] * n
    factors = list(factors) if factors is not None else [None] * n
    if len(perms) != n or len(factors) != n:
        raise PeaceError(f"{spec.describe()} has {n} groups of hidden units; got {len(perms)} permutations "
                         f"and {len(factors)} factor vectors")
    ok = allowed(spec)
    for i, f in enumerate(factors):
        if f is not None:
            check_factor(f, "hidden units", f"group {i}", spec.activation, ok["scale"], ok["flip"])
    out = {k: v.clone() for k, v in params.items()}
    for i, (g, perm, f) in enumerate(zip(groups, perms, factors)):
        perm = torch.arange(g.size) if perm is None else perm.long()
        if sorted(perm.tolist()) != list(range(g.size)):
            raise PeaceError(f"perms[{i}] is not a permutation of range({g.size})")
        _apply(out, g, perm, torch.ones(g.size) if f is None else f)
    return out


@dataclass(frozen=True)
class RandomSymmetry:
    """Which transforms ``random_symmetry`` composes; ``None`` means 'if the activation allows it'."""

    permute: bool = True
    scale: bool | None = None
    flip: bool | None = None
    log_scale_std: float = 1.0
    groups: tuple[int, ...] | None = None  # indices into unit_groups(spec) to transform; None: all of them


VIT_PARTS = {"stream": "residual stream (every LayerNorm, qkv, proj, fc1, fc2, head)",
             "heads": "whole attention heads", "qk": "query/key channel pairs inside each head",
             "v": "value channels inside each head", "mlp": "MLP hidden units"}


def group_labels(spec: ArchSpec) -> list[str]:
    """A readable name for each of ``unit_groups(spec)``, e.g. 'residual stream (conv1, layer1.0.conv2, ...): 8 units'
    (for a Transformer: its kinds of symmetry, ``VIT_PARTS``)."""
    if spec.family == "vit":
        return list(VIT_PARTS.values())
    out = []
    for g in unit_groups(spec):
        writers = ", ".join(m.name for m in g.writers)
        what = f"residual stream ({writers})" if len(g.tensors) > 1 else f"outputs of {writers}"
        out.append(f"{what}: {g.size} units")
    return out


def random_symmetry(spec: ArchSpec, params: Params, seed: int, kind: RandomSymmetry = RandomSymmetry()) -> Params:
    """A random function-preserving transform drawn with ``seed``. Asking for a transform the
    activation does not allow (``scale=True`` on tanh) raises ``PeaceError``."""
    ok = allowed(spec)
    scale = ok["scale"] if kind.scale is None else kind.scale
    flip = ok["flip"] if kind.flip is None else kind.flip
    if spec.family == "vit":
        from .transformer import random_symmetry as vit_symmetry

        names = list(VIT_PARTS)
        parts = None if kind.groups is None else tuple(names[i] for i in kind.groups)
        return vit_symmetry(spec, params, seed, kind.permute, scale, flip, kind.log_scale_std, parts)
    sizes = hidden_sizes(spec)
    chosen = set(range(len(sizes)) if kind.groups is None else kind.groups)
    if not chosen <= set(range(len(sizes))):
        raise PeaceError(f"{spec.describe()} has {len(sizes)} groups of hidden units; got groups {sorted(chosen)}")
    g = torch.Generator().manual_seed(int(seed))
    perms, factors = [], []
    for i, n in enumerate(sizes):
        perms.append(torch.randperm(n, generator=g) if kind.permute else None)
        factors.append(random_factor((n,), g, scale, flip, kind.log_scale_std) if (scale or flip) else None)
        if i not in chosen:
            perms[-1] = factors[-1] = None
    return transform(spec, params, perms, factors)


def _incoming(params: Params, group: UnitGroup, settled: set[int]) -> Tensor:
    """(units, values) that a unit's factor multiplies, from the writers whose inputs are settled
    (the network's input, or groups already canonical): for a writer followed by a BatchNorm, the
    BatchNorm's scale and shift; otherwise its incoming weights and bias."""
    parts = []
    for layer in group.writers:
        if layer.norm is None and layer.src not in settled:
            continue
        parts += [params[name].reshape(group.size, -1) for name in unit_rows(layer)[1]]
    return torch.cat(parts, 1) if parts else torch.zeros(group.size, 0)


def _center(params: Params, layer: Layer) -> None:
    """A LayerNorm subtracts the mean over its units, so adding the same input weights (and bias) to
    every unit of the layer before it changes nothing: the representative has zero mean over units."""
    params[layer.weight_name] = params[layer.weight_name] - params[layer.weight_name].mean(0, keepdim=True)
    if layer.bias:
        params[layer.bias_name] = params[layer.bias_name] - params[layer.bias_name].mean()


def canonicalize(spec: ArchSpec, params: Params) -> Params:
    """The representative of the model's scaling / sign orbit; the function is unchanged.

    Groups are settled in order. Scaling (relu family): every unit's incoming values (``_incoming``:
    weights and bias, or its BatchNorm's scale and shift) get unit norm, the scale pushed into its
    readers. Signs (odd activations): the incoming entry of largest magnitude is made positive. Only
    writers reading settled tensors count, so a unit's values no longer depend on the other groups'
    factors (a residual stream is settled by its stem and shortcut projections, whose inputs come
    first). A dead unit (no residual input, all-zero incoming values) outputs act(0) = 0 whatever its
    outgoing weights are, so those are set to zero: otherwise scaling or flipping it would change them
    freely. Before a LayerNorm, the layer's weights and bias get zero mean over its units (the
    LayerNorm's own symmetry: it ignores what every unit shares). Permutations are not removed:
    canonicalize(transform(m)) equals canonicalize(m) up to a permutation of hidden units. One case has no canonical form here: a residual-stream unit of a
    network without BatchNorm whose settled writers (stem, shortcut projection) give it all-zero
    weights and bias; its scale and sign are left as they are.
    """
    if spec.family == "vit":
        from .transformer import canonicalize as vit_canonicalize

        return vit_canonicalize(spec, params)
    ok = allowed(spec)
    out = {k: v.clone() for k, v in params.items()}
    settled = {0}
    for g in unit_groups(spec):
        for m in g.writers:
            if m.norm and m.norm_kind == "layer":
                _center(out, m)
        inc = _incoming(out, g, settled)
        if (ok["scale"] or ok["flip"]) and inc.shape[1] == 0:
            raise PeaceError(f"{spec.describe()}: the units of tensors {list(g.tensors)} are written only by layers "
                             f"reading unsettled units; PEACE has no canonical form for this network's scaling")
        if ok["scale"] or ok["flip"]:
            _apply(out, g, torch.arange(g.size), canonical_factor(inc, ok["scale"], ok["flip"]))
        if len(g.tensors) == 1 and zero_at_zero(spec.activation):
            full = torch.cat([out[n].reshape(g.size, -1) for m in g.writers for n in unit_rows(m)[1]], 1)
            dead = torch.nonzero((full == 0).all(1)).flatten()
            for m in g.readers:
                out[m.weight_name][:, column_index(m, dead)] = 0.0
        settled.update(g.tensors)
    return out
