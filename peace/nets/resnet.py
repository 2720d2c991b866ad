"""Residual CNNs: ResNet basic blocks in torchvision's layout and parameter names.

``stem``: conv1 (``stem_kernel``, ``stem_stride``) -> bn1 -> act [-> 3x3/2 max pool]. Then stages of
basic blocks (``hidden`` widths, ``blocks`` per stage; the first block of every stage after the first
has stride 2): ``out = act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`` where the shortcut is the
identity, or ``downsample`` (1x1 conv with the block's stride -> BatchNorm) where the width or the
resolution changes. Then global average pooling and ``fc``. Parameter names are torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``), so a torchvision
``resnet18`` state dict is a ``resnet`` spec's state dict.

Data flow (what symmetries and graphs read): tensor 0 is the input, then the stem's output, then for
each block its inner tensor and its output; the logits last. An identity shortcut is a residual
(block input -> block output): the two tensors share one permutation of their channels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peace.core.errors import PeaceError
from peace.nets.layers import ACTIVATIONS, BN_EPS, BN_MOMENTUM, Layer, conv, normalize

if TYPE_CHECKING:
    from peace.nets.architectures import ArchSpec

__all__ = ["STEM_POOLS", "BasicBlock", "ResNet", "build_layers", "forward"]

STEM_POOLS = ("none", "max")


def _spatial(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def build_layers(spec: ArchSpec) -> tuple[tuple[Layer, ...], list[int], list[tuple[int, int]]]:
    """The layers, tensor sizes and residuals of a ResNet spec (see the module docstring)."""
    if len(spec.input_shape) != 3:
        raise PeaceError(f"a resnet needs inputs shaped (channels, height, width), but the task's samples are "
                         f"{spec.input_shape}; use family 'mlp' or 'cnn1d' for this task")
    if not spec.hidden or len(spec.blocks) != len(spec.hidden) or min(spec.blocks, default=0) < 1:
        raise PeaceError(f"a resnet needs one block count (>= 1) per stage width: hidden={list(spec.hidden)}, "
                         f"blocks={list(spec.blocks)}")
    for what, k in (("kernel_size", spec.kernel_size), ("stem_kernel", spec.stem_kernel)):
        if k < 1 or k % 2 == 0:
            raise PeaceError(f"{what} must be odd and positive, got {k}")
    if spec.norm == "layer":
        raise PeaceError("resnets take norm 'batch' or 'none'; LayerNorm is for MLPs and CNNs here")
    if spec.stem_stride < 1 or spec.stem_pool not in STEM_POOLS or spec.pool != "avg":
        raise PeaceError(f"resnet stems take stem_stride >= 1 and stem_pool in {STEM_POOLS}, and the head is a global "
                         f"average pool (pool='avg'); got stem_stride={spec.stem_stride}, stem_pool={spec.stem_pool!r}, "
                         f"pool={spec.pool!r}")
    bn = spec.norm == "batch"
    layers: list[Layer] = []
    sizes = [spec.input_shape[0]]
    residuals: list[tuple[int, int]] = []

    def add(name: str, c_in: int, c_out: int, k: int, stride: int, src: int, dst: int, norm: str | None) -> None:
        layers.append(Layer(len(layers), "conv2d", c_in, c_out, (k, k), spec.bias, name=name, stride=stride,
                            src=src, dst=dst, norm=norm if bn else None))

    hw = [_spatial(s, spec.stem_kernel, spec.stem_stride) for s in spec.input_shape[1:]]
    if spec.stem_pool == "max":
        hw = [_spatial(s, 3, 2) for s in hw]
    add("conv1", spec.input_shape[0], spec.hidden[0], spec.stem_kernel, spec.stem_stride, 0, 1, "bn1")
    sizes.append(spec.hidden[0])
    for s, (width, n) in enumerate(zip(spec.hidden, spec.blocks)):
        for b in range(n):
            stride = 2 if s > 0 and b == 0 else 1
            hw = [_spatial(x, 3, stride) for x in hw]
            if min(hw) < 1:
                raise PeaceError(f"impossible shape: an input of {spec.input_shape[1:]} shrinks to nothing in stage "
                                 f"{s + 1}; use fewer stages or a smaller stem stride")
            x, pre = len(sizes) - 1, f"layer{s + 1}.{b}"
            c_in = sizes[x]
            add(f"{pre}.conv1", c_in, width, spec.kernel_size, stride, x, x + 1, f"{pre}.bn1")
            add(f"{pre}.conv2", width, width, spec.kernel_size, 1, x + 1, x + 2, f"{pre}.bn2")
            if stride != 1 or c_in != width:
                add(f"{pre}.downsample.0", c_in, width, 1, stride, x, x + 2, f"{pre}.downsample.1")
            else:
                residuals.append((x, x + 2))
            sizes += [width, width]
    layers.append(Layer(len(layers), "linear", sizes[-1], spec.n_classes, name="fc", src=len(sizes) - 1,
                        dst=len(sizes)))
    sizes.append(spec.n_classes)
    return tuple(layers), sizes, residuals


def forward(spec: ArchSpec, params: dict[str, Tensor], x: Tensor, train: bool = False,
            seen: dict[int, Tensor] | None = None) -> Tensor:
    """Logits (P, B, n_classes) of P ResNets on x (P, B, C, H, W); see ``architectures.forward``."""
    act = ACTIVATIONS[spec.activation]

    def apply(layer: Layer, h: Tensor) -> Tensor:
        h = conv(h, params[layer.weight_name], params[layer.bias_name] if layer.bias else None, layer.stride)
        return normalize(h, params, layer, train, seen) if layer.norm else h

    layers = spec.layers
    h = act(apply(layers[0], x))
    if spec.stem_pool == "max":
        P, B = h.shape[:2]
        h = F.max_pool2d(h.reshape(P * B, *h.shape[2:]), 3, 2, 1)
        h = h.reshape(P, B, *h.shape[1:])
    i = 1
    while i < len(layers) - 1:  # one basic block: conv1, conv2[, downsample]
        out = apply(layers[i + 1], act(apply(layers[i], h)))
        i += 2
        if layers[i].name.endswith("downsample.0"):
            h, i = apply(layers[i], h), i + 1
        h = act(out + h)
    fc = layers[-1]
    return torch.baddbmm(params[fc.bias_name].unsqueeze(1), h.mean(dim=(3, 4)), params[fc.weight_name].transpose(1, 2))


# --- the single-model module, torchvision's structure -------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, k: int, bias: bool, bn: bool, act):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)) if bn else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=bias)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, k, 1, k // 2, bias=bias)
        self.bn2 = norm(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=bias), *([norm(c_out)] if bn else []))
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.act(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """One model of a ``resnet`` spec as an ``nn.Module`` (torchvision's names; same function)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        act = ACTIVATIONS[spec.activation]
        bn = spec.norm == "batch"
        k0 = spec.stem_kernel
        self.conv1 = nn.Conv2d(spec.input_shape[0], spec.hidden[0], k0, spec.stem_stride, k0 // 2, bias=spec.bias)
        self.bn1 = nn.BatchNorm2d(spec.hidden[0], eps=BN_EPS, momentum=BN_MOMENTUM) if bn else nn.Identity()
        self.act = act
        c = spec.hidden[0]
        for s, (width, n) in enumerate(zip(spec.hidden, spec.blocks)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c, width, 2 if s > 0 and b == 0 else 1, spec.kernel_size, spec.bias, bn, act))
                c = width
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, spec.n_classes)

    def forward(self, x: Tensor, dropout_masks=None) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if self.spec.stem_pool == "max":
            x = F.max_pool2d(x, 3, 2, 1)
        for s in range(len(self.spec.hidden)):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))
