import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec, evaluate, forward
from peace.zoo.population import HParams, Schedule, train_population, train_single
from peace.zoo.tasks import load_task

CASES = [
    ("tetris", dict(family="mlp", hidden=(5,), activation="tanh", bias=False), "adam"),
    ("synth-1", dict(family="mlp", hidden=(6, 4), activation="relu"), "sgd"),
    ("digits", dict(family="cnn2d", hidden=(2, 3), activation="leaky_relu", pool="max"), "adam"),
    # BatchNorm (batch statistics in training, running ones in metrics); no bias before it: such a bias
    # only gets rounding-noise gradients, which Adam turns into lr-sized steps in either trainer
    ("digits", dict(family="mlp", hidden=(8, 6), norm="batch", bias=False, activation="relu"), "adam"),
    ("mnist1d", dict(family="cnn1d", hidden=(3,), fc_hidden=(5,), norm="batch", bias=False, activation="tanh"), "sgd"),
    # LayerNorm (over at least 4 channels: over 2 it outputs only +-1, and training turns rounding into chaos)
    ("digits", dict(family="cnn2d", hidden=(4, 5), norm="layer", bias=False, activation="relu", pool="avg"), "adam"),
]


@pytest.mark.parametrize("task_name, arch, opt", CASES)
def test_model_in_population_equals_model_trained_alone(task_name, arch, opt):
    task = load_task(task_name)
    spec = ArchSpec(input_shape=task.input_shape, n_classes=task.n_classes, **arch)
    hps = [HParams(seed=s, init=i, lr=lr, weight_decay=wd, dropout=dr)
           for s, i, lr, wd, dr in [(3, "uniform", 1e-3, 0.0, 0.0), (9, "xavier_normal", 3e-3, 1e-3, 0.2),
                                    (4, "kaiming_normal", 2e-3, 0.0, 0.1), (5, "normal", 1e-2, 1e-4, 0.0)]]
    sched = Schedule(epochs=2, batch_size=64, optimizer=opt, checkpoints=(0, 1, 2))
    pop = train_population(task, spec, hps, sched)
    for i in (1, 3):
        alone = train_single(task, spec, hps[i], sched)
        for epoch in (0, 2):
            for k, v in alone[epoch].items():
                torch.testing.assert_close(pop.checkpoints[epoch][k][i], v, atol=2e-6, rtol=1e-5)
    moved = (pop.checkpoints[2][spec.layers[0].weight_name] - pop.checkpoints[0][spec.layers[0].weight_name]).abs().max()
    assert moved > 1e-3  # training happened


def test_metrics_rows_match_sklearn():
    task = load_task("synth-2")
    spec = ArchSpec("mlp", task.input_shape, task.n_classes, hidden=(8,))
    res = train_population(task, spec, [HParams(seed=s, lr=1e-2) for s in range(3)], Schedule(3, checkpoints=(3,)))
    assert len(res.metrics) == 3 and all(r["status"] == "ok" for r in res.metrics)
    X, y = torch.from_numpy(task.X_test), torch.from_numpy(task.y_test)
    pred = forward(spec, res.checkpoints[3], X).argmax(-1).numpy()
    for i, r in enumerate(res.metrics):
        np.testing.assert_allclose(r["test_acc"], (pred[i] == task.y_test).mean(), atol=1e-6)
        np.testing.assert_allclose(r["test_f1_per_class"], f1_score(task.y_test, pred[i], average=None), atol=1e-6)
        assert r["gen_gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
    ev = evaluate(spec, res.checkpoints[3], X, y, task.n_classes, chunk=2)  # chunking changes nothing
    np.testing.assert_allclose(ev["acc"], [r["test_acc"] for r in res.metrics], atol=1e-6)


def test_diverged_models_are_kept_and_do_not_poison_others():
    task = load_task("synth-1")
    spec = ArchSpec("mlp", task.input_shape, task.n_classes, hidden=(8,), activation="identity")
    hps = [HParams(seed=1, lr=1e-2), HParams(seed=2, lr=1e12)]
    res = train_population(task, spec, hps, Schedule(2, optimizer="sgd", checkpoints=(1, 2)))
    last = [r for r in res.metrics if r["epoch"] == 2]
    assert [r["status"] for r in last] == ["ok", "diverged"]
    alone = train_single(task, spec, hps[0], Schedule(2, optimizer="sgd", checkpoints=(1, 2)))
    torch.testing.assert_close(res.checkpoints[2]["layers.0.weight"][0], alone[2]["layers.0.weight"])


def test_finetune_starts_from_given_weights():
    task = load_task("synth-1")
    spec = ArchSpec("mlp", task.input_shape, task.n_classes, hidden=(4,))
    parent = train_population(task, spec, [HParams(seed=1)], Schedule(1))
    child = train_population(load_task("synth-2"), spec, [HParams(seed=1)], Schedule(1, checkpoints=(0, 1)),
                             start=parent.checkpoints[1])
    for k, v in parent.checkpoints[1].items():
        assert torch.equal(child.checkpoints[0][k], v)


@pytest.mark.parametrize("kw, msg", [(dict(init="he"), "unknown initialization 'he'"),
                                     (dict(dropout=1.0), "dropout must be in"), (dict(lr=0.0), "lr must be > 0")])
def test_bad_hparams(kw, msg):
    with pytest.raises(PeaceError, match=msg):
        HParams(seed=1, **kw)


def test_bad_schedule_and_mismatched_task():
    with pytest.raises(PeaceError, match="unknown optimizer 'rmsprop'; valid: adam, sgd"):
        Schedule(3, optimizer="rmsprop")
    with pytest.raises(PeaceError, match=r"checkpoint epochs must lie in \[0, 3\]"):
        Schedule(3, checkpoints=(5,))
    spec = ArchSpec("mlp", (16,), 10, hidden=(4,))
    with pytest.raises(PeaceError, match="has 10 outputs but task 'tetris' has 4 classes"):
        train_population(load_task("tetris"), spec, [HParams(seed=1)], Schedule(1))
