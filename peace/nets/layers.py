"""One weight layer and the operations every architecture family builds on: the activations,
normalization constants, batched convolution and normalization (``architectures``, ``resnet`` and
``transformer`` all read them; keeping them here keeps those modules free of import circles)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ACTIVATIONS", "BN_EPS", "BN_MOMENTUM", "LN_EPS", "NORM_STATS", "Layer", "conv", "conv_side_by_side",
           "normalize"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "identity": lambda x: x,
}
BN_EPS, BN_MOMENTUM, LN_EPS = 1e-5, 0.1, 1e-5  # torch's BatchNorm and LayerNorm defaults
NORM_STATS = ("running_mean", "running_var")  # BatchNorm buffers: moved with their channels, never trained


@dataclass(frozen=True)
class Layer:
    """One weight layer. ``kind`` is linear, conv1d or conv2d; ``kernel`` is () for linear layers.

    ``flatten_from`` is set on the first linear layer after convolutions: the (channels, *spatial)
    shape that was flattened into its inputs, so channel c owns a contiguous block of columns.
    ``src`` / ``dst``: the activation tensors it reads and writes (chains: index and index + 1).
    ``norm``: the name prefix of the normalization applied to its output, if any; ``norm_kind``: "batch"
    (BatchNorm: per channel over the batch, running statistics) or "layer" (LayerNorm over the
    channels of each sample and position, as ConvNeXt's channels-first LayerNorm for convolutions).
    """

    index: int
    kind: str
    in_features: int
    out_features: int
    kernel: tuple[int, ...] = ()
    bias: bool = True
    flatten_from: tuple[int, ...] | None = None
    name: str = ""
    stride: int = 1
    src: int = -1
    dst: int = -1
    norm: str | None = None
    norm_kind: str = "batch"
    padding: int | None = None  # a convolution's padding: None is 'same' (k // 2)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"layers.{self.index}")
        if self.src < 0:
            object.__setattr__(self, "src", self.index)
        if self.dst < 0:
            object.__setattr__(self, "dst", self.src + 1)

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def bias_name(self) -> str:
        return f"{self.name}.bias"

    def norm_names(self) -> dict[str, str]:
        """Leaf -> full name of its normalization's tensors (BatchNorm: with running statistics; empty without one)."""
        if self.norm is None:
            return {}
        return {k: f"{self.norm}.{k}" for k in ("weight", "bias", *(NORM_STATS if self.norm_kind == "batch" else ()))}

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features, *self.kernel)

    @property
    def fan_in(self) -> int:
        return self.in_features * math.prod(self.kernel)

    @property
    def fan_out(self) -> int:
        return self.out_features * math.prod(self.kernel)


def conv(h: Tensor, w: Tensor, b: Tensor | None, stride: int = 1, padding: int | None = None) -> Tensor:
    """P convolutions at once: h (P, B, C_in, *spatial), w (P, C_out, C_in, *kernel), b (P, C_out)."""
    return conv_side_by_side(h.transpose(0, 1), w, b, stride, padding).transpose(0, 1)


def conv_side_by_side(h: Tensor, w: Tensor, b: Tensor | None, stride: int = 1, padding: int | None = None,
                      shared: bool = False) -> Tensor:
    """P convolutions as one, on the models' channels side by side: h (B, P, C_in, *spatial) -> (B, P, C_out,
    *spatial'), a convolution grouped by model whose output is the next one's input as it lies (no copy between
    layers). ``shared``: h is (B, C_in, *spatial), read by every model: one ungrouped convolution with the P models'
    filters stacked, not P copies of h."""
    P, B = w.shape[0], h.shape[0]
    fn = F.conv1d if w.dim() == 4 else F.conv2d
    hg = h if shared else h.reshape(B, P * w.shape[2], *h.shape[3:])
    out = fn(hg, w.reshape(P * w.shape[1], *w.shape[2:]), None if b is None else b.reshape(-1), stride=stride,
             padding=w.shape[-1] // 2 if padding is None else padding, groups=1 if shared else P)
    return out.reshape(B, P, w.shape[1], *out.shape[2:])


def normalize(h: Tensor, params: dict[str, Tensor], layer: Layer, train: bool,
              seen: dict[int, Tensor] | None = None) -> Tensor:
    """The normalization after ``layer`` on h (P, B, C, *spatial), per model. BatchNorm: training
    normalizes with the batch's statistics and updates the running ones in place (momentum,
    unbiased variance: torch's rule), evaluation uses the running ones. LayerNorm: over the channels
    of each sample and position. ``seen``, when given, keeps h under the layer's index."""
    if seen is not None:
        seen[layer.index] = h
    n = layer.norm_names()
    shape = (h.shape[0], 1, h.shape[2], *[1] * (h.dim() - 3))
    if layer.norm_kind == "layer":
        mean, var = h.mean(2, keepdim=True), h.var(2, unbiased=False, keepdim=True)
        return (h - mean) * torch.rsqrt(var + LN_EPS) * params[n["weight"]].reshape(shape) + params[n["bias"]].reshape(shape)
    if train:
        dims = [1, *range(3, h.dim())]
        mean, var = h.mean(dims), h.var(dims, unbiased=False)
        with torch.no_grad():
            count = h.numel() // (h.shape[0] * h.shape[2])
            params[n["running_mean"]].lerp_(mean.detach(), BN_MOMENTUM)
            params[n["running_var"]].lerp_(var.detach() * count / max(count - 1, 1), BN_MOMENTUM)
    else:
        mean, var = params[n["running_mean"]], params[n["running_var"]]
    scale = params[n["weight"]] * torch.rsqrt(var + BN_EPS)
    return h * scale.reshape(shape) + (params[n["bias"]] - mean * scale).reshape(shape)
