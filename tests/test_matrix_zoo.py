"""Zoos published as one weight matrix (the Small CNN Zoo: weights.npy, layout.csv, metrics.csv.gz), written here
from torch modules in Keras' layouts (conv kernels height x width x in x out, dense kernels in x out), read by
`peace zoo add` into models that compute what the modules compute, with their runs, epochs, cards and results."""
import gzip

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_peace
from torch import nn

from peace.core.errors import PeaceError
from peace.intake.matrix_zoo import is_matrix_zoo, read_matrix_zoo
from peace.nets.architectures import forward
from peace.zoo.store import Zoo

STEPS = (0, 1, 86)


def _keras_cnn(act: type[nn.Module]) -> nn.Sequential:
    """The zoo's network: three unpadded 3x3 stride-2 convs of 16 channels, a global average, a dense layer."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, stride=2), act(), nn.Conv2d(16, 16, 3, stride=2), act(),
                         nn.Conv2d(16, 16, 3, stride=2), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _keras_tensors(net: nn.Sequential) -> list[tuple[str, np.ndarray]]:
    """The net's parameters as Keras keeps them, with Keras' variable names."""
    out, n = [], {"conv2d": 0, "dense": 0}
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            kind = "conv2d" if isinstance(m, nn.Conv2d) else "dense"
            name = f"sequential/{kind}{'_' + str(n[kind]) if n[kind] else ''}"
            n[kind] += 1
            w = m.weight.detach()
            out += [(f"{name}/kernel:0", (w.permute(2, 3, 1, 0) if w.dim() == 4 else w.T).numpy()),
                    (f"{name}/bias:0", m.bias.detach().numpy())]
    return out


def _write_zoo(d, nets: dict, dataset="cifar10", metrics=True):
    """A matrix zoo of ``nets`` ((run, step) -> module), rows in that order."""
    d.mkdir(parents=True)
    rows, layout, start = [], [], 0
    for name, t in _keras_tensors(next(iter(nets.values()))):
        layout.append({"varname": name, "start_idx": start, "end_idx": start + t.size, "size": t.size, "shape": str(t.shape)})
        start += t.size
    np.save(d / "weights.npy", np.stack([np.concatenate([t.ravel() for _, t in _keras_tensors(net)])
                                         for net in nets.values()]).astype(np.float32))
    pd.DataFrame(layout).to_csv(d / "layout.csv", index=False)
    for run, step in nets:
        rows.append({"config.activation": "tanh" if run % 2 else "relu", "config.dataset": dataset,
                     "config.dnn_architecture": "cnn", "config.dropout": 0.1, "config.l2reg": 1e-3,
                     "config.learning_rate": 0.003 * (run + 1), "config.optimizer": "adam", "config.random_seed": 42,
                     "config.w_init": "he_normal", "config.epochs": 86, "modeldir": f"/workdir/{run}", "step": step,
                     "test_accuracy": 0.1 + 0.005 * step, "test_loss": 2.0, "train_accuracy": 0.2, "train_loss": 1.9})
    if metrics:
        with gzip.open(d / "metrics.csv.gz", "wt") as f:
            pd.DataFrame(rows).to_csv(f, index=False)


def _nets(runs=3, make=_keras_cnn):
    nets = {}
    for run in range(runs):
        torch.manual_seed(run)
        net = make(nn.Tanh if run % 2 else nn.ReLU).eval()
        for step in STEPS:
            nets[(run, step)] = net
            net = _moved(net)
    return nets


def _moved(net: nn.Module) -> nn.Module:
    """A copy of ``net`` one training step on (its weights perturbed)."""
    import copy

    new = copy.deepcopy(net)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return new


def test_the_small_cnn_zoo_is_read_exactly_with_its_runs_epochs_cards_and_results(tmp_path):
    nets = _nets()
    _write_zoo(tmp_path / "cifar10", nets)
    assert is_matrix_zoo(tmp_path / "cifar10") and not is_matrix_zoo(tmp_path)
    p = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "cifar10")
    assert "read 9 checkpoints of 3 runs" in p.stdout
    z = Zoo(tmp_path / "zoo")
    m = z.manifest
    assert m["run_id"].nunique() == 3 and sorted(m["epoch"].unique()) == list(STEPS) and (m["task"] == "cifar10").all()
    assert (m["n_params"] == 4970).all() and set(m["activation"]) == {"relu", "tanh"} and (m["epochs"] == 86).all()
    assert (m["weight_decay"] == 1e-3).all() and (m["optimizer"] == "adam").all() and (m["init"] == "he_normal").all()
    assert sorted(m["lr"].unique()) == pytest.approx([0.003, 0.006, 0.009])
    assert sorted(m["test_acc"].unique()) == pytest.approx([0.1, 0.105, 0.53])
    x = torch.randn(6, 1, 32, 32)
    for r in m.itertuples():  # each checkpoint computes what its module computes, in its run at its epoch
        run = round(r.lr / 0.003) - 1
        spec, w = z.spec(r.Index), z.weights(r.Index)
        assert spec.describe() == f"cnn2d c16-16-16/k3-3-3/none/valid/s2-2-2/global-avg {'tanh' if run % 2 else 'relu'}"
        torch.testing.assert_close(forward(spec, {k: v[None] for k, v in w.items()}, x)[0], nets[(run, r.epoch)](x),
                                   atol=1e-5, rtol=1e-5)
    last = run_peace("zoo", "add", "--new", tmp_path / "last", tmp_path / "cifar10", "--last-only", "--runs", "2")
    assert "note: " in last.stdout and "2 of 3 runs" in last.stdout
    assert sorted(Zoo(tmp_path / "last").manifest["epoch"]) == [86, 86]


def test_a_dense_zoo_a_foreign_dataset_and_diverged_rows(tmp_path):
    """The zoo code's "fcn" networks (a flatten, dense layers) read as MLPs; a dataset the code does not name needs
    --input-shape; rows of NaN weights are left out, said so, the rest read."""
    def fcn(act):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), act(), nn.Linear(16, 10))
    nets = _nets(2, fcn)
    _write_zoo(tmp_path / "mnist", nets, dataset="mnist")
    (read,) = [read_matrix_zoo(tmp_path / "mnist")]
    spec = read.models[0].spec
    assert spec.describe() == "mlp 784-16-10 relu" and spec.input_shape == (1, 28, 28)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(forward(spec, {k: v[None] for k, v in read.models[0].params.items()}, x)[0],
                               nets[(0, 0)](x), atol=1e-5, rtol=1e-5)
    _write_zoo(tmp_path / "quickdraw", _nets(1), dataset="quickdraw")
    with pytest.raises(PeaceError, match="input shape is not known for dataset 'quickdraw'.*--input-shape 1,32,32"):
        read_matrix_zoo(tmp_path / "quickdraw")
    assert read_matrix_zoo(tmp_path / "quickdraw", {"input_shape": [1, 24, 24]}).models[0].spec.input_shape == (1, 24, 24)
    w = np.load(tmp_path / "mnist" / "weights.npy")
    w[4, 7] = np.nan
    np.save(tmp_path / "mnist" / "weights.npy", w)
    read = read_matrix_zoo(tmp_path / "mnist")
    assert len(read.models) == 5 and "1 checkpoint(s) with NaN or infinite weights left out (matrix rows 4)" in read.notes[0]
    no_metrics = tmp_path / "bare"
    _write_zoo(no_metrics, _nets(1), metrics=False)
    with pytest.raises(PeaceError, match="input shape is not known"):
        read_matrix_zoo(no_metrics)
    bare = read_matrix_zoo(no_metrics, {"input_shape": [1, 32, 32]})
    assert len(bare.models) == 3 and bare.models[0].inferred == {"activation": "relu"}


@pytest.mark.parametrize("damage, message", [
    ("garbage", "not a readable .npy matrix"),
    ("truncate", "the file is truncated or corrupted"),
    ("objects", "holds an array of object"),
    ("ints", "holds an array of int64"),
    ("width", "rows of 4970 weights, but layout.csv lays out 4971"),
    ("rows", "metrics has 8 rows but weights.npy 9"),
    ("twice", "metrics rows 0 and 1 are both run '/workdir/0' at step 0"),
    ("gap", "each tensor must follow the last"),
    ("shape", "a tuple of them"),
    ("batchnorm", "no batch normalization"),
    ("activation", "activation 'selu' is not one PEACE models"),
])
def test_damaged_or_unreadable_matrix_zoos_are_refused_by_name_and_nothing_is_written(tmp_path, damage, message):
    d = tmp_path / "cifar10"
    _write_zoo(d, _nets())
    layout, weights = pd.read_csv(d / "layout.csv"), d / "weights.npy"
    if damage == "garbage":
        weights.write_bytes(b"\x93NUMPY\x01\x00" + b"\xff" * 64)
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:50_000])
    elif damage == "objects":
        np.save(weights, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif damage == "ints":
        np.save(weights, np.zeros((9, 4970), dtype=np.int64))
    elif damage in ("width", "gap", "shape", "batchnorm"):
        if damage == "width":
            layout.loc[7, ["end_idx", "size", "shape"]] = [4971, 11, "(11,)"]
        elif damage == "gap":
            layout.loc[3, "start_idx"] += 1
        elif damage == "shape":
            layout.loc[0, "shape"] = "__import__('os').system('id')"
        else:
            layout.loc[1, "varname"] = "sequential/batch_normalization/gamma:0"
        layout.to_csv(d / "layout.csv", index=False)
    elif damage in ("rows", "activation", "twice"):
        metrics = pd.read_csv(d / "metrics.csv.gz")
        if damage == "rows":
            metrics = metrics.iloc[:8]
        elif damage == "activation":
            metrics = metrics.assign(**{"config.activation": "selu"})
        else:  # run 0's step 1 recorded as step 0 again
            metrics.loc[1, "step"] = 0
        with gzip.open(d / "metrics.csv.gz", "wt") as f:
            metrics.to_csv(f, index=False)
    p = run_peace("zoo", "add", "--new", tmp_path / "zoo", d, check=False)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "zoo").exists()


def test_a_matrix_zoo_is_embedded_and_queried_like_any_zoo(tmp_path, tiny_run):
    _write_zoo(tmp_path / "svhn_cropped", _nets(2))
    run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "svhn_cropped", "--last-only")
    run_peace("embed", "--zoo", tmp_path / "zoo", "--run", tiny_run.path, "--out", tmp_path / "emb", "--quiet",
              "--no-baselines")
    assert not (tmp_path / "emb" / "baselines.npz").exists()  # left to the explorer's first visit
    z = Zoo(tmp_path / "zoo")
    q = run_peace("query", z.manifest.index[0], "--embeddings", tmp_path / "emb", "-k", "1")
    assert z.manifest.index[1] in q.stdout


def test_a_metrics_table_that_decompresses_past_the_cap_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from peace.intake import matrix_zoo

    d = tmp_path / "cifar10"
    _write_zoo(d, _nets(1))
    monkeypatch.setattr(matrix_zoo, "MAX_METRICS_BYTES", 2**20)
    with gzip.open(d / "metrics.csv.gz", "wb") as f:  # 20 KiB on disk
        f.write(b"0" * 2**21)
    with pytest.raises(PeaceError, match="over 1 MiB of text"):
        read_matrix_zoo(d)


def test_the_accuracy_peers_train_on_a_small_cnn_zoo(tmp_path):
    """NFN (its conv layers: the CNNs meet their dense layer through a global pool) and ProbeGen read the zoo's
    networks, as in their CIFAR10-GS benchmark; the study picks the largest such group."""
    from peace.evaluate.baselines import Models, WeightStats
    from peace.evaluate.prediction import PredictorConfig, accuracy_study

    _write_zoo(tmp_path / "cifar10", _nets(12))
    run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "cifar10")
    z = Zoo(tmp_path / "zoo")
    runs = sorted(z.manifest["run_id"].unique())
    train, val, test = (Models.from_zoo(z, list(z.manifest.index[z.manifest["run_id"].isin(part)]))
                        for part in (runs[:6], runs[6:9], runs[9:]))
    out = accuracy_study(train, val, test, [WeightStats().fit(train)], min_models=3,
                         config=PredictorConfig(channels=4, layers=1, head=8, epochs=2))
    assert out["arch"].startswith("cnn2d c16-16-16/k3-3-3/none/valid/s2-2-2/global-avg")
    assert {"nfn-hnp", "nfn-np", "probegen"} <= set(out["methods"])
    assert all(np.isfinite(out["methods"][peer]["kendall_tau"]) for peer in ("nfn-hnp", "nfn-np", "probegen"))


def test_a_directory_of_matrix_zoos_adds_each(tmp_path):
    """The Small CNN Zoo's archives unpack to a directory per dataset: their parent adds them all, each its task."""
    _write_zoo(tmp_path / "smallcnnzoo" / "cifar10", _nets(2))
    _write_zoo(tmp_path / "smallcnnzoo" / "svhn_cropped", _nets(1), dataset="svhn_cropped")
    p = run_peace("zoo", "add", "--new", tmp_path / "zoo", tmp_path / "smallcnnzoo", "--last-only")
    assert "holds the weight-matrix zoos cifar10, svhn_cropped: adding each" in p.stdout
    m = Zoo(tmp_path / "zoo").manifest
    assert sorted(m["task"]) == ["cifar10", "cifar10", "svhn_cropped"] and (m["epoch"] == 86).all()


def test_a_small_cnn_zoo_model_downloaded_as_a_folder_reads_back_the_same(tmp_path):
    """The folder the explorer writes (model.safetensors + config.json) says what the weights cannot: the strides,
    the valid padding and the global pool of the zoo's CNNs."""
    import json

    from safetensors.torch import save_file

    from peace.intake.importers import load_model
    from peace.serve.samples import folder_config

    _write_zoo(tmp_path / "cifar10", _nets(1))
    m = read_matrix_zoo(tmp_path / "cifar10").models[0]
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in m.params.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(folder_config(m.spec)))
    back = load_model(folder)
    assert back.spec == m.spec and all(torch.equal(back.params[k], v) for k, v in m.params.items())
