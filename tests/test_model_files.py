"""Model files from strangers: safetensors / state dicts / hub-style directories / scikit-learn,
crafted malicious pickles (nothing may execute), and every kind of broken file."""
import builtins
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from peace.core.atomic import sha256_file, write_json
from peace.core.errors import PeaceError
from peace.intake.importers import from_state_dict, load_model, read_tensors
from peace.intake.model import Limits
from peace.intake.modules import from_sklearn
from peace.nets.architectures import forward
from peace.zoo.store import Zoo


def _run(spec, params, x):
    return forward(spec, {k: v[None] for k, v in params.items()}, x)[0]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 4))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 10))


def _save(kind, state, path):
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "zip":
        torch.save(state, path)
    else:  # the legacy (pre-1.6) PyTorch format
        torch.save(state, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("kind", ["safetensors", "zip", "legacy"])
@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".bin", ".weights"])  # the extension never decides
def test_state_dict_files_are_read_exactly(tmp_path, kind, ext):
    net = _mlp()
    _save(kind, net.state_dict(), tmp_path / f"m{ext}")
    m = load_model(tmp_path / f"m{ext}", {"activation": "tanh"})
    x = torch.randn(7, 16)
    assert m.spec.describe() == "mlp 16-12-12-4 tanh"
    torch.testing.assert_close(_run(m.spec, m.params, x), net(x), atol=1e-5, rtol=1e-5)


def test_directories_wrapped_checkpoints_and_cnns(tmp_path):
    net = _cnn()
    (tmp_path / "repo").mkdir()
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, tmp_path / "repo" / "checkpoint.pth")
    write_json(tmp_path / "repo" / "config.json", {"family": "cnn2d", "input_shape": [1, 8, 8], "activation": "relu",
                                                   "pool": "max", "metadata": {"task": "digits"}})
    m = load_model(tmp_path / "repo")
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(_run(m.spec, m.params, x), net(x), atol=1e-5, rtol=1e-5)
    assert m.metadata == {"task": "digits"} and m.spec.fc_hidden == (8,)
    # layer names are ordered naturally: layers.10 after layers.2 (safetensors stores keys sorted as text)
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(11)], nn.Linear(4, 3))
    save_file({k: v.contiguous() for k, v in deep.state_dict().items()}, str(tmp_path / "deep.safetensors"))
    d = load_model(tmp_path / "deep.safetensors", {"activation": "identity"})
    torch.testing.assert_close(_run(d.spec, d.params, torch.eye(4)), deep(torch.eye(4)), atol=1e-5, rtol=1e-5)


class _Named(nn.Module):
    """Layers whose names sort out of order (a common tutorial's naming), one BatchNorm named before its layer."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.input_fc = nn.Linear(16, 12)
        self.bn = nn.BatchNorm1d(12) if bn else None  # defined (so saved) right after the layer it follows
        self.hidden_fc, self.output_fc = nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.input_fc(x)
        return self.output_fc(torch.tanh(self.hidden_fc(torch.tanh(self.bn(h) if self.bn else h))))


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
@pytest.mark.parametrize("bn", [False, True])
def test_layers_named_out_of_order_are_read_in_saved_or_shape_order(tmp_path, kind, bn):
    torch.manual_seed(0)
    net = _Named(bn).eval()
    if bn:
        net.bn.running_mean += torch.randn(12)
    _save(kind, net.state_dict(), tmp_path / "m")
    if kind == "safetensors" and bn:  # no saved order and a norm layer: the shapes cannot place it
        with pytest.raises(PeaceError, match="'bn' must follow a Linear.*read in name order, in the order the file "
                                             "saved them, and by their shapes; name them in order"):
            load_model(tmp_path / "m", {"activation": "tanh"})
        return
    m = load_model(tmp_path / "m", {"activation": "tanh"})
    assert m.spec.describe() == "mlp 16-12-8-3 tanh"
    x = torch.randn(6, 16)
    torch.testing.assert_close(_run(m.spec, m.params, x), net(x), atol=1e-5, rtol=1e-5)


def test_layers_whose_order_nothing_tells_are_refused_with_the_fix(tmp_path):
    layers = {"x": nn.Linear(16, 8), "y": nn.Linear(8, 8), "w": nn.Linear(8, 8), "z": nn.Linear(8, 3)}
    save_file({f"{n}.{k}": v.contiguous() for n, m in layers.items() for k, v in m.state_dict().items()},
              str(tmp_path / "m.safetensors"))  # y and w chain either way round: two orders fit
    with pytest.raises(PeaceError, match="do not chain.*name them in order, layers.0, layers.1"):
        load_model(tmp_path / "m.safetensors", {"activation": "relu"})


def test_a_whole_pickled_model_is_refused_as_such(tmp_path):
    torch.save(_mlp(), tmp_path / "model.pt")
    with pytest.raises(PeaceError, match=r"refused: the file stores Python objects \(torch\.nn\.modules\.container"
                                         r"\.Sequential\), not only tensors \(a whole model, saved with torch.save"
                                         r"\(model\)\).*torch.save\(model.state_dict\(\), path\)") as e:
        load_model(tmp_path / "model.pt", {"activation": "tanh"})
    assert "corrupted" not in str(e.value)


@pytest.mark.parametrize("cls,activation", [("MLPClassifier", "relu"), ("MLPClassifier", "logistic"),
                                            ("MLPRegressor", "tanh")])
def test_scikit_learn_mlps(cls, activation):
    import warnings

    from sklearn import neural_network
    from sklearn.datasets import load_wine
    X, y = load_wine(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    est = getattr(neural_network, cls)(hidden_layer_sizes=(7, 5), activation=activation, max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y if cls == "MLPClassifier" else np.stack([y, -y], 1).astype(float))
    m = from_sklearn(est)
    out = _run(m.spec, m.params, torch.tensor(X, dtype=torch.float32)).numpy()
    if cls == "MLPClassifier":
        assert (est.classes_[out.argmax(1)] == est.predict(X)).all()
    else:
        np.testing.assert_allclose(out, est.predict(X), atol=1e-4)
    with pytest.raises(PeaceError, match="not fitted"):
        from_sklearn(getattr(neural_network, cls)())


class _Payload:
    """Unpickling this runs ``call(arg)``: writes the marker file if anything executes it."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("name", ["evil.pt", "evil.pkl", "evil.bin", "evil.safetensors", "evil.pth"])
@pytest.mark.parametrize("how", ["pickle", "torch-zip", "torch-legacy"])
@pytest.mark.parametrize("call", ["system", "exec"])
def test_malicious_pickles_never_run(tmp_path, name, how, call):
    marker = tmp_path / "pwned"
    payload = (_Payload(os.system, f"touch {marker}") if call == "system"
               else _Payload(builtins.exec, f"open({str(marker)!r}, 'w').write('x')"))
    obj = {"layers.0.weight": torch.zeros(2, 2), "layers.0.bias": payload}
    path = tmp_path / name
    if how == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=how == "torch-zip")
    with pytest.raises(PeaceError, match="refused: the file stores Python objects"):
        load_model(path, {"activation": "relu"})
    assert not marker.exists()


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "truncated safetensors": (lambda p: (_save("safetensors", _mlp().state_dict(), p), _truncated(p)),
                              "corrupted or truncated safetensors"),
    "truncated zip": (lambda p: (_save("zip", _mlp().state_dict(), p), _truncated(p)), "corrupted or truncated PyTorch"),
    "text": (lambda p: p.write_text("hello, I am not a model"), "neither a safetensors file nor a PyTorch state dict"),
    "integer weights": (lambda p: _save("safetensors", {"0.weight": torch.ones(3, 2, dtype=torch.int64),
                                                        "1.weight": torch.ones(2, 3, dtype=torch.int64)}, p),
                        "tensor '0.weight' has dtype torch.int64"),
    "nan": (lambda p: _save("zip", {"0.weight": torch.tensor([[float("nan"), 1.0]]), "1.weight": torch.ones(2, 1)}, p),
            "tensor '0.weight' has NaN or Inf"),
    "no chain": (lambda p: _save("zip", {"a.weight": torch.ones(5, 3), "b.weight": torch.ones(2, 4)}, p),
                 "do not chain: 'a' has 5 outputs but 'b' takes 4"),
    "batchnorm first": (lambda p: _save("zip", nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 4), nn.Linear(4, 2)).state_dict(), p),
                        "BatchNorm '0' must follow a Linear or Conv layer"),
    "batchnorm of another width": (lambda p: _save("zip", {"0.weight": torch.ones(4, 3), "1.running_mean": torch.zeros(5),
                                                           "1.running_var": torch.ones(5), "2.weight": torch.ones(2, 4)}, p),
                                   "running statistics shaped \\(5,\\)"),
    "layer norm": (lambda p: _save("zip", nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).state_dict(), p),
                   "layer '1' has a 1-D weight"),
    "not a state dict": (lambda p: torch.save([torch.ones(2)], p), "expected a state dict"),
    "empty state dict": (lambda p: torch.save({}, p), "expected a state dict"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_get_errors_naming_file_and_problem(tmp_path, case):
    make, msg = BROKEN[case]
    path = tmp_path / "model.bin"
    make(path)
    with pytest.raises(PeaceError, match=msg) as e:
        load_model(path, {"activation": "relu"})
    assert str(path) in str(e.value)


def test_what_the_weights_cannot_tell_and_limits(tmp_path):
    _save("zip", _mlp().state_dict(), tmp_path / "m.pt")
    with pytest.raises(PeaceError, match="do not say which activation.*--activation"):
        load_model(tmp_path / "m.pt")
    with pytest.raises(PeaceError, match="unknown key in the model config.*'activaton'"):
        load_model(tmp_path / "m.pt", {"activaton": "relu"})
    with pytest.raises(PeaceError, match="over the 0 MiB limit.*--max-size"):
        load_model(tmp_path / "m.pt", {"activation": "relu"}, Limits(max_bytes=100))
    _save("zip", _cnn().state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(PeaceError, match="CNN's input_shape is not in its weights"):
        load_model(tmp_path / "cnn.pt", {"activation": "relu", "pool": "max"})
    with pytest.raises(PeaceError, match="needs .*check input_shape and pool"):
        load_model(tmp_path / "cnn.pt", {"activation": "relu", "pool": "none", "input_shape": [1, 8, 8]})
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(tmp_path / "m.pt", repo / "a.pt")
    shutil.copy(tmp_path / "m.pt", repo / "b.safetensors")
    with pytest.raises(PeaceError, match=r"holds one weights file, found 2 \(a.pt, b.safetensors\).*pass the files"):
        load_model(repo, {"activation": "relu"})
    write_json(repo / "config.json", {"activation": "relu", "weights": "../m.pt"})
    with pytest.raises(PeaceError, match="points outside"):
        load_model(repo)
    (repo / "config.json").write_text("{not json")
    with pytest.raises(PeaceError, match="config.json: not valid JSON"):
        load_model(repo)


def test_a_manifest_cannot_point_outside_its_zoo(tiny_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    man = Zoo(zoo).manifest.reset_index(drop=True)
    man.loc[0, "shard"] = "../../etc/passwd"
    man.to_parquet(zoo / "manifest.parquet")
    info = json.loads((zoo / "zoo.json").read_text())
    write_json(zoo / "zoo.json", {**info, "manifest_sha256": sha256_file(zoo / "manifest.parquet")})
    with pytest.raises(PeaceError, match="weight shard .* points outside"):
        Zoo(zoo)
    for shard in ("shards/../../outside.safetensors", "shards/linked.safetensors"):  # up, or a link out of the zoo
        (tmp_path / "outside.safetensors").write_bytes(b"")
        (zoo / "shards" / "linked.safetensors").unlink(missing_ok=True)
        (zoo / "shards" / "linked.safetensors").symlink_to(tmp_path / "outside.safetensors")
        man.loc[0, "shard"] = shard
        man.to_parquet(zoo / "manifest.parquet")
        write_json(zoo / "zoo.json", {**info, "manifest_sha256": sha256_file(zoo / "manifest.parquet")})
        with pytest.raises(PeaceError, match="weight shard .* points outside"):
            Zoo(zoo)


names = st.text(st.sampled_from("ab.0123weightbias_"), min_size=0, max_size=12)
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)
dtypes = st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int32, torch.bool])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.dictionaries(names, st.tuples(shapes, dtypes, st.sampled_from([0.0, 1.0, float("nan"), float("inf")])),
                             max_size=5),
       activation=st.sampled_from([None, "relu", "tanh"]))
def test_property_any_state_dict_is_read_or_refused_clearly(state, activation):
    tensors = {k: torch.full(s, v).to(d) if d != torch.bool else torch.zeros(s, dtype=d) for k, (s, d, v) in state.items()}
    try:
        m = from_state_dict(tensors, {"activation": activation} if activation else {})
    except PeaceError:
        return
    x = torch.randn(3, *m.spec.input_shape)
    assert _run(m.spec, m.params, x).shape == (3, m.spec.n_classes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x10\x00\x00\x00\x00\x00\x00\x00{"]))
def test_property_random_bytes_are_refused_clearly(tmp_path_factory, data, prefix):
    path = tmp_path_factory.mktemp("bytes") / "model.safetensors"
    path.write_bytes(prefix + data)
    try:
        read_tensors(path)
    except PeaceError:
        pass


def test_zoo_add_appends_measured_models_and_survives_an_interruption(tiny_zoo, tmp_path):
    from conftest import run_peace

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    before = (zoo / "manifest.parquet").read_bytes()
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    p = run_peace("zoo", "add", zoo, tmp_path / "mine.safetensors", "--task", "synth-1", "--activation", "relu")
    z = Zoo(zoo)
    assert len(z) == len(tiny_zoo) + 1 and "added 1 model" in p.stdout
    row = z.manifest.iloc[-1]
    assert row["task"] == "synth-1" and row["group"] == "imported" and row["arch"] == "mlp 16-8-4 relu"
    from peace.zoo.tasks import load_task
    task = load_task("synth-1")
    X, y = (torch.from_numpy(a) for a in task.split("test"))
    assert row["test_acc"] == pytest.approx((net(X).argmax(1) == y).float().mean().item(), abs=1e-6)
    torch.testing.assert_close(z.weights(row["model_id"])["layers.0.weight"], net[0].weight.detach())
    again = run_peace("zoo", "add", zoo, tmp_path / "mine.safetensors", "--activation", "relu", check=False)
    assert again.returncode == 2 and "already in the zoo" in again.stderr
    # a crash after zoo.json was rewritten but before the manifest was: the zoo opens as it was before
    (zoo / "manifest.parquet").write_bytes(before)
    assert len(Zoo(zoo)) == len(tiny_zoo)
    wrong = run_peace("zoo", "add", zoo, tmp_path / "mine.safetensors", "--task", "digits", "--activation", "relu",
                      check=False)
    assert wrong.returncode == 2 and "does not fit task 'digits'" in wrong.stderr


def test_zoo_add_new_makes_a_zoo_of_the_files_alone_that_peace_embeds_and_queries(tiny_zoo, tiny_run, tmp_path):
    """Models made elsewhere, and nothing else: `peace zoo add --new` makes them a zoo with a built zoo's columns,
    which `peace embed` indexes and `peace query` searches (its default k on a set smaller than 10: every model)."""
    from conftest import run_peace

    from peace.serve.index import EmbeddingSet
    from peace.zoo.store import MANIFEST_COLUMNS

    files = []
    for seed in range(4):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
        files.append(tmp_path / f"m{seed}.pt")
        torch.save(net.state_dict(), files[-1])
    zoo = tmp_path / "mine"
    missing = run_peace("zoo", "add", zoo, *files, "--activation", "relu", check=False)
    assert missing.returncode == 2 and "pass --new" in missing.stderr and not zoo.exists()
    p = run_peace("zoo", "add", "--new", zoo, *files, "--task", "synth-1", "--activation", "relu")
    z = Zoo(zoo)
    assert len(z) == 4 and "made a zoo of 4 model(s)" in p.stdout and "peace embed --zoo" in p.stdout
    assert list(z.manifest.columns) == list(MANIFEST_COLUMNS) == list(tiny_zoo.manifest.columns)
    assert (z.manifest["task"] == "synth-1").all() and z.manifest["test_acc"].between(0, 1).all()
    assert z.manifest["epoch"].dtype == tiny_zoo.manifest["epoch"].dtype and z.info["recipe"] is None
    emb = tmp_path / "emb"
    run_peace("embed", "--zoo", zoo, "--run", tiny_run.path, "--out", emb, "--quiet")
    assert len(EmbeddingSet(emb)) == 4
    q = run_peace("query", files[0], "--embeddings", emb, "--activation", "relu")
    assert len(q.stdout.strip().splitlines()) == 2 + 4  # the file's line, the header, every model of the set
    assert q.stdout.splitlines()[2].split()[0] == z.manifest["model_id"].iloc[0]  # itself first
    for args, message in ((("--new", zoo, files[0]), "already holds a zoo; drop --new"),
                          (("--new", tmp_path, files[0]), "exists and is not empty")):
        again = run_peace("zoo", "add", *args, "--activation", "relu", check=False)
        assert again.returncode == 2 and message in again.stderr and len(Zoo(zoo)) == 4


def test_a_new_zoo_that_fails_to_be_made_leaves_no_directory(tmp_path):
    """The second file does not fit the task: nothing is made (the zoo is written beside and moved in at the end)."""
    from peace.intake.importers import load_model
    from peace.zoo.imported import add_models

    torch.manual_seed(0)
    models = []
    for i, net in enumerate((nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)),
                             nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)))):
        torch.save(net.state_dict(), tmp_path / f"m{i}.pt")
        models.append(load_model(tmp_path / f"m{i}.pt", {"activation": "relu"}))
    with pytest.raises(PeaceError, match="does not fit task 'synth-1'"):
        add_models(tmp_path / "mine", models, task="synth-1", new=True)
    assert not (tmp_path / "mine").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mine.new")]


def test_many_files_are_read_a_child_per_core_in_their_order_and_a_broken_one_is_named(tmp_path):
    from peace.intake.sandbox import load_models_isolated

    files = []
    for seed in range(5):
        torch.manual_seed(seed)
        files.append(tmp_path / f"m{seed}.pt")
        torch.save(nn.Sequential(nn.Linear(16, 8 + seed), nn.ReLU(), nn.Linear(8 + seed, 4)).state_dict(), files[-1])
    models = load_models_isolated(files, {"activation": "relu"}, workers=3)
    assert [tuple(m.spec.hidden) for m in models] == [(8 + s,) for s in range(5)]  # each file's model, in the files' order
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(PeaceError, match="broken.pt"):
        load_models_isolated([*files[:2], tmp_path / "broken.pt", *files[2:]], {"activation": "relu"})


def test_small_files_share_a_child_and_a_batch_that_dies_is_read_a_file_per_child(tmp_path, monkeypatch):
    """Checkpoints of a zoo are read in batches, one fork each; where a batch's child dies (crash, limit, time) its
    files are read again one per child, so that the file at fault is the one named."""
    import peace.intake.sandbox as sandbox

    files = []
    for seed in range(7):
        torch.manual_seed(seed)
        files.append(tmp_path / f"m{seed}.pt")
        torch.save(nn.Sequential(nn.Linear(16, 3 + seed), nn.ReLU(), nn.Linear(3 + seed, 4)).state_dict(), files[-1])
    monkeypatch.setattr(sandbox, "BATCH_FILES", 3)
    assert [len(b) for b in sandbox._batches(files)] == [3, 3, 1]
    calls, real = [], sandbox._load_batch

    def dying(paths, *args, **kw):  # every batch of more than one file dies as a crashed child would
        calls.append(len(paths))
        if len(paths) > 1:
            raise sandbox._BatchFailed("the isolated reader was killed by SIGSEGV")
        return real(paths, *args, **kw)

    monkeypatch.setattr(sandbox, "_load_batch", dying)
    models = sandbox.load_models_isolated(files, {"activation": "relu"}, workers=2)
    assert [m.spec.hidden for m in models] == [(3 + s,) for s in range(7)] and sorted(calls) == [1] * 7 + [3, 3]


def test_models_added_without_a_task_keep_the_manifests_number_columns_numbers(tiny_zoo, tmp_path):
    """No task: no accuracy. It is NaN in a float column (a zoo of such models alone had a column of None, read
    back as text, and the explorer's map and every '{:.3f}' of an accuracy failed on it), in a new zoo and in one
    that had accuracies; a model of no known task says so where its task's data is needed."""
    from peace.intake.model import ImportedModel
    from peace.zoo.imported import add_models

    from peace.intake.modules import from_module

    torch.manual_seed(0)
    model = ImportedModel(*from_module(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), (16,)), "mine")
    new = add_models(tmp_path / "new", [model], new=True)
    shutil.copytree(tiny_zoo.path, tmp_path / "old")
    old = add_models(tmp_path / "old", [model])
    for z in (new, old):
        m = z.manifest
        assert m["test_acc"].dtype == "float64" and np.isnan(m["test_acc"].iloc[-1]) and m["task"].iloc[-1] == "unknown"
        assert m["epoch"].dtype == "int64" and m["n_params"].dtype == "int64"
        with pytest.raises(PeaceError, match="added without --task.*peace zoo add --task NAME"):
            z.task(m["model_id"].iloc[-1])
    assert old.manifest["test_acc"].iloc[:-1].notna().all()  # the zoo's own models keep theirs
    # a manifest of models none of which was measured, written before (parquet keeps an all-None column as
    # nulls, read back as text) reads as numbers
    import pandas as pd
    before = pd.read_parquet(old.path / "manifest.parquet")
    before["test_acc"] = None
    before.to_parquet(old.path / "manifest.parquet")
    assert pd.read_parquet(old.path / "manifest.parquet")["test_acc"].dtype == object
    write_json(old.path / "zoo.json", {**old.info, "manifest_sha256": sha256_file(old.path / "manifest.parquet")})
    assert Zoo(old.path).manifest["test_acc"].dtype == "float64"
