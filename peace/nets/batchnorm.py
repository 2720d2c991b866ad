"""BatchNorm algebra: folding a BatchNorm into the layer before it (the eval-mode function, which is what
PEACE's graphs and decoder read), writing folded weights back with BatchNorms, and setting a BatchNorm's
statistics from data without changing what the model computes."""
from __future__ import annotations

import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec, forward
from peace.nets.layers import BN_EPS

__all__ = ["calibrate_norms", "fold_batchnorm", "fold_norms", "folded_spec", "unfold_norms"]


def fold_batchnorm(w: Tensor, b: Tensor | None, bn: dict[str, Tensor], eps: float, name: str) -> tuple[Tensor, Tensor]:
    """Weight and bias of a Linear / Conv layer with the eval-mode BatchNorm after it folded in: the same
    function at inference. ``bn`` holds running_mean, running_var and, when affine, weight and bias."""
    mean, var = bn["running_mean"].float(), bn["running_var"].float()
    if mean.dim() < 1 or mean.shape != w.shape[:mean.dim()] or var.shape != mean.shape or (var < 0).any():
        raise PeaceError(f"BatchNorm {name!r}: running statistics shaped {tuple(mean.shape)} / {tuple(var.shape)} "
                         f"(or negative variances) do not fit the {w.shape[0]} outputs of the layer before it")
    gamma, beta = bn.get("weight", torch.ones_like(mean)).float(), bn.get("bias", torch.zeros_like(mean)).float()
    scale = gamma / torch.sqrt(var + eps)
    bias = (b if b is not None else torch.zeros_like(mean)) - mean
    return w * scale.reshape(*scale.shape, *[1] * (w.dim() - scale.dim())), bias * scale + beta


def folded_spec(spec: ArchSpec) -> ArchSpec:
    """The same architecture without BatchNorm and with biases: what ``fold_norms`` returns (a
    LayerNorm, which depends on each sample, stays)."""
    if spec.norm != "batch":
        return spec
    return ArchSpec.from_dict({**spec.to_dict(), "norm": "none", "bias": True})


def fold_norms(spec: ArchSpec, params: dict[str, Tensor]) -> tuple[ArchSpec, dict[str, Tensor]]:
    """The eval-mode function with every BatchNorm folded into the layer before it: the network PEACE
    graphs (``fold_batchnorm``). A spec without BatchNorm is returned as it is. Works on one model's
    parameters and on a population's (tensors with a leading dimension P)."""
    if spec.norm != "batch":
        return spec, params
    out: dict[str, Tensor] = {}
    for layer in spec.layers:
        w = params[layer.weight_name]
        lead = w.shape[:w.dim() - len(layer.weight_shape)]
        b = params[layer.bias_name] if layer.bias else torch.zeros(*lead, layer.out_features, dtype=w.dtype)
        if layer.norm:
            w, b = fold_batchnorm(w, b, {leaf: params[name] for leaf, name in layer.norm_names().items()}, BN_EPS,
                                  layer.norm)
        out[layer.weight_name], out[layer.bias_name] = w, b
    return folded_spec(spec), out


def unfold_norms(spec: ArchSpec, folded: dict[str, Tensor]) -> dict[str, Tensor]:
    """Parameters of ``spec`` (with its BatchNorms) computing, in eval mode, what ``folded`` (parameters of
    ``folded_spec(spec)``) computes: each BatchNorm neutral (running mean 0, variance 1, scale sqrt(1 + eps),
    so that ``fold_norms`` gives ``folded`` back exactly) and shifted by the folded bias. Training renormalizes
    by batch statistics, as it does for any BatchNorm model. One model's parameters or a population's."""
    if spec.norm != "batch":
        return folded
    out: dict[str, Tensor] = {}
    for layer in spec.layers:
        w, b = folded[layer.weight_name], folded[layer.bias_name]
        out[layer.weight_name] = w
        if not layer.norm:
            if layer.bias:  # else zero in every folded model of ``spec``
                out[layer.bias_name] = b
            continue
        if layer.bias:
            out[layer.bias_name] = torch.zeros_like(b)
        names = layer.norm_names()
        out[names["running_mean"]], out[names["running_var"]] = torch.zeros_like(b), torch.ones_like(b)
        scale = torch.sqrt(torch.ones_like(b) + BN_EPS)  # fold_norms' own arithmetic: it divides back to 1 exactly
        out[names["weight"]], out[names["bias"]] = scale, b
    return out


def calibrate_norms(spec: ArchSpec, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """A population's parameters (leading dimension P) with each BatchNorm's running statistics set to
    those of its inputs on ``x``, and its scale and shift changed so that evaluation computes exactly what
    it did: training, which normalizes by batch statistics, then starts from the function the weights
    compute (neutral statistics, as ``unfold_norms`` writes, would rescale every channel at the first step)."""
    if spec.norm != "batch":
        return params
    seen: dict[int, Tensor] = {}
    with torch.no_grad():
        forward(spec, params, x, seen=seen)
    out = dict(params)
    for layer in spec.layers:
        if not layer.norm:
            continue
        h, n = seen[layer.index], layer.norm_names()
        dims = [1, *range(3, h.dim())]
        mean, var = h.mean(dims), h.var(dims, unbiased=False)
        scale = params[n["weight"]] * torch.rsqrt(params[n["running_var"]] + BN_EPS)  # eval: h * scale + shift
        shift = params[n["bias"]] - params[n["running_mean"]] * scale
        out[n["running_mean"]], out[n["running_var"]] = mean, var
        out[n["weight"]], out[n["bias"]] = scale * torch.sqrt(var + BN_EPS), shift + mean * scale
    return out
