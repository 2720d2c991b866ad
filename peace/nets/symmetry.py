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

A model here is ``(spec, params)``: an ``ArchSpec`` and a single-model state dict; ``canonicalize``
also takes a population (tensors with a leading dimension P, as ``architectures.stack_params`` makes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.architectures import ACTIVATIONS, ArchSpec, Layer
from peace.nets.transformer import geometry

__all__ = [
    "ODD", "POSITIVE_HOMOGENEOUS", "VIT_PARTS", "Params", "RandomSymmetry", "UnitGroup", "allowed",
    "canonical_factor", "canonicalize", "check_factor", "column_index", "group_labels", "hidden_sizes",
    "random_factor", "random_symmetry", "transform", "unit_groups", "unit_rows", "vit_canonicalize",
    "vit_random_symmetry", "vit_stream_axis", "vit_transform", "ViTSymmetry", "zero_at_zero"
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
    Transformers' symmetries (heads, query/key pairs) are not groups of this kind: :mod:`peace.nets.transformer`."""
    if spec.family == "vit":
        raise PeaceError("a Transformer's symmetries are not unit groups; use peace.nets.symmetry.vit_transform / "
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
    return (spec.family in ("cnn1d", "cnn2d") and "max" in (*spec.conv_pools, spec.global_pool)) or spec.stem_pool == "max"


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
    """Per-unit values (..., units) repeated for the columns each unit owns in ``next_layer``."""
    if next_layer.flatten_from is None:
        return factor
    return factor.repeat_interleave(next_layer.in_features // next_layer.flatten_from[0], dim=-1)


def _per_unit(f: Tensor, t: Tensor, axis: int) -> Tensor:
    """(P, n) values shaped to broadcast along ``axis`` of a population tensor ``t`` (P, ...), in its
    dtype (a mask stays boolean)."""
    f = f if f.dtype == torch.bool else f.to(t.dtype)
    return f.reshape(f.shape[0], *[1] * (axis - 1), f.shape[1], *[1] * (t.dim() - axis - 1))


def unit_rows(layer: Layer) -> tuple[list[str], list[str]]:
    """A writer's tensors indexed by output unit: (all of them, those a unit's factor multiplies)."""
    affine = [layer.weight_name, *([layer.bias_name] if layer.bias else [])]
    if layer.norm is None:
        return affine, affine
    n = layer.norm_names()
    return affine + list(n.values()), [n["weight"], n["bias"]]


def _apply(out: Params, group: UnitGroup, perm: Tensor | None, f: Tensor) -> None:
    """On population tensors (leading dimension P): the group's units reordered by ``perm`` (None:
    kept) and multiplied by ``f`` (P, units), the inverse pushed into the readers' columns."""
    for layer in group.writers:
        moved, scaled = unit_rows(layer)
        for name in moved if perm is not None else ():
            out[name] = out[name][:, perm]
        for name in scaled:
            out[name] = out[name] * _per_unit(f, out[name], 1)
    for layer in group.readers:
        w = out[layer.weight_name]
        w = w if perm is None else w[:, :, column_index(layer, perm)]
        out[layer.weight_name] = w / _per_unit(_column_factor(layer, f), w, 2)


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
    """Per unit (row of ``incoming``, (..., units, values)): 1 / norm where scaling is a symmetry (zero
    rows stay), times the sign that makes the entry of largest magnitude positive where flips are."""
    f = torch.ones(incoming.shape[:-1], dtype=incoming.dtype)
    if scale:
        norm = incoming.norm(dim=-1)
        f = torch.where(norm > 0, 1.0 / norm, f)
    if flip:
        top = incoming.gather(-1, incoming.abs().argmax(-1, keepdim=True)).squeeze(-1)
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
    out = {k: v.unsqueeze(0) for k, v in params.items()}
    for i, (g, perm, f) in enumerate(zip(groups, perms, factors)):
        perm = torch.arange(g.size) if perm is None else perm.long()
        if sorted(perm.tolist()) != list(range(g.size)):
            raise PeaceError(f"perms[{i}] is not a permutation of range({g.size})")
        _apply(out, g, perm, (torch.ones(g.size) if f is None else f).unsqueeze(0))
    return {k: v[0].clone() for k, v in out.items()}


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
        names = list(VIT_PARTS)
        parts = None if kind.groups is None else tuple(names[i] for i in kind.groups)
        return vit_random_symmetry(spec, params, seed, kind.permute, scale, flip, kind.log_scale_std, parts)
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
    P, parts = len(next(iter(params.values()))), []
    for layer in group.writers:
        if layer.norm is None and layer.src not in settled:
            continue
        parts += [params[name].reshape(P, group.size, -1) for name in unit_rows(layer)[1]]
    return torch.cat(parts, 2) if parts else torch.zeros(P, group.size, 0)


def _center(params: Params, layer: Layer) -> None:
    """A LayerNorm subtracts the mean over its units, so adding the same input weights (and bias) to
    every unit of the layer before it changes nothing: the representative has zero mean over units."""
    params[layer.weight_name] = params[layer.weight_name] - params[layer.weight_name].mean(1, keepdim=True)
    if layer.bias:
        params[layer.bias_name] = params[layer.bias_name] - params[layer.bias_name].mean(1, keepdim=True)


def canonicalize(spec: ArchSpec, params: Params, population: bool = False) -> Params:
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
    weights and bias; its scale and sign are left as they are. ``population``: ``params`` holds P
    models of the architecture (leading dimension P), canonicalized at once.
    """
    if spec.family == "vit":
        if population:
            raise PeaceError("Transformers are canonicalized model by model")
        return vit_canonicalize(spec, params)
    ok = allowed(spec)
    out = {k: (v if population else v.unsqueeze(0)).clone() for k, v in params.items()}
    settled = {0}
    for g in unit_groups(spec):
        for m in g.writers:
            if m.norm and m.norm_kind == "layer":
                _center(out, m)
        inc = _incoming(out, g, settled)
        if (ok["scale"] or ok["flip"]) and inc.shape[-1] == 0:
            raise PeaceError(f"{spec.describe()}: the units of tensors {list(g.tensors)} are written only by layers "
                             f"reading unsettled units; PEACE has no canonical form for this network's scaling")
        if ok["scale"] or ok["flip"]:
            _apply(out, g, None, canonical_factor(inc, ok["scale"], ok["flip"]))
        if len(g.tensors) == 1 and zero_at_zero(spec.activation):
            rows = [out[n].reshape(len(inc), g.size, -1) for m in g.writers for n in unit_rows(m)[1]]
            dead = torch.cat(rows, 2).eq(0).all(2)  # (P, units)
            for m in g.readers if dead.any() else ():
                w = out[m.weight_name]
                out[m.weight_name] = w.masked_fill(_per_unit(_column_factor(m, dead), w, 2), 0.0)
        settled.update(g.tensors)
    return out if population else {k: v[0] for k, v in out.items()}


# --- Vision Transformers (peace.nets.transformer) ---------------------------------------------------------------------------------

@dataclass
class ViTSymmetry:
    """One transform of a vit: ``stream`` (D) permutation; per block ``mlp`` permutation (M) and
    factors (scales / signs, where the activation allows), ``heads`` permutation, ``qk`` and ``v``
    permutations within each head (heads, D / heads) with nonzero factors. ``None``: identity."""

    stream: Tensor | None = None
    mlp: list[Tensor | None] | None = None
    mlp_factor: list[Tensor | None] | None = None
    heads: list[Tensor | None] | None = None
    qk: list[Tensor | None] | None = None
    qk_factor: list[Tensor | None] | None = None
    v: list[Tensor | None] | None = None
    v_factor: list[Tensor | None] | None = None


def vit_stream_axis(name: str) -> int | None:
    """The axis of a vit tensor indexed by residual-stream channel: rows of what writes the stream (patch
    embedding, proj, fc2, LayerNorms, with their biases), columns of what reads it (qkv, fc1, head), the
    last axis of the class token and position embedding; ``None`` for a tensor the stream does not index."""
    leaf = name.rpartition(".")[0]
    if name in ("cls_token", "pos_embed"):
        return -1
    if leaf.endswith(("norm1", "norm2", "attn.proj", "mlp.fc2")) or leaf == "norm" or leaf == "patch_embed.proj":
        return 0
    return 1 if name.endswith(("attn.qkv.weight", "mlp.fc1.weight")) or name == "head.weight" else None


def _at(v: list | None, b: int):
    return None if v is None else v[b]


def vit_transform(spec: ArchSpec, params: dict[str, Tensor], sym: ViTSymmetry) -> dict[str, Tensor]:
    """Apply a ``ViTSymmetry``; the function is unchanged. Factors that the activation does not allow
    (MLP) or zero factors raise ``PeaceError``."""
    c, p, t, d, m = geometry(spec)
    H, dh = spec.heads, d // spec.heads
    out = {k: v.clone() for k, v in params.items()}
    if sym.stream is not None:
        s = sym.stream.long()
        if sorted(s.tolist()) != list(range(d)):
            raise PeaceError(f"the stream permutation is not a permutation of range({d})")
        for name in out:
            axis = vit_stream_axis(name)
            if axis is not None:
                out[name] = out[name].index_select(axis % out[name].dim(), s)
    for b in range(spec.blocks[0]):
        pre = f"blocks.{b}"
        perm, f = _at(sym.mlp, b), _at(sym.mlp_factor, b)
        if perm is not None or f is not None:
            perm = torch.arange(m) if perm is None else perm.long()
            f = torch.ones(m) if f is None else f
            check_factor(f, "MLP units", pre, spec.activation, spec.activation in POSITIVE_HOMOGENEOUS,
                         spec.activation in ODD)
            out[f"{pre}.mlp.fc1.weight"] = out[f"{pre}.mlp.fc1.weight"][perm] * f.unsqueeze(1)
            if spec.bias:
                out[f"{pre}.mlp.fc1.bias"] = out[f"{pre}.mlp.fc1.bias"][perm] * f
            out[f"{pre}.mlp.fc2.weight"] = out[f"{pre}.mlp.fc2.weight"][:, perm] / f
        ph, qk, qf, vp, vf = (_at(x, b) for x in (sym.heads, sym.qk, sym.qk_factor, sym.v, sym.v_factor))
        if all(x is None for x in (ph, qk, qf, vp, vf)):
            continue
        ph = torch.arange(H) if ph is None else ph.long()
        ident = torch.arange(dh).expand(H, dh)
        qk = ident if qk is None else qk.long()
        vp = ident if vp is None else vp.long()
        qf = torch.ones(H, dh) if qf is None else qf
        vf = torch.ones(H, dh) if vf is None else vf
        for f, units in ((qf, "query/key pairs"), (vf, "value channels")):
            check_factor(f, units, pre, spec.activation, True, True)
        q_rows = (ph.unsqueeze(1) * dh + qk).reshape(-1)  # new (h, j) <- old (ph[h], qk[h, j])
        v_rows = (ph.unsqueeze(1) * dh + vp).reshape(-1)
        rows = torch.cat([q_rows, d + q_rows, 2 * d + v_rows])
        fac = torch.cat([qf.reshape(-1), 1 / qf.reshape(-1), vf.reshape(-1)])
        out[f"{pre}.attn.qkv.weight"] = out[f"{pre}.attn.qkv.weight"][rows] * fac.unsqueeze(1)
        if spec.bias:
            out[f"{pre}.attn.qkv.bias"] = out[f"{pre}.attn.qkv.bias"][rows] * fac
        out[f"{pre}.attn.proj.weight"] = out[f"{pre}.attn.proj.weight"][:, v_rows] / vf.reshape(-1)
    return out


def vit_random_symmetry(spec: ArchSpec, params: dict[str, Tensor], seed: int, permute: bool = True,
                    scale: bool = True, flip: bool = True, log_scale_std: float = 1.0,
                    parts: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """A random function-preserving transform. ``scale`` / ``flip``: query/key and value factors
    (always allowed) and MLP factors where the activation allows; ``parts``: which of "stream",
    "heads", "qk", "v", "mlp" to transform (default all)."""
    c, p, t, d, m = geometry(spec)
    H, dh, depth = spec.heads, d // spec.heads, spec.blocks[0]
    parts = set(parts or ("stream", "heads", "qk", "v", "mlp"))
    g = torch.Generator().manual_seed(int(seed))

    def perm(n: int, rows: int | None = None) -> Tensor | None:
        if not permute:
            return None
        return torch.randperm(n, generator=g) if rows is None else torch.stack([torch.randperm(n, generator=g)
                                                                                 for _ in range(rows)])

    def factor(shape: tuple[int, ...], can_scale: bool, can_flip: bool) -> Tensor:
        return random_factor(shape, g, scale and can_scale, flip and can_flip, log_scale_std)

    pick = lambda name, v: v if name in parts else None  # noqa: E731
    sym = ViTSymmetry(stream=pick("stream", perm(d)),
                   mlp=[pick("mlp", perm(m)) for _ in range(depth)],
                   mlp_factor=[pick("mlp", factor((m,), spec.activation in POSITIVE_HOMOGENEOUS, spec.activation in ODD))
                               for _ in range(depth)],
                   heads=[pick("heads", perm(H)) for _ in range(depth)],
                   qk=[pick("qk", perm(dh, H)) for _ in range(depth)],
                   qk_factor=[pick("qk", factor((H, dh), True, True)) for _ in range(depth)],
                   v=[pick("v", perm(dh, H)) for _ in range(depth)],
                   v_factor=[pick("v", factor((H, dh), True, True)) for _ in range(depth)])
    return vit_transform(spec, params, sym)


def _with_bias(params: dict[str, Tensor], name: str, bias: bool) -> Tensor:
    """A linear layer's rows with their bias as one more column: what a unit's factor multiplies."""
    w = params[f"{name}.weight"]
    return torch.cat([w, params[f"{name}.bias"].unsqueeze(1)], 1) if bias else w


def vit_canonicalize(spec: ArchSpec, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The representative of the model's scale / sign orbit (same function): per block, each query
    channel and its key channel get equal norms (weights and bias) and the query's largest entry
    positive; each value channel unit norm and its largest entry positive; MLP units as in
    ``symmetry.canonicalize`` where the activation allows. Permutations are not removed."""
    c, p, t, d, m = geometry(spec)
    H, dh = spec.heads, d // spec.heads
    out = dict(params)
    qf, vf, mf = [], [], []
    for b in range(spec.blocks[0]):
        pre = f"blocks.{b}"
        q, k, v = _with_bias(out, f"{pre}.attn.qkv", spec.bias).split(d)
        nq, nk = q.norm(dim=1), k.norm(dim=1)
        s = torch.where((nq > 0) & (nk > 0), torch.sqrt(nk / nq.clamp_min(1e-30)), torch.ones_like(nq))
        qf.append((s * canonical_factor(q, False, True)).reshape(H, dh))
        vf.append(canonical_factor(v, True, True).reshape(H, dh))
        mf.append(canonical_factor(_with_bias(out, f"{pre}.mlp.fc1", spec.bias), spec.activation in POSITIVE_HOMOGENEOUS,
                                   spec.activation in ODD))
    out = vit_transform(spec, out, ViTSymmetry(mlp_factor=mf, qk_factor=qf, v_factor=vf))
    for b in range(spec.blocks[0]):  # channels that carry nothing: what they connect to could move freely
        pre = f"blocks.{b}"
        rows = _with_bias(out, f"{pre}.attn.qkv", spec.bias)
        silent = (rows[:d] == 0).all(1) | (rows[d:2 * d] == 0).all(1)  # a query or its key is zero: no logit
        for part in (0, 1):
            _zero_rows(out, f"{pre}.attn.qkv", spec.bias, torch.nonzero(silent).flatten() + part * d)
        out[f"{pre}.attn.proj.weight"][:, (rows[2 * d:] == 0).all(1)] = 0.0  # a zero value channel
        if zero_at_zero(spec.activation):
            out[f"{pre}.mlp.fc2.weight"][:, (_with_bias(out, f"{pre}.mlp.fc1", spec.bias) == 0).all(1)] = 0.0
    return out


def _zero_rows(params: dict[str, Tensor], name: str, bias: bool, rows: Tensor) -> None:
    params[f"{name}.weight"][rows] = 0.0
    if bias:
        params[f"{name}.bias"][rows] = 0.0
