"""Zoos in the layout of the published ones (Ray Tune trials: params.json, result.json, checkpoint_N/checkpoints),
made by their own kind of code here (a module_list MLP), read by `peace zoo add` with lineages, cards and results."""
import json

import numpy as np
import pytest
import torch
from conftest import run_peace
from torch import nn

from peace.intake.tune import is_tune_zoo, tune_checkpoints
from peace.nets.architectures import forward
from peace.zoo.store import Zoo


class _ZooMLP(nn.Module):
    """The published zoos' MLP: one module_list, activations between the linear layers."""

    def __init__(self):
        super().__init__()
        self.module_list = nn.ModuleList([nn.Linear(16, 5, bias=False), nn.Tanh(), nn.Linear(5, 4, bias=False)])


def _zoo_cnn(nlin=nn.Tanh):
    """The published zoos' CNN ("CNN"): unpadded convolutions of kernels 5, 5 and 2, max-pooled before the activation."""
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.MaxPool2d(2, 2), nlin(), nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), nlin(),
                         nn.Conv2d(6, 4, 2), nlin(), nn.Flatten(), nn.Linear(36, 20), nlin(), nn.Linear(20, 10))


def _trial(root, name, seed, nlin="tanh", epochs=3, first=0):
    """A trial directory: checkpoints ``first``..``epochs``, one result line per training iteration."""
    torch.manual_seed(seed)
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({
        "model::type": "MLP", "model::nlin": nlin, "model::use_bias": False, "optim::lr": 3e-5, "optim::wd": 0.0,
        "optim::optimizer": "adam", "seed": seed, "training::batchsize": 4, "model::init_type": "uniform",
        "training::epochs_train": epochs, "cuda": False}))
    lines = [{"train_acc": 0.3 + 0.1 * it, "test_acc": 0.25 + 0.1 * it, "test_loss": float("nan") if it == 2 else 1 / it,
              "training_iteration": it} for it in range(1, epochs + 2 - first)]
    (d / "result.json").write_text("".join(json.dumps(row) + "\n" for row in lines))
    net, states = _ZooMLP(), {}
    for epoch in range(first, epochs + 1):
        (d / f"checkpoint_{epoch:06d}").mkdir()
        torch.save(net.state_dict(), d / f"checkpoint_{epoch:06d}" / "checkpoints")
        torch.save({"state": {}, "param_groups": []}, d / f"checkpoint_{epoch:06d}" / "optimizer")
        states[epoch] = {k: v.clone() for k, v in net.state_dict().items()}
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return states


def test_a_published_zoo_becomes_a_zoo_of_lineages_with_its_cards_and_results(tmp_path):
    src = tmp_path / "tetris_seed"
    states = {f"NN_tune_trainable_{s:05d}": _trial(src, f"NN_tune_trainable_{s:05d}", s) for s in range(3)}
    assert is_tune_zoo(src) and is_tune_zoo(src / "NN_tune_trainable_00000") and not is_tune_zoo(tmp_path)
    # the result lines: with a checkpoint_000000 the first line describes it; without, checkpoint_000001
    first = tune_checkpoints(src)[0]
    assert (first.epoch, first.metadata["train_acc"], first.config) == (0, pytest.approx(0.4), {"activation": "tanh"})
    _trial(tmp_path / "late", "t", 0, first=1)
    late = tune_checkpoints(tmp_path / "late")
    assert late[0].epoch == 1 and late[0].metadata["train_acc"] == pytest.approx(0.4)
    assert "test_loss" not in late[1].metadata  # a NaN in result.json is unknown, not refused

    zoo = tmp_path / "zoo"
    p = run_peace("zoo", "add", "--new", zoo, src)
    assert "read 12 checkpoints of 3 runs" in p.stdout
    z = Zoo(zoo)
    m = z.manifest
    assert len(m) == 12 and m["run_id"].nunique() == 3 and (m["lineage_id"] == m["run_id"]).all()
    assert sorted(m["epoch"].unique()) == [0, 1, 2, 3] and (m["epochs"] == 3).all() and (m["task"] == "tetris_seed").all()
    assert (m["arch"] == "mlp 16-5-4 tanh nobias").all() and (m["lr"] == 3e-5).all() and (m["batch_size"] == 4).all()
    assert sorted(m["seed"].unique()) == [0, 1, 2] and m["test_acc"].tolist()[:4] == pytest.approx([0.35, 0.45, 0.55, 0.65])
    for run, rows in m.groupby("run_id"):
        assert len({z.spec(mid).describe() for mid in rows.index}) == 1
    for r in m.itertuples():  # every checkpoint's weights, in its trial's lineage at its epoch
        saved = states[f"NN_tune_trainable_{r.seed:05d}"][r.epoch]
        torch.testing.assert_close(z.weights(r.Index)["layers.0.weight"], saved["module_list.0.weight"])
        torch.testing.assert_close(z.weights(r.Index)["layers.1.weight"], saved["module_list.2.weight"])
    _trial(tmp_path / "tetris", "t", 0, epochs=1)  # named after a PEACE task, trained on other data
    named = run_peace("zoo", "add", "--new", tmp_path / "tz", tmp_path / "tetris")
    assert "recorded as 'tetris-zoo'" in named.stdout and (Zoo(tmp_path / "tz").manifest["task"] == "tetris-zoo").all()
    before = (zoo / "manifest.parquet").read_bytes()
    again = run_peace("zoo", "add", zoo, src, check=False)  # a run's shard is written once: never overwritten
    assert again.returncode == 2 and "is already in the zoo" in again.stderr
    assert (zoo / "manifest.parquet").read_bytes() == before and len(Zoo(zoo)) == 12


def test_published_zoos_that_peace_cannot_read_are_refused_by_name(tmp_path):
    _trial(tmp_path / "elu", "t", 0, nlin="elu")
    p = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "elu", check=False)
    assert p.returncode == 2 and "model::nlin 'elu' is not an activation PEACE models" in p.stderr
    assert not (tmp_path / "zoo").exists()
    gelu = tmp_path / "gelu" / "t"
    (gelu / "checkpoint_000000").mkdir(parents=True)
    (gelu / "params.json").write_text(json.dumps({"model::type": "CNN", "model::nlin": "gelu"}))
    torch.save(_zoo_cnn().state_dict(), gelu / "checkpoint_000000" / "checkpoints")
    refused = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "gelu", check=False)
    assert refused.returncode == 2 and "max pooling before gelu is not the same function" in refused.stderr
    _trial(tmp_path / "ok", "t", 0)
    torch.save(nn.Linear(16, 4).state_dict(), tmp_path / "file.pt")
    mixed = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "ok", tmp_path / "file.pt", check=False)
    assert mixed.returncode == 2 and "file.pt is not a published zoo" in mixed.stderr
    (tmp_path / "ok" / "t" / "result.json").write_text('{"training_iteration": 1}\nnot json\n')
    broken = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "ok", check=False)
    assert broken.returncode == 2 and "result.json, line 2: not a JSON line of metrics" in broken.stderr
    (tmp_path / "ok" / "t" / "result.json").write_text('{"training_iteration": 1, "test_acc": ' + "[" * 100_000 + "\n")
    deep = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "ok", check=False)
    assert deep.returncode == 2 and "line 1: not a JSON line of metrics" in deep.stderr and "Traceback" not in deep.stderr
    (tmp_path / "ok" / "t" / "result.json").write_text('{"training_iteration": 1, "test_acc": 1' + "0" * 400 + "}\n")
    assert "test_acc" not in tune_checkpoints(tmp_path / "ok")[0].metadata  # a number past float: unknown, no crash
    outside = tmp_path / "ok" / "t" / "checkpoint_000001" / "checkpoints"
    outside.unlink()
    outside.symlink_to(tmp_path / "file.pt")  # a stranger's zoo naming a file outside it
    leaked = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "ok", check=False)
    assert leaked.returncode == 2 and "leads out of" in leaked.stderr and not (tmp_path / "zoo").exists()


def test_an_encoder_trains_on_a_published_zoo_and_peace_evaluate_reads_its_single_task(tmp_path):
    """A seed zoo of one task nobody here holds data for: training leaves out the views that need its data (and
    says so), validation is by lineage, and the evaluation reports what one task allows (lineage retrieval,
    probes of the recorded accuracy) with task retrieval and clustering n/a instead of failing."""
    for s in range(16):
        _trial(tmp_path / "seeds", f"NN_tune_trainable_{s:05d}", s, epochs=3)
    a = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "seeds")
    assert "... and 44 more" in a.stdout and len(a.stdout.splitlines()) == 1 + 1 + 20 + 2  # read, header, 20, more, made
    t = run_peace("train", "--zoo", tmp_path / "zoo", "--config", "tiny", "--out", tmp_path / "run", "--set",
                  "train.epochs=1", "train.holdout_tasks=0", "train.val_relevance=lineage", "train.val_fraction=0.25",
                  "train.test_fraction=0.25", "augment.functional=false")
    assert "peace: note: pruned and distilled views need a task's training data, which PEACE does not hold for " \
           "seeds" in t.stderr
    run_peace("evaluate", "--run", tmp_path / "run", "--out", tmp_path / "eval", "--transfer-epochs", "0",
              "--accuracy-epochs", "0", "--probegen-steps", "0", "--quiet")
    peace = json.loads((tmp_path / "eval" / "metrics.json").read_text())["methods"]["peace"]
    assert np.isnan(peace["retrieval_task"]["map"]) and peace["retrieval_task"]["n_queries"] == 0
    assert np.isnan(peace["clustering_task"]["nmi"]) and 0 < peace["retrieval_lineage"]["map"] <= 1
    assert "test_acc" in peace["probes"] and np.isfinite(peace["probes"]["test_acc"]["r2"])
    # the decoder reads the probes where the task's data is not here, and judges by agreement with the originals
    d = run_peace("decoder", "--run", tmp_path / "run", "--epochs", "3", "--min-models", "4", "--quiet")
    header, row = (line.split() for line in d.stdout.splitlines()[-4:-1:2])  # the summary's header and "all" row
    cells = dict(zip(header, row))
    assert row[:2] == ["all", "all"] and int(cells["models"]) > 0
    assert cells["original_acc"] == cells["decoded_acc"] == cells["decoded_kept"] == "NaN"  # no data: n/a, not 0
    assert 0 <= float(cells["decoded_agreement"]) <= 1 and 0 <= float(cells["refined_agreement"]) <= 1
    s = run_peace("sample", "--run", tmp_path / "run", "--prompt", "epoch == 3", "--n", "4", "--out", tmp_path / "new")
    assert "unmeasured (PEACE holds no data for this task" in s.stdout
    new = Zoo(tmp_path / "new").manifest
    assert len(new) == 4 and (new["status"] == "sampled").all() and (new["task"] == "seeds").all()
    refused = run_peace("sample", "--run", tmp_path / "run", "--prompt", "epoch == 3", "--n", "4", "--candidates", "5",
                        "--out", tmp_path / "new2", check=False)
    assert refused.returncode == 2 and "which PEACE does not hold for this zoo's task" in refused.stderr


def test_the_published_cnn_zoos_are_read_exactly(tmp_path):
    """A trial of the zoos' CNN (MNIST-sized): read with valid padding, its poolings and a 1x28x28 input, computing
    what the saved module computes; --input-shape overrides the guessed input."""
    torch.manual_seed(0)
    net = _zoo_cnn().eval()
    d = tmp_path / "mnist_cnn" / "trial"
    (d / "checkpoint_000001").mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({"model::type": "CNN", "model::nlin": "tanh", "model::channels_in": 1}))
    torch.save({f"module_list.{i}.{k}": v for i, m in enumerate(net) for k, v in m.state_dict().items()},
               d / "checkpoint_000001" / "checkpoints")
    (c,) = tune_checkpoints(tmp_path / "mnist_cnn")
    assert c.config == {"activation": "tanh", "padding": "valid", "pools": ["max", "max", "none"],
                        "input_shape": [1, 28, 28]} and c.epoch == 1
    run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "mnist_cnn")
    z = Zoo(tmp_path / "zoo")
    (mid,) = z.manifest.index
    spec = z.spec(mid)
    assert spec.describe() == "cnn2d c8-6-4/20/k5-5-2/max-max-none/valid tanh"
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(forward(spec, {k: v[None] for k, v in z.weights(mid).items()}, x)[0], net(x),
                               atol=1e-5, rtol=1e-5)
    wrong = run_peace("zoo", "add", "--new", tmp_path / "zoo2", tmp_path / "mnist_cnn", "--input-shape", "1,32,32",
                      check=False)
    assert wrong.returncode == 2 and "layer 'module_list.9' has weight shape (20, 36)" in wrong.stderr
