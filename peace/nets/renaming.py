"""Renaming a model's classes: its output layer's rows (and biases) in another order.

Not a symmetry: the function changes (class k now answers what class order[k] did), but nothing about how well
the model solves its task does, read on the task with its labels renamed alike. Contrastive training uses
renamed copies as negatives and as tasks of their own; the accuracy predictors use them as training models
whose accuracy on their own task is the original's."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from peace.nets.architectures import ArchSpec

__all__ = ["relabel_classes", "renaming"]


def renaming(n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``n_classes`` classes that leaves none in its place (the identity for one class)."""
    if n_classes < 2:
        return np.arange(n_classes)
    perm = rng.permutation(n_classes)
    while (perm == np.arange(n_classes)).any():
        perm = rng.permutation(n_classes)
    return perm


def relabel_classes(spec: ArchSpec, params: dict[str, Tensor], rng: np.random.Generator,
                    order: np.ndarray | None = None) -> dict[str, Tensor]:
    """The model with its output classes permuted (by ``order``, else a random ``renaming``): the same
    weights up to the last layer's row order, but another function (a negative only the outputs reveal)."""
    order = renaming(spec.n_classes, rng) if order is None else order
    last, idx = spec.layers[-1], torch.from_numpy(np.asarray(order))
    out = dict(params)
    out[last.weight_name] = params[last.weight_name][idx]
    if last.bias:
        out[last.bias_name] = params[last.bias_name][idx]
    return out
