"""Model selection on a task nobody labelled: which of a task's models is best, read from weights alone?

The user's question of a zoo: "which of these models should I use for my new task". On the held-out
tasks of a run (tasks no training model comes from), each method ranks the task's test models by
predicted test accuracy (a ridge probe fit on the training tasks' models: no label of the held-out task
is used) and is scored by the Kendall tau of that ranking inside each task, averaged over tasks.
Beside the weight-space methods, a label-free function-space signal that does use the task's data:
each model's mean confidence (top softmax probability) on the task's unlabelled test inputs.
The score is ``peace.evaluate.metrics.within_group_tau`` (``linear_probe(..., rank_within=...)`` for probes).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from peace.nets.architectures import ArchSpec, forward, stack_params
from peace.zoo.tasks import load_task

__all__ = ["CONFIDENCE", "confidence"]

CONFIDENCE = "confidence (task's unlabelled inputs)"


@torch.no_grad()
def confidence(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], tasks: Sequence[str],
               split: str = "test") -> np.ndarray:
    """Each model's mean top softmax probability on its task's ``split`` inputs (the labels are not read)."""
    out = np.zeros(len(specs))
    groups: dict[tuple[ArchSpec, str], list[int]] = defaultdict(list)
    for i, (s, t) in enumerate(zip(specs, tasks)):
        groups[(s, t)].append(i)
    for (spec, task), idx in groups.items():
        x = torch.as_tensor(load_task(task).split(split)[0], dtype=torch.float32).reshape(-1, *spec.input_shape)
        stacked = {k: v.float() for k, v in stack_params([params[i] for i in idx]).items()}
        out[idx] = forward(spec, stacked, x).softmax(-1).amax(-1).mean(-1).numpy()
    return out
