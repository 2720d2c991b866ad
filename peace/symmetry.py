"""Exact weight-space symmetries: transforms that change the weights but not the function.

Every hidden unit (neuron, or conv channel) u of layer i can be
- permuted with the other units of its layer (any activation);
- scaled by s > 0, with 1/s pushed into the next layer (positively homogeneous activations:
  relu, leaky_relu, identity);
- sign-flipped, with the flip pushed into the next layer (odd activations: tanh, identity; not
  through max pooling, since max(-x) != -max(x)).
All three are one operation here: ``W_i <- D P W_i``, ``b_i <- D P b_i``, ``W_{i+1} <- W_{i+1} P^T D^-1``
with P a permutation and D a diagonal of factors. At a conv -> linear flatten, a channel owns a
block of columns of the linear layer, and the block moves and scales with it.

A model here is ``(spec, params)``: an ``ArchSpec`` and a single-model state dict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .architectures import ACTIVATIONS, ArchSpec, Layer
from .errors import PeaceError

POSITIVE_HOMOGENEOUS = ("relu", "leaky_relu", "identity")
ODD = ("tanh", "identity")
Params = dict[str, Tensor]


def allowed(spec: ArchSpec) -> dict[str, bool]:
    """Which symmetries this architecture has (permutation always)."""
    return {"permute": True, "scale": spec.activation in POSITIVE_HOMOGENEOUS,
            "flip": spec.activation in ODD and not (spec.family != "mlp" and spec.pool == "max")}


def hidden_sizes(spec: ArchSpec) -> list[int]:
    """Number of hidden units after each non-final layer."""
    return [layer.out_features for layer in spec.layers[:-1]]


def _column_index(next_layer: Layer, perm: Tensor) -> Tensor:
    """Input columns of ``next_layer`` in the order given by a permutation of the previous layer's units."""
    if next_layer.flatten_from is None:
        return perm
    block = next_layer.in_features // next_layer.flatten_from[0]
    return (perm.unsqueeze(1) * block + torch.arange(block)).reshape(-1)


def _column_factor(next_layer: Layer, factor: Tensor) -> Tensor:
    if next_layer.flatten_from is None:
        return factor
    return factor.repeat_interleave(next_layer.in_features // next_layer.flatten_from[0])


def transform(spec: ArchSpec, params: Params, perms: list[Tensor] | None = None,
              factors: list[Tensor] | None = None) -> Params:
    """Apply per-layer unit permutations and factors (scales, signs); the function is unchanged.

    ``perms[i]`` and ``factors[i]`` act on the hidden units of layer i (``None`` entries = identity).
    The new unit j of layer i is the old unit ``perms[i][j]``, then multiplied by ``factors[i][j]``.
    Raises ``PeaceError`` if a factor is not a symmetry of the activation.
    """
    sizes = hidden_sizes(spec)
    perms = list(perms) if perms is not None else [None] * len(sizes)
    factors = list(factors) if factors is not None else [None] * len(sizes)
    if len(perms) != len(sizes) or len(factors) != len(sizes):
        raise PeaceError(f"{spec.describe()} has {len(sizes)} hidden layers; got {len(perms)} permutations "
                         f"and {len(factors)} factor vectors")
    ok = allowed(spec)
    for i, f in enumerate(factors):
        if f is None:
            continue
        if (f.abs() != 1).any() and not ok["scale"]:
            raise PeaceError(f"scaling hidden units needs a positively homogeneous activation "
                             f"({', '.join(POSITIVE_HOMOGENEOUS)}); this model uses {spec.activation}")
        if (f < 0).any() and not ok["flip"]:
            why = "max pooling" if spec.activation in ODD else f"activation {spec.activation}"
            raise PeaceError(f"sign flips need an odd activation ({', '.join(ODD)}) and no max pooling; "
                             f"this model has {why}")
        if (f == 0).any() or not torch.isfinite(f).all():
            raise PeaceError(f"factors of layer {i} must be finite and non-zero")
    out = {k: v.clone() for k, v in params.items()}
    for i, (n, perm, f) in enumerate(zip(sizes, perms, factors)):
        layer, nxt = spec.layers[i], spec.layers[i + 1]
        perm = torch.arange(n) if perm is None else perm.long()
        if sorted(perm.tolist()) != list(range(n)):
            raise PeaceError(f"perms[{i}] is not a permutation of range({n})")
        f = torch.ones(n) if f is None else f.to(out[layer.weight_name].dtype)
        w = out[layer.weight_name][perm]
        out[layer.weight_name] = w * f.reshape(-1, *[1] * (w.dim() - 1))
        if layer.bias:
            out[layer.bias_name] = out[layer.bias_name][perm] * f
        wn = out[nxt.weight_name][:, _column_index(nxt, perm)]
        out[nxt.weight_name] = wn / _column_factor(nxt, f).reshape(1, -1, *[1] * (wn.dim() - 2))
    return out


@dataclass(frozen=True)
class RandomSymmetry:
    """Which transforms ``random_symmetry`` composes; ``None`` means 'if the activation allows it'."""

    permute: bool = True
    scale: bool | None = None
    flip: bool | None = None
    log_scale_std: float = 1.0


def random_symmetry(spec: ArchSpec, params: Params, seed: int, kind: RandomSymmetry = RandomSymmetry()) -> Params:
    """A random function-preserving transform drawn with ``seed``. Asking for a transform the
    activation does not allow (``scale=True`` on tanh) raises ``PeaceError``."""
    ok = allowed(spec)
    scale = ok["scale"] if kind.scale is None else kind.scale
    flip = ok["flip"] if kind.flip is None else kind.flip
    g = torch.Generator().manual_seed(int(seed))
    perms, factors = [], []
    for n in hidden_sizes(spec):
        perms.append(torch.randperm(n, generator=g) if kind.permute else None)
        f = torch.ones(n)
        if scale:
            f = f * torch.exp(kind.log_scale_std * torch.randn(n, generator=g))
        if flip:
            f = f * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        factors.append(f if (scale or flip) else None)
    return transform(spec, params, perms, factors)


def _incoming(spec: ArchSpec, params: Params, i: int) -> Tensor:
    """(units, fan_in [+1]) incoming weights (and bias) of layer i's units."""
    layer = spec.layers[i]
    w = params[layer.weight_name].reshape(layer.out_features, -1)
    return torch.cat([w, params[layer.bias_name].unsqueeze(1)], 1) if layer.bias else w


def canonicalize(spec: ArchSpec, params: Params) -> Params:
    """The representative of the model's scaling / sign orbit; the function is unchanged.

    Scaling (relu family): every hidden unit's incoming weights (with bias) get unit norm, the scale
    pushed forward, layer by layer. Signs (odd activations): the incoming entry of largest magnitude
    is made positive. A dead unit (all-zero incoming weights and bias) outputs act(0) = 0 whatever
    its outgoing weights are, so its outgoing weights are set to zero: otherwise scaling or flipping
    it would change them freely. Permutations are not removed:
    canonicalize(transform(m)) equals canonicalize(m) up to a permutation of hidden units.
    """
    ok = allowed(spec)
    sizes = hidden_sizes(spec)
    out = {k: v.clone() for k, v in params.items()}
    for i, n in enumerate(sizes):
        inc = _incoming(spec, out, i)
        f = torch.ones(n, dtype=inc.dtype)
        if ok["scale"]:
            norm = inc.norm(dim=1)
            f = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))
        if ok["flip"]:
            top = inc.gather(1, inc.abs().argmax(1, keepdim=True)).squeeze(1)
            f = f * torch.where(top < 0, -1.0, 1.0)
        if ok["scale"] or ok["flip"]:
            out = transform(spec, out, None, [f if j == i else None for j in range(len(sizes))])
        dead = (inc == 0).all(1)
        if dead.any() and float(ACTIVATIONS[spec.activation](torch.zeros(1))) == 0.0:
            nxt = spec.layers[i + 1]
            out[nxt.weight_name][:, _column_index(nxt, torch.nonzero(dead).flatten())] = 0.0
    return out
