"""Architecture specs (MLP, 1-D CNN, 2-D CNN, residual CNN) and their forward pass, batched over a population.

MLPs and CNNs are chains of layers. CNNs are ``conv -> act -> pool`` blocks (``same`` padding,
stride 1), a flatten, then linear layers; MLPs flatten the input and stack linear layers. Every
layer but the last is followed by the activation. Parameter names follow ``PeaceNet``'s state dict
(``layers.{i}.weight`` / ``layers.{i}.bias``) so zoo weights load into an ordinary ``nn.Module``.
Residual CNNs (family ``resnet``, :mod:`peace.nets.resnet`) use torchvision's names instead.

Every spec also describes its data flow, which the symmetries and the neural graph read: numbered
activation tensors (0: the input, last: the logits), each layer reading one (``Layer.src``) and
writing one (``Layer.dst``), and ``residuals``: identity additions from one tensor into another.

``forward`` runs P models of the same spec at once: every parameter carries a leading population
dimension P, linear layers become ``bmm`` and convolutions one grouped convolution.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peace.core.errors import PeaceError, unknown
from peace.nets import resnet, transformer
from peace.nets.layers import ACTIVATIONS, BN_EPS, BN_MOMENTUM, LN_EPS, NORM_STATS, Layer, conv, conv_side_by_side, normalize

__all__ = [
    "ACTIVATIONS", "BN_EPS", "BN_MOMENTUM", "FAMILIES", "FAMILY_KEYS", "LN_EPS", "NORMS", "NORM_STATS", "POOLS",
    "ArchSpec", "ChannelLayerNorm", "Layer", "PeaceNet", "build_module", "check_params", "conv", "evaluate", "forward",
    "hidden_shapes", "is_buffer", "load_weights", "nll", "normalize", "predict", "stack_params", "unstack_params"
]

FAMILIES = ("mlp", "cnn1d", "cnn2d", "resnet", "vit")
POOLS = ("avg", "max", "none", "cls")
NORMS = ("none", "batch", "layer")
PADDINGS = ("same", "valid")
CHAINS = ("cnn1d", "cnn2d")
FAMILY_KEYS = {"blocks": ("resnet", "vit"), "stem_kernel": ("resnet",), "stem_stride": ("resnet",),
               "stem_pool": ("resnet",), "heads": ("vit",), "padding": CHAINS, "kernels": CHAINS,
               "pools": CHAINS, "strides": CHAINS, "global_pool": CHAINS}  # fields only some families use
OPTIONAL_KEYS = ("padding", "kernels", "pools", "strides", "global_pool")  # left out of to_dict at their defaults:
# specs written before stay as they were


@dataclass(frozen=True)
class ArchSpec:
    """A network architecture.

    ``hidden`` holds the MLP's hidden widths, the CNN's conv channels, a ResNet's stage widths, or a
    Transformer's width (one value); ``fc_hidden`` holds a CNN's hidden linear widths after the
    flatten, or a Transformer's MLP width. ``input_shape`` is one sample's shape. ``norm``: "none",
    "batch" (BatchNorm) or, for MLPs and CNNs, "layer" (LayerNorm) after every hidden layer, before its
    activation. ResNets: ``blocks`` per stage, and the stem (``stem_kernel``, ``stem_stride``,
    ``stem_pool`` "max" for torchvision's 3x3/2 max pool). Vision / sequence Transformers (family
    ``vit``, :mod:`peace.nets.transformer`): ``kernel_size`` is the patch size, ``blocks`` the depth,
    ``heads`` the attention heads, ``pool`` "cls" (class token) or "avg" (mean over tokens). CNNs made
    elsewhere: ``kernels`` (one size per conv, else ``kernel_size`` for all), ``pools`` (one pooling per
    conv, else ``pool`` for all), ``padding`` "valid" (unpadded convolutions; default "same", k // 2),
    ``strides`` (one per conv; default 1) and ``global_pool`` "avg" or "max" over the last block's positions
    before the flatten (torch's ``AdaptiveAvgPool2d(1)``).
    """

    family: str
    input_shape: tuple[int, ...]
    n_classes: int
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    bias: bool = True
    fc_hidden: tuple[int, ...] = ()
    kernel_size: int = 3
    pool: str = "avg"
    blocks: tuple[int, ...] = ()
    norm: str = "none"
    stem_kernel: int = 3
    stem_stride: int = 1
    stem_pool: str = "none"
    heads: int = 1
    padding: str = "same"
    kernels: tuple[int, ...] = ()
    pools: tuple[str, ...] = ()
    strides: tuple[int, ...] = ()
    global_pool: str = "none"
    layers: tuple[Layer, ...] = field(init=False, repr=False, compare=False)
    extra_shapes: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    tensor_sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    residuals: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "fc_hidden", tuple(int(h) for h in self.fc_hidden))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "kernels", tuple(int(k) for k in self.kernels))
        object.__setattr__(self, "pools", tuple(str(p) for p in self.pools))
        object.__setattr__(self, "strides", tuple(int(t) for t in self.strides))
        if self.family not in FAMILIES:
            raise unknown("architecture family", self.family, FAMILIES)
        if self.activation not in ACTIVATIONS:
            raise unknown("activation", self.activation, list(ACTIVATIONS))
        if self.pool not in POOLS:
            raise unknown("pool", self.pool, POOLS)
        if self.n_classes < 1 or any(h < 1 for h in self.hidden + self.fc_hidden):
            raise PeaceError(f"layer widths and n_classes must be positive, got hidden={self.hidden}, "
                             f"fc_hidden={self.fc_hidden}, n_classes={self.n_classes}")
        if self.family == "mlp" and self.fc_hidden:
            raise PeaceError("fc_hidden is for CNNs; an MLP lists all its widths in hidden")
        if self.norm not in NORMS:
            raise unknown("normalization", self.norm, NORMS)
        if self.padding not in PADDINGS:
            raise unknown("padding", self.padding, PADDINGS)
        for p in self.pools:
            if p not in POOLS[:3]:
                raise unknown("pool in pools", p, POOLS[:3])
        if self.global_pool not in POOLS[:3]:
            raise unknown("global_pool", self.global_pool, POOLS[:3])
        extra = [k for k, fams in FAMILY_KEYS.items()
                 if self.family not in fams and getattr(self, k) != ArchSpec.__dataclass_fields__[k].default]
        if extra:
            raise PeaceError(f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} not for a {self.family} "
                             f"(got {', '.join(f'{k}={getattr(self, k)!r} (for {FAMILY_KEYS[k]})' for k in extra)})")
        if self.pool == "cls" and self.family != "vit":
            raise PeaceError("pool 'cls' (a class token) is for family 'vit' only")
        object.__setattr__(self, "extra_shapes", {})
        if self.family == "resnet":
            layers, sizes, residuals = resnet.build_layers(self)
        elif self.family == "vit":
            layers, sizes, residuals, extras = transformer.build_layers(self)
            object.__setattr__(self, "extra_shapes", extras)
        else:
            layers = self._build_layers()
            if self.norm != "none":  # a normalization after every hidden layer, before its activation
                layers = tuple(replace(m, norm=f"norms.{m.index}", norm_kind=self.norm) for m in layers[:-1]) + layers[-1:]
            sizes, residuals = (layers[0].in_features, *(layer.out_features for layer in layers)), ()
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "tensor_sizes", tuple(sizes))
        object.__setattr__(self, "residuals", tuple(residuals))

    def _build_layers(self) -> tuple[Layer, ...]:
        layers: list[Layer] = []
        if self.family == "mlp":
            widths = [math.prod(self.input_shape), *self.hidden, self.n_classes]
            for i in range(len(widths) - 1):
                layers.append(Layer(i, "linear", widths[i], widths[i + 1], bias=self.bias))
            return tuple(layers)
        ndim = 1 if self.family == "cnn1d" else 2
        if len(self.input_shape) != ndim + 1:
            want = "(channels, length)" if ndim == 1 else "(channels, height, width)"
            raise PeaceError(f"{self.family} needs inputs shaped {want}, but the task's samples are "
                             f"{self.input_shape}; use family 'mlp' for this task")
        if not self.hidden:
            raise PeaceError(f"a {self.family} needs at least one conv layer in hidden")
        for key in ("kernels", "pools", "strides"):
            if getattr(self, key) and len(getattr(self, key)) != len(self.hidden):
                raise PeaceError(f"{key} names one value per conv layer: {len(self.hidden)} (hidden={list(self.hidden)}), "
                                 f"got {list(getattr(self, key))}")
        same = self.padding == "same"
        for k in self.conv_kernels:
            if k < 1 or (same and k % 2 == 0):
                raise PeaceError(f"kernel sizes must be positive{' and odd (same padding)' if same else ''}, got {k}")
        if any(t < 1 for t in self.conv_strides):
            raise PeaceError(f"strides must be positive, got {list(self.strides)}")
        channels, sizes = self.input_shape[0], self.conv_output_sizes()
        for i, (c, k, t) in enumerate(zip(self.hidden, self.conv_kernels, self.conv_strides)):
            layers.append(Layer(i, f"conv{ndim}d", channels, c, (k,) * ndim, self.bias, stride=t,
                                padding=None if same else 0))
            channels = c
            if min(sizes[i]) < 1:
                raise PeaceError(f"impossible shape: the conv layers shrink an input of {self.input_shape[1:]} to "
                                 f"nothing after layer {i}; use fewer conv layers, 'same' padding or less pooling")
        spatial = sizes[-1]
        widths = [channels * math.prod(spatial), *self.fc_hidden, self.n_classes]
        for j in range(len(widths) - 1):
            layers.append(Layer(len(layers), "linear", widths[j], widths[j + 1], bias=self.bias,
                                flatten_from=(channels, *spatial) if j == 0 else None))
        return tuple(layers)

    @property
    def conv_kernels(self) -> tuple[int, ...]:
        """A CNN's kernel size per conv layer."""
        return self.kernels or (self.kernel_size,) * len(self.hidden)

    @property
    def conv_pools(self) -> tuple[str, ...]:
        """A CNN's pooling after each conv layer (after its activation)."""
        return self.pools or (self.pool,) * len(self.hidden)

    @property
    def conv_strides(self) -> tuple[int, ...]:
        """A CNN's stride per conv layer."""
        return self.strides or (1,) * len(self.hidden)

    def conv_output_sizes(self) -> list[tuple[int, ...]]:
        """A CNN's spatial size after each conv layer and its pooling (the last: after the global pool too)."""
        out, spatial = [], tuple(self.input_shape[1:])
        for k, t, pool in zip(self.conv_kernels, self.conv_strides, self.conv_pools):
            pad = k // 2 if self.padding == "same" else 0
            spatial = tuple((s + 2 * pad - k) // t + 1 for s in spatial)
            spatial = tuple(s // 2 for s in spatial) if pool != "none" else spatial
            out.append(spatial)
        if out and self.global_pool != "none" and min(spatial) >= 1:  # an impossible shape stays one
            out[-1] = (1,) * len(spatial)
        return out

    # --- descriptions ---------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter (and BatchNorm buffer) names and shapes, in layer order."""
        shapes = {}
        for layer in self.layers:
            shapes[layer.weight_name] = layer.weight_shape
            if layer.bias:
                shapes[layer.bias_name] = (layer.out_features,)
            for name in layer.norm_names().values():
                shapes[name] = (layer.out_features,)
        return {**shapes, **self.extra_shapes}

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    @property
    def depth(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The constructor's arguments, without the keys of other families (and a chain's ``norm`` when
        it has none), so specs, run ids and manifests written before those keys existed stay the same."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__ if self.__dataclass_fields__[f].init}
        for k, fams in FAMILY_KEYS.items():
            if self.family not in fams:
                d.pop(k)
        if self.family not in ("resnet", "vit") and self.norm == "none":
            d.pop("norm")
        for k in OPTIONAL_KEYS:
            if k in d and getattr(self, k) == ArchSpec.__dataclass_fields__[k].default:
                d.pop(k)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        valid = [f for f in cls.__dataclass_fields__ if cls.__dataclass_fields__[f].init]
        bad = sorted(set(d) - set(valid))
        if bad:
            raise unknown("architecture key", bad[0], valid)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def describe(self) -> str:
        """Short human-readable name, e.g. ``mlp 16-8-4 tanh nobias``."""
        if self.family == "mlp":
            s = "-".join(str(w) for w in [self.layers[0].in_features, *self.hidden, self.n_classes])
        elif self.family == "vit":
            s = f"d{self.hidden[0]}/h{self.heads}/b{self.blocks[0]}/m{self.fc_hidden[0]}/p{self.kernel_size}/{self.pool}"
        elif self.family == "resnet":
            s = "c" + "-".join(map(str, self.hidden)) + "/b" + "-".join(map(str, self.blocks))
            s += f"/k{self.kernel_size}"
        else:
            s = "c" + "-".join(map(str, self.hidden)) + ("/" + "-".join(map(str, self.fc_hidden)) if self.fc_hidden else "")
            s += f"/k{'-'.join(map(str, self.kernels)) or self.kernel_size}/{'-'.join(self.pools) or self.pool}"
            s += "/valid" if self.padding == "valid" else ""
            s += f"/s{'-'.join(map(str, self.strides))}" if self.strides else ""
            s += f"/global-{self.global_pool}" if self.global_pool != "none" else ""
        return f"{self.family} {s} {self.activation}" + ("" if self.bias else " nobias") + {"none": "", "batch": " bn", "layer": " ln"}[self.norm]


# --- forward ------------------------------------------------------------------------------------

def _pool(h: Tensor, kind: str, ndim: int) -> Tensor:
    if kind == "none":
        return h
    fn = {("avg", 1): F.avg_pool1d, ("max", 1): F.max_pool1d, ("avg", 2): F.avg_pool2d, ("max", 2): F.max_pool2d}
    return fn[(kind, ndim)](h, 2)


def _global_pool(h: Tensor, kind: str) -> Tensor:
    """(N, C, *spatial) -> (N, C, 1, ...): the mean or max over positions (``ArchSpec.global_pool``)."""
    if kind == "none":
        return h
    dims = tuple(range(2, h.dim()))
    return h.mean(dims, keepdim=True) if kind == "avg" else h.amax(dims, keepdim=True)


def forward(spec: ArchSpec, params: dict[str, Tensor], x: Tensor,
            dropout_masks: Sequence[Tensor | None] | None = None, train: bool = False,
            seen: dict[int, Tensor] | None = None) -> Tensor:
    """Logits of P models at once.

    ``params[name]`` has shape (P, *shape); ``x`` is (P, B, *input_shape) or (B, *input_shape)
    (shared by all models). ``dropout_masks[i]``, if given, multiplies the activations after layer
    i (already scaled by 1/(1-p)). ``train``: BatchNorm layers use and update batch statistics.
    ``seen``, when given, receives each normalization's input under its layer's index.
    Returns (P, B, n_classes).
    """
    P = params[spec.layers[0].weight_name].shape[0]
    shared = x.dim() == len(spec.input_shape) + 1  # every model reads the same inputs: the first layer reads them once
    if spec.family in ("resnet", "vit"):
        if dropout_masks is not None:
            raise PeaceError(f"dropout is not supported in a {spec.family}; train it with dropout 0")
        x = x.unsqueeze(0).expand(P, *x.shape) if shared else x
        if spec.family == "vit":
            return transformer.forward(spec, params, x)
        return resnet.forward(spec, params, x, train, seen)
    B = x.shape[0 if shared else 1]
    act = ACTIVATIONS[spec.activation]
    h, side = (x if shared else x.transpose(0, 1)), True  # side: h is (B, P, ...), else (P, B, ...)
    n = len(spec.layers)
    for layer in spec.layers:
        w = params[layer.weight_name]
        b = params[layer.bias_name] if layer.bias else None
        if layer.kind == "linear" and shared:  # (B, in) @ (P, in, out): no copy of the inputs per model
            h = torch.matmul(h.reshape(B, -1), w.transpose(1, 2))
            h = h if b is None else h + b.unsqueeze(1)
        elif layer.kind == "linear":
            h = (h.transpose(0, 1) if side else h).reshape(P, B, -1)
            h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        else:  # convolutions keep the models side by side, (B, P, C, *spatial): one grouped convolution each
            h = conv_side_by_side(h, w, b, layer.stride, layer.padding, shared)
        side, shared = layer.kind != "linear", False
        if layer.norm:
            h = normalize(h.transpose(0, 1), params, layer, train, seen).transpose(0, 1) if side else \
                normalize(h, params, layer, train, seen)
        if layer.index < n - 1:
            h = act(h)
            if layer.kind != "linear":
                h = _pool(h.reshape(B * P, *h.shape[2:]), spec.conv_pools[layer.index], len(layer.kernel))
                if layer.index == len(spec.hidden) - 1:
                    h = _global_pool(h, spec.global_pool)
                h = h.reshape(B, P, *h.shape[1:])
            if dropout_masks is not None and dropout_masks[layer.index] is not None:
                h = h * (dropout_masks[layer.index].transpose(0, 1) if side else dropout_masks[layer.index])
    return h


class PeaceNet(nn.Module):
    """The single-model ``nn.Module`` of an ``ArchSpec``: same parameters, same function."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        mods = []
        for layer in spec.layers:
            if layer.kind == "linear":
                mods.append(nn.Linear(layer.in_features, layer.out_features, bias=layer.bias))
            else:
                conv = nn.Conv1d if layer.kind == "conv1d" else nn.Conv2d
                mods.append(conv(layer.in_features, layer.out_features, layer.kernel[0], stride=layer.stride,
                                 padding=layer.kernel[0] // 2 if layer.padding is None else layer.padding, bias=layer.bias))
        self.layers = nn.ModuleList(mods)
        if spec.norm == "batch":
            bn = {"linear": nn.BatchNorm1d, "conv1d": nn.BatchNorm1d, "conv2d": nn.BatchNorm2d}
            self.norms = nn.ModuleList(bn[m.kind](m.out_features, eps=BN_EPS, momentum=BN_MOMENTUM)
                                       for m in spec.layers[:-1])
        elif spec.norm == "layer":
            self.norms = nn.ModuleList(ChannelLayerNorm(m.out_features) for m in spec.layers[:-1])

    def forward(self, x: Tensor, dropout_masks: Sequence[Tensor | None] | None = None) -> Tensor:
        act = ACTIVATIONS[self.spec.activation]
        n = len(self.layers)
        for layer, mod in zip(self.spec.layers, self.layers):
            if layer.kind == "linear":
                x = x.flatten(1)
            x = mod(x)
            if layer.norm:
                x = self.norms[layer.index](x)
            if layer.index < n - 1:
                x = act(x)
                if layer.kind != "linear":
                    x = _pool(x, self.spec.conv_pools[layer.index], len(layer.kernel))
                    if layer.index == len(self.spec.hidden) - 1:
                        x = _global_pool(x, self.spec.global_pool)
                if dropout_masks is not None and dropout_masks[layer.index] is not None:
                    x = x * dropout_masks[layer.index]
        return x


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over dimension 1 (channels), at every position of (B, C, *spatial) inputs."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def build_module(spec: ArchSpec) -> nn.Module:
    """The single-model ``nn.Module`` of any spec: a ``PeaceNet``, a torchvision-style ``ResNet`` or a
    timm-style ``ViT``."""
    if spec.family == "resnet":
        return resnet.ResNet(spec)
    if spec.family == "vit":
        return transformer.ViT(spec)
    return PeaceNet(spec)


def is_buffer(name: str) -> bool:
    """BatchNorm running statistics: updated by forward passes in training, never by the optimizer,
    and never perturbed as if they were weights."""
    return name.rpartition(".")[2] in NORM_STATS


def load_weights(module: nn.Module, params: dict[str, Tensor]) -> nn.Module:
    """Load a PEACE state dict into ``build_module``'s module (BatchNorm step counters are no weights)."""
    missing, unexpected = module.load_state_dict(params, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise PeaceError(f"the weights do not fit the module: missing {missing}, unexpected {unexpected}")
    return module


def hidden_shapes(spec: ArchSpec, batch: int) -> list[tuple[int, ...]]:
    """Shape of the activations after each non-final layer (after pooling), for dropout masks."""
    if spec.family in ("resnet", "vit"):
        raise PeaceError(f"dropout is not supported in a {spec.family}; train it with dropout 0")
    sizes = spec.conv_output_sizes() if spec.family in CHAINS else []
    return [(batch, layer.out_features) if layer.kind == "linear" else (batch, layer.out_features, *sizes[layer.index])
            for layer in spec.layers[:-1]]


def check_params(spec: ArchSpec, params: dict[str, Tensor], population: bool = False) -> None:
    """Refuse parameters that do not fit ``spec`` or hold NaN/Inf, naming the tensor. ``population``:
    every tensor has a leading dimension P (the same for all)."""
    shapes = spec.param_shapes()
    if population:
        p = {t.shape[0] if t.dim() else None for t in params.values()}
        if len(p) != 1 or None in p:
            raise PeaceError(f"a population's tensors must share one leading dimension, got sizes {sorted(map(str, p))}")
        shapes = {k: (*p, *v) for k, v in shapes.items()}
    missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
    if missing or extra:
        raise PeaceError(f"parameters do not match {spec.describe()}: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        t = params[name]
        if tuple(t.shape) != shape:
            raise PeaceError(f"parameter {name} has shape {tuple(t.shape)}, but {spec.describe()} needs {shape}")
        if not t.is_floating_point():
            raise PeaceError(f"parameter {name} has dtype {t.dtype}; weights must be floating point")
        if not torch.isfinite(t).all():
            raise PeaceError(f"parameter {name} contains NaN or Inf values; a diverged or corrupted model cannot "
                             f"be turned into a graph")
        if name.endswith(".running_var") and (t < 0).any():
            raise PeaceError(f"BatchNorm statistics {name} hold negative variances; the file is corrupted")


def stack_params(models: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack single-model state dicts into population tensors (leading dimension P)."""
    return {k: torch.stack([m[k] for m in models]) for k in models[0]}


def unstack_params(params: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    """Model ``i`` of a population as a single-model state dict."""
    return {k: v[i] for k, v in params.items()}


# --- evaluation -------------------------------------------------------------------------------------

@torch.no_grad()
def predict(spec: ArchSpec, models: Sequence[dict[str, Tensor]], x: Tensor) -> Tensor:
    """(models, inputs, classes) float32 logits of single-model state dicts of one architecture on ``x``
    (rows of the spec's inputs, any shape that reshapes to them), run as one population."""
    stacked = {k: v.float() for k, v in stack_params(list(models)).items()}
    return forward(spec, stacked, x.float().reshape(-1, *spec.input_shape))


def nll(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy for (..., C) logits; faster than F.cross_entropy on many tiny models."""
    return logits.logsumexp(-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def evaluate(spec: ArchSpec, params: dict[str, Tensor], X: Tensor, y: Tensor, n_classes: int,
             chunk: int = 256) -> dict[str, np.ndarray]:
    """Loss, accuracy and per-class F1 of every model on (X, y); arrays with leading dimension P."""
    P = next(iter(params.values())).shape[0]
    C = n_classes
    loss, acc, f1 = [], [], []
    for s in range(0, P, chunk):
        logits = forward(spec, {k: v[s:s + chunk] for k, v in params.items()}, X)
        p = logits.shape[0]
        loss.append(nll(logits, y.expand(p, -1)).mean(1))
        pred = logits.argmax(-1)
        acc.append((pred == y).float().mean(1))
        cells = (torch.arange(p).unsqueeze(1) * C + pred) * C + y  # confusion-matrix cell per sample
        conf = torch.bincount(cells.reshape(-1), minlength=p * C * C).reshape(p, C, C).float()
        tp = conf.diagonal(dim1=1, dim2=2)
        f1.append(2 * tp / (conf.sum(2) + conf.sum(1)).clamp_min(1e-12))
    return {"loss": torch.cat(loss).numpy(), "acc": torch.cat(acc).numpy(), "f1": torch.cat(f1).numpy()}
