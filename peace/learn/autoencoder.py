"""E.D: the encoder trained jointly with a weight decoder (Hyper-representations' autoencoder recipe).

With ``train.reconstruction > 0`` the trainer adds to its contrastive loss that weight times the
layer-wise normalized error of decoding each anchor's aligned weights (``peace.learn.decoder``:
canonical scales and signs, units matched to the architecture's reference) from its learned
embedding. The embedding must then keep what the weights need, not only what tells models apart;
that is what E.D's linear probes read. Anchors of families the decoder does not write (ResNets, ViTs)
add nothing. The head shapes the embedding only: the decoder that samples models is trained
afterwards on the frozen encoder (``peace decoder``; docs/generation.md says why).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.learn.decoder import (
    DecoderConfig,
    WeightDecoder,
    aligned_form,
    flatten,
    head_form,
    head_spec,
    reference_form,
)
from peace.nets.architectures import ArchSpec

__all__ = ["Reconstruction"]

Params = dict[str, Tensor]
REFERENCE_MODELS = 256  # training models per architecture averaged into its alignment reference
FAMILIES = DecoderConfig().families  # the families a decoder writes by default (ViTs left out, as there)
CACHE_BYTES = 512 * 2**20  # aligned targets kept between epochs (beyond, they are aligned again when drawn)


class Reconstruction:
    """The reconstruction term: one decoder head per decodable architecture of the training models,
    and each model's aligned weights (computed when first asked for, then kept)."""

    def __init__(self, ids: Sequence[str], specs: dict[str, ArchSpec], weights: dict[str, Params], in_dim: int,
                 seed: int = 0):
        by_head: dict[ArchSpec, list[str]] = {}
        for m in ids:
            if specs[m].family in FAMILIES:
                by_head.setdefault(head_spec(specs[m]), []).append(m)
        if not by_head:
            raise PeaceError(f"train.reconstruction needs models the decoder writes ({', '.join(FAMILIES)}); the "
                             f"training split has none. Train without it (--set train.reconstruction=0)")
        self.heads = sorted(by_head, key=lambda s: s.describe())
        self._index = {h: i for i, h in enumerate(self.heads)}  # head spec -> its decoder head
        self.specs, self.weights, self._cache, self._cached_bytes = specs, weights, {}, 0
        rng = np.random.default_rng(seed)
        self.refs, picked = [], []
        for h in self.heads:
            members = by_head[h]
            picked.append([members[i] for i in rng.choice(len(members), min(len(members), REFERENCE_MODELS), replace=False)])
            self.refs.append(reference_form(h, [head_form(specs[m], weights[m]) for m in picked[-1]]))
        torch.manual_seed(seed)
        self.decoder = WeightDecoder(in_dim, self.heads, DecoderConfig(function_weight=0.0, noise=0.0, seed=seed))
        # no input standardization: the embedding moves while the encoder trains; the heads' per-tensor
        # means and spreads come from the reference samples, so every tensor weighs the same
        self.decoder.set_statistics(torch.zeros(1, in_dim), [torch.stack([self.target(m) for m in p]) for p in picked])

    def checkpoint(self) -> dict[str, dict[str, Tensor]]:
        """What a training checkpoint keeps of the term (its decoder's state), for ``restore``."""
        return {"decoder": self.decoder.state_dict()}

    def restore(self, checkpoint: dict) -> None:
        self.decoder.load_state_dict(checkpoint["decoder"])

    def target(self, m: str) -> Tensor:
        """Model ``m``'s flat aligned weights."""
        if m in self._cache:
            return self._cache[m]
        spec, head = self.specs[m], head_spec(self.specs[m])
        y = flatten(head, aligned_form(head, head_form(spec, self.weights[m]), self.refs[self._index[head]]))
        if self._cached_bytes + 4 * y.numel() <= CACHE_BYTES:
            self._cache[m], self._cached_bytes = y, self._cached_bytes + 4 * y.numel()
        return y

    def loss(self, z: Tensor, ids: Sequence[str]) -> Tensor:
        """Mean layer-wise normalized error over the decodable models among ``ids`` (rows of ``z``)."""
        rows: dict[int, list[int]] = {}
        for r, m in enumerate(ids):
            i = self._index.get(head_spec(self.specs[m]))  # None: a family or architecture it does not write
            if i is not None:
                rows.setdefault(i, []).append(r)
        if not rows:
            return z.sum() * 0.0
        dec = self.decoder.to(z.device)
        total = sum(len(r) * dec.loss(z[r], torch.stack([self.target(ids[k]) for k in r]).to(z.device), i)
                    for i, r in rows.items())
        return total / sum(len(r) for r in rows.values())
