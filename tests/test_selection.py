"""Model selection on tasks nobody labelled: the within-task ranking score and the confidence signal."""
import numpy as np
import pytest
import torch
from conftest import random_model

from peace.evaluate.metrics import within_group_tau
from peace.evaluate.selection import confidence


def test_within_group_tau_scores_the_order_inside_each_task_only():
    y = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7]
    groups = ["a", "a", "a", "b", "b", "b"]
    assert within_group_tau(y, y, groups) == pytest.approx(1.0)
    # task a ordered right, task b reversed: the mean of +1 and -1
    assert within_group_tau(y, [1, 2, 3, 1, 2, 3], groups) == pytest.approx(0.0)
    # a prediction that only tells the tasks apart (b's models all above a's) orders nothing inside them
    assert within_group_tau(y, [0, 0, 0, 5, 5, 5], groups) == pytest.approx(0.0)
    # ... though pooled over both tasks it would look good: why the score is within tasks
    from scipy.stats import kendalltau
    assert kendalltau(y, [0, 0, 0, 5, 5, 5]).statistic > 0.6
    assert within_group_tau(y + [0.5, 0.4], [*y, 9, 0], [*groups, "c", "c"]) == pytest.approx(1.0)  # c: too few
    assert np.isnan(within_group_tau([1, 2], [1, 2], ["a", "b"]))


def test_confidence_reads_inputs_not_labels():
    task, spec, params = random_model("digits", dict(family="mlp", hidden=(8,), activation="relu"))
    sharp = {k: v * (3.0 if k.startswith("layers.1.") else 1.0) for k, v in params.items()}  # larger logits
    got = confidence([spec, spec, spec], [params, sharp, params], ["digits"] * 3)
    assert got.shape == (3,) and np.all((got > 1 / task.n_classes) & (got <= 1))
    assert got[1] > got[0] and got[0] == got[2]
    x = torch.as_tensor(task.X_test, dtype=torch.float32)
    with torch.no_grad():
        from peace.nets.architectures import forward
        ref = forward(spec, {k: v[None] for k, v in params.items()}, x)[0].softmax(-1).amax(-1).mean()
    assert got[0] == pytest.approx(float(ref), rel=1e-5)
