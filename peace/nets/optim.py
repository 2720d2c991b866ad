"""Adam and SGD for populations: tensors whose leading dimension is the model, each model with its own lr.

Many small models trained (or refined) at once are a few big tensors; ``torch.optim`` would give
them one learning rate and, on torch 2.2, costs a 3 s import of torch._dynamo on first use (what
the explorer's first decoded path paid). The update rules are ``torch.optim``'s own: the tests
compare population training with ``peace.zoo.population.train_single``, which uses ``torch.optim``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ADAM_BETAS", "ADAM_EPS", "PopulationOptimizer"]

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class PopulationOptimizer:
    """Adam or SGD (momentum 0.9) with the update rules of ``torch.optim``, per-model lr/decay."""

    def __init__(self, params: dict[str, Tensor], kind: str, lr: Tensor, wd: Tensor):
        self.params, self.kind, self.t = params, kind, 0
        self.lr = {k: lr.reshape(-1, *[1] * (v.dim() - 1)) for k, v in params.items()}
        self.wd = {k: wd.reshape(-1, *[1] * (v.dim() - 1)) for k, v in params.items()}
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()} if kind == "adam" else None

    @torch.no_grad()
    def step(self) -> None:
        """One update from the gradients in each tensor's ``.grad``, which it then clears."""
        self.t += 1
        b1, b2 = ADAM_BETAS
        for k, p in self.params.items():
            g = p.grad + self.wd[k] * p
            if self.kind == "sgd":
                self.m[k] = g.clone() if self.t == 1 else self.m[k].mul_(0.9).add_(g)
                p.sub_(self.lr[k] * self.m[k])
            else:
                self.m[k].lerp_(g, 1 - b1)
                self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
                denom = (self.v[k].sqrt() / math.sqrt(bc2)).add_(ADAM_EPS)
                p.sub_((self.lr[k] / bc1) * self.m[k] / denom)
            p.grad = None
