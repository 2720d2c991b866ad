"""The non-equivariant control encoder: an MLP on flattened weights with PEACE's heads."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from peace.evaluate.baselines import flatten_weights
from peace.learn.encoder import Embedder, EncoderConfig
from peace.nets.architectures import ArchSpec
from peace.nets.symmetry import canonicalize

__all__ = ["FlatMLPEncoder"]


class FlatMLPEncoder(Embedder):
    """The non-equivariant control: an MLP on the flattened (canonical, standardized) weights with
    PEACE's heads, trained by the same trainer (``encoder.kind: mlp``)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        H = c.hidden
        self.net = nn.Sequential(nn.Linear(c.max_params, 4 * H), nn.SiLU(), nn.Linear(4 * H, H), nn.SiLU())
        self._init_heads(c)
        self.register_buffer("scale", torch.ones(()))
        self.backend = "torch"

    def _flat(self, spec: ArchSpec, params: dict[str, Tensor]) -> Tensor:
        return flatten_weights(spec, canonicalize(spec, params) if self.config.canonicalize else params,
                               self.config.max_params)

    @torch.no_grad()
    def fit_standardization(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]]) -> None:
        flat = torch.cat([self._flat(s, p)[:s.n_params] for s, p in zip(specs, params)])
        self.scale.fill_(flat.std().clamp_min(1e-6) if flat.numel() > 1 else 1.0)

    def batch(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]], device="cpu",
              responses=None) -> Tensor:
        """Flattened weights (``responses`` is accepted for the common interface and ignored)."""
        return torch.stack([self._flat(s, p) for s, p in zip(specs, params)]).to(device)

    def encode(self, x: Tensor) -> Tensor:
        return self.net(x / self.scale)
