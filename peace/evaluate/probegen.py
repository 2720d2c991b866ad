"""ProbeGen (Kahana, Horwitz, Shuval, Hoshen, ICLR 2025, "Deep Linear Probe Generators for Weight Space
Learning"): a network is read through its outputs on K *learned* probe inputs, generated from K latent
codes by one shared deep linear generator, and an MLP head maps the concatenated outputs to the target.

The generator has no activations between its layers: a linear map in disguise, whose depth regularizes
(the paper finds probes learned freely overfit and do no better than random ones; ``generator="free"``
is that ablation). As in the authors' code (github.com/jonkahana/ProbeGen): latent codes of 32,
transposed convolutions up from 1x1 with a final tanh for image- or sequence-shaped inputs, a stack of
linear maps for vector inputs (their INR setting), the models' logits on the probes flattened into a
6-layer ReLU MLP of width 256, Adam at 3e-4 on MSE. Deviations: the transposed-convolution stack is
sized to each input shape (8x8 digits, 1-D sequences) rather than 32x32 images, and training uses
PEACE's supervised loop (standardized targets, early stopping on validation, no cosine schedule).

ProbeGen trained contrastively, a retrieval peer of PEACE, is ``peace.learn.probegen.ProbeGenEmbedding``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec, forward, stack_params

__all__ = ["GENERATORS", "ProbeGenConfig", "ProbeGenRegressor", "ProbeGenerator", "probe_reader"]

GENERATORS = ("deep-linear", "free")


@dataclass(frozen=True)
class ProbeGenConfig:
    """ProbeGen's shape and optimizer, the paper's defaults (64 probes: its smaller setting)."""

    n_probes: int = 64
    latent: int = 32
    width: int = 16     # channels of the generator's last hidden layer (x2, x4 before it)
    head: int = 256
    head_layers: int = 6
    lr: float = 3e-4
    generator: str = "deep-linear"

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise PeaceError(f"unknown ProbeGen generator {self.generator!r}; valid: {', '.join(GENERATORS)}")
        if min(self.n_probes, self.latent, self.width, self.head) < 1 or self.head_layers < 2 or self.lr <= 0:
            raise PeaceError(f"every ProbeGen setting must be positive (head_layers >= 2), got {self}")


def _deconv_stack(shape: Sequence[int], latent: int, width: int) -> list[nn.Module]:
    """Transposed convolutions from a 1x1 latent up to ``shape`` = (channels, *spatial), 1-D or 2-D, no
    activations: one to half the size (or the full size where a side is odd), a stride-2 one to the full
    size, then two 3-wide ones down to the input's channels."""
    channels, spatial = shape[0], tuple(shape[1:])
    conv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[len(spatial)]
    half = all(s % 2 == 0 and s >= 4 for s in spatial)
    first = tuple(s // 2 for s in spatial) if half else spatial
    up = conv(4 * width, 2 * width, 4, 2, 1) if half else conv(4 * width, 2 * width, 3, 1, 1)
    return [conv(latent, 4 * width, first), up, conv(2 * width, width, 3, 1, 1), conv(width, channels, 3, 1, 1)]


class ProbeGenerator(nn.Module):
    """K probe inputs of ``input_shape``: from latent codes through a deep linear generator, or (``free``)
    learned directly as vanilla probing does."""

    def __init__(self, input_shape: Sequence[int], config: ProbeGenConfig = ProbeGenConfig()):
        super().__init__()
        self.input_shape, k = tuple(input_shape), config.n_probes
        if config.generator == "free":
            self.codes = nn.Parameter(torch.randn(k, *self.input_shape))
            self.net: nn.Module = nn.Identity()
        elif len(self.input_shape) in (2, 3):  # (channels, length) or (channels, height, width)
            self.codes = nn.Parameter(torch.randn(k, config.latent, *([1] * (len(self.input_shape) - 1))))
            self.net = nn.Sequential(*_deconv_stack(self.input_shape, config.latent, config.width), nn.Tanh())
        else:
            d = math.prod(self.input_shape)
            self.codes = nn.Parameter(torch.randn(k, config.latent))
            self.net = nn.Sequential(nn.Linear(config.latent, config.latent), nn.Linear(config.latent, d))

    def forward(self) -> Tensor:
        return self.net(self.codes).reshape(-1, *self.input_shape)


def probe_reader(n_in: int, n_out: int, config: ProbeGenConfig) -> nn.Sequential:
    """The paper's reader: ``head_layers`` linear layers of width ``head`` with ReLU between them."""
    sizes = [n_in] + [config.head] * (config.head_layers - 1)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(config.head, n_out))


class ProbeGenRegressor(nn.Module):
    """Models of one architecture -> one number each (``model(params list) -> (n,)``, as
    ``peace.evaluate.prediction.fit_regressor`` trains): their logits on the generated probes, read by an MLP."""

    def __init__(self, spec: ArchSpec, config: ProbeGenConfig = ProbeGenConfig()):
        super().__init__()
        self.spec, self.config = spec, config
        self.probes = ProbeGenerator(spec.input_shape, config)
        self.head = probe_reader(config.n_probes * spec.n_classes, 1, config)

    def responses(self, params: Sequence[dict[str, Tensor]]) -> Tensor:
        """(n, K * n_classes): each model's logits on the probes, flattened."""
        stacked = {k: v.float() for k, v in stack_params(list(params)).items()}
        return forward(self.spec, stacked, self.probes()).flatten(1)

    def forward(self, params: Sequence[dict[str, Tensor]]) -> Tensor:
        return self.head(self.responses(params)).squeeze(-1)

