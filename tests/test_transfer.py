"""Transfer-learning study: real fine-tuning with the population trainer on the tiny zoo."""
import numpy as np
import pytest
import torch

from peace.core.errors import PeaceError
from peace.evaluate.baselines import Baseline, Models, RawWeights
from peace.evaluate.transfer import TransferConfig, finetune_curves, steps_to_target, subset, transfer_study
from peace.nets.architectures import evaluate as evaluate_population
from peace.nets.architectures import stack_params
from peace.orchestrate.evaluation import split_models
from peace.zoo.tasks import load_task

CFG = TransferConfig(k=3, queries=2, pool=12, task_models=4, epochs=2, also_at=(1,))


def test_steps_to_target_counts_censored_curves():
    curves = np.array([[0.1, 0.5, 0.9], [0.1, 0.2, 0.3], [np.nan] * 3, [0.95, 0.1, 0.1]])
    assert steps_to_target(curves, 0.8, 10).tolist() == [20, 30, 30, 0]


def test_finetune_curves_start_from_the_given_weights_and_train(tiny_zoo):
    rows = tiny_zoo.manifest
    ids = list(rows.index[(rows["task"] == "synth-1") & (rows["epoch"] == rows["epochs"])][:4])
    models = Models.from_zoo(tiny_zoo, ids)
    task = load_task("synth-2")
    curves = finetune_curves(task, models, CFG)
    X, y = (torch.from_numpy(a) for a in task.split("val"))
    for spec in set(models.specs):
        idx = [i for i, s in enumerate(models.specs) if s == spec]
        start = evaluate_population(spec, stack_params([models.params[i] for i in idx]), X, y, task.n_classes)["acc"]
        np.testing.assert_allclose(curves[idx, 0], start, atol=1e-6)
    assert curves.shape == (4, CFG.epochs + 1) and not np.allclose(curves[:, 0], curves[:, -1])
    alone = finetune_curves(task, subset(models, [2]), CFG)  # a model's curve ignores its batch mates
    np.testing.assert_allclose(alone[0], curves[2], atol=1e-6)


class Oracle(Baseline):
    """Knows each model's fine-tuned accuracy on the held-out task: its similarity to the task's
    models is a monotone function of that accuracy, so its zero-shot correlation must be 1 and its
    picks the best fine-tuners."""

    name = "oracle"

    def __init__(self, task: str):
        self.task = task

    def transform(self, models: Models) -> np.ndarray:
        theta = np.zeros(len(models))
        other = np.flatnonzero(models.rows["task"].to_numpy() != self.task)
        if len(other):
            acc = finetune_curves(load_task(self.task), subset(models, other), CFG)[:, -1]
            theta[other] = (1 - acc) * np.pi / 2
        return np.stack([np.cos(theta), np.sin(theta)], 1)


def _holding_out(zoo, task: str) -> tuple[Models, Models]:
    """Every model of ``task`` as held-out test models, every other one as the library."""
    rows = zoo.manifest[zoo.manifest["status"] == "ok"]
    train = Models.from_zoo(zoo, list(rows.index[rows["task"] != task]))
    test = Models.from_zoo(zoo, list(rows.index[rows["task"] == task]))
    test.rows["heldout_task"] = True
    return train, test


def test_transfer_study_ranks_an_oracle_first(tiny_zoo):
    train, test = _holding_out(tiny_zoo, "synth-2")  # synth-1 shares its inputs and classes
    raw = RawWeights().fit(train)
    out = transfer_study([Oracle("synth-2"), raw], train, test, CFG, seed=0)
    t = out["tasks"]["synth-2"]
    assert t["pool"] == int((train.rows["task"] == "synth-1").sum()) and not out["skipped"]
    assert set(t["budgets"]) == {1, 2} and out["methods"] == out["budgets"][2]  # the headline is the full budget
    full = t["budgets"][2]["methods"]
    oracle, rand = full["oracle"], full["random"]
    assert oracle["zero_shot_spearman"] == pytest.approx(1.0)
    assert oracle["final_val_acc"] >= max(m["final_val_acc"] for m in full.values()) - 1e-9
    assert oracle["final_val_acc"] > rand["final_val_acc"] and rand["step_ratio_vs_random"] == 1.0
    assert -1 <= full["raw"]["zero_shot_spearman"] <= 1
    assert set(out["methods"]) == {"oracle", "raw", "random"}
    picked = train.rows[train.rows["task"] == "synth-1"]
    assert picked["epoch"].min() <= oracle["picked_epoch"] <= picked["epoch"].max()  # what the picks look like
    short = t["budgets"][1]["methods"]["oracle"]  # read off the same curves one epoch earlier
    assert short["picked_epoch"] == oracle["picked_epoch"] and short["final_val_acc"] != oracle["final_val_acc"]


def test_transfer_study_skips_tasks_without_enough_compatible_models(tiny_run, tiny_zoo):
    train, test = split_models(tiny_run.path, tiny_zoo)  # the tiny run holds out tetris: no other task fits it
    out = transfer_study([RawWeights().fit(train)], train, test, TransferConfig(k=1000, epochs=1))
    assert not out["tasks"] and set(out["skipped"]) == set(test.rows.loc[test.rows["heldout_task"], "task"])
    assert all("needs at least k=1000" in why for why in out["skipped"].values())
    with pytest.raises(PeaceError, match="quantile"):
        TransferConfig(target=1.5)
    with pytest.raises(PeaceError, match=">= 1 epoch"):
        TransferConfig(also_at=(0,))
    assert TransferConfig(epochs=3, also_at=(5, 1, 3)).budgets == (1, 3)  # longer than the budget: dropped
