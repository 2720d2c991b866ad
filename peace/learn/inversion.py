"""Probe inputs written by the training models themselves (``encoder.probe_source=inverted``).

Gaussian noise is unlike any task's data: a digits model answers most of it with one or two classes, so
its answers on Gaussian probes neither tell it from a model of the same images with renamed classes nor
say which of its classes is which. Inputs that the training tasks' own models answer confidently with
each class do both. Per io-space of the training models, the bank holds a quarter of the space's Gaussian
probes and, for the rest, inputs inverted from each training task's more central models (an equal share
per task; :func:`peace.evaluate.selection.inverted_inputs`: Gaussian starts moved by gradient steps until
those models answer each with an assigned class). Only weights and the training models' task names are
read, no data; the inputs are then fixed, so responses on them, and the embedding, stay exactly invariant.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from peace.core.errors import PeaceError
from peace.core.grouping import positions
from peace.evaluate.selection import consensus, inverted_inputs
from peace.nets.architectures import ArchSpec
from peace.nets.probes import io_space, probe_inputs

__all__ = ["GAUSSIAN_SHARE", "inverted_probes"]

GAUSSIAN_SHARE = 0.25  # of each space's probes kept Gaussian: what models answer off every task's inputs


def inverted_probes(specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]], tasks: Sequence[str],
                    n_probes: int) -> dict[str, Tensor]:
    """io-space -> (n_probes, features) float64 probe inputs for every space of ``specs``: its first
    ``GAUSSIAN_SHARE`` Gaussian probes, then inputs inverted from each of its tasks' models in turn (tasks in
    sorted order, shares as equal as ``n_probes`` allows). The writers of a task are the more central half of
    its models by their agreement on the Gaussian probes (``consensus(..., "probes")``)."""
    if not (len(specs) == len(params) == len(tasks)):
        raise PeaceError(f"got {len(specs)} architectures, {len(params)} parameter sets and {len(tasks)} tasks")
    if n_probes < 2:
        raise PeaceError(f"inverted probes need at least 2 probe inputs per io-space (1 Gaussian, 1 inverted), "
                         f"got {n_probes}")
    scores = consensus(specs, params, tasks, "probes")
    n_gauss = max(1, round(n_probes * GAUSSIAN_SHARE))
    out = {}
    for space, idx in positions(io_space(s) for s in specs).items():
        own = sorted({tasks[i] for i in idx})
        parts = [probe_inputs(specs[idx[0]].input_shape, n_probes)[:n_gauss].flatten(1)]
        for task, share in zip(own, np.array_split(np.arange(n_probes - n_gauss), len(own))):
            if len(share):
                members = [i for i in idx if tasks[i] == task]
                written = inverted_inputs([specs[i] for i in members], [params[i] for i in members],
                                          scores[members], n=len(share))
                parts.append(written.double())
        out[space] = torch.cat(parts)
    return out
