"""The Streamlit explorer: every page through streamlit's AppTest on real tiny-zoo artifacts, the
Explorer computations it shows, and broken or missing artifacts."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from safetensors.torch import save_file

from peace.core.errors import PeaceError
from peace.serve.explore import Explorer

APP = str(ROOT / "explorer" / "app.py")
PAGES = ["Map", "Neighbours", "Interpolation", "Generate", "Best for a task", "Ablations", "Symmetry lab",
         "Query your model"]
VIEWS = dict(zip(PAGES, ["views/map.py", "views/neighbours.py", "views/interpolation.py", "views/generate.py",
                         "views/rank.py", "views/ablations.py",
                         "views/symmetry_lab.py", "views/query.py"]))  # each page's own URL: /map, /neighbours, ...


def _app(root, monkeypatch, page=None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PEACE_ARTIFACTS", str(root))
    at = AppTest.from_file(APP, default_timeout=180).run()
    if page:
        at.switch_page(VIEWS[page]).run()
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(artifacts, monkeypatch, page):
    at = _app(artifacts, monkeypatch, page)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.sidebar.selectbox[0].value.name == "tiny"
    expected = {"Map": "Colour by", "Neighbours": "Query model (type to search)", "Interpolation": "Model A",
                "Generate": "Models to sample", "Best for a task": "Architecture",
                "Ablations": "Metric", "Symmetry lab": "Seed", "Query your model": "Activation"}[page]
    labels = [w.label for kind in ("selectbox", "number_input", "slider") for w in getattr(at, kind)]
    assert expected in labels, labels
    if page == "Interpolation":  # the default pair shares an architecture and a task: no warning, both paths
        a, b = (at.selectbox(key=k).value for k in ("interp_a", "interp_b"))
        assert a != b and not at.warning, [w.value for w in at.warning]


@pytest.fixture(scope="module")
def taskless(artifacts, tiny_zoo, tmp_path_factory):
    """An artifacts root whose one set is a zoo of models made elsewhere and added without a task (`peace zoo add
    --new`; here the tiny zoo's MLP weights under other names): no accuracy, no task data. Its run has a decoder."""
    import shutil

    from peace.intake.model import ImportedModel
    from peace.serve.export import export_embeddings
    from peace.zoo.imported import add_models

    root = tmp_path_factory.mktemp("taskless")
    shutil.copytree(artifacts / "runs" / "tiny", root / "runs" / "tiny")
    ids = tiny_zoo.manifest.query("family == 'mlp' and status == 'ok'")["model_id"][:6]
    models = [ImportedModel(tiny_zoo.spec(m), tiny_zoo.weights(m), f"made elsewhere {i}") for i, m in enumerate(ids)]
    add_models(root / "zoos" / "mine", models, new=True)
    export_embeddings(root / "runs" / "tiny", root / "embeddings" / "mine", zoo=root / "zoos" / "mine", trees=5,
                      progress=False)
    return root


@pytest.mark.parametrize("page", PAGES)
def test_every_page_takes_a_set_of_models_of_no_known_task(taskless, monkeypatch, page):
    """What needs a task's data (accuracy along a path, samples measured, the symmetry lab's losses) says why it is
    not shown; nothing raises."""
    at = _app(taskless, monkeypatch, page)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page in ("Interpolation", "Generate", "Symmetry lab"):
        assert any("added without --task" in w.value for w in [*at.warning, *at.info]), [w.value for w in at.warning]
    if page == "Map":  # a set of 6: the star's neighbours are the 5 others (10 asked), a search finds them
        at.text_input(key="map_find").set_value("mlp").run()
        assert not at.exception and any("its 5 nearest models" in i.value for i in at.info), [i.value for i in at.info]
    if page == "Neighbours":  # every method lists the other 5, never the query itself
        q = at.selectbox(key="query").value
        tables = [d.value for d in at.dataframe[:4]]
        assert all(len(t) == 5 and q not in set(t["model_id"]) for t in tables), [len(t) for t in tables]


@pytest.fixture(scope="module")
def single(artifacts, tiny_zoo, tmp_path_factory):
    """An artifacts root whose one set holds one model (of a task and architecture the run's decoder writes)."""
    import shutil

    from peace.intake.model import ImportedModel
    from peace.serve.export import export_embeddings
    from peace.zoo.imported import add_models

    root = tmp_path_factory.mktemp("single")
    shutil.copytree(artifacts / "runs" / "tiny", root / "runs" / "tiny")
    from peace.learn.generation import decoder_training_models

    row = next(r for r in tiny_zoo.manifest.query("family == 'mlp' and status == 'ok'").itertuples()
               if decoder_training_models(root / "runs" / "tiny", tiny_zoo.spec(r.model_id), r.task))
    model = ImportedModel(tiny_zoo.spec(row.model_id), tiny_zoo.weights(row.model_id), "one")
    add_models(root / "zoos" / "one", [model], task=row.task, new=True)
    export_embeddings(root / "runs" / "tiny", root / "embeddings" / "one", zoo=root / "zoos" / "one", trees=5,
                      progress=False)
    return root


@pytest.mark.parametrize("page", PAGES)
def test_every_page_takes_a_set_of_one_model(single, monkeypatch, page):
    """A set of one model: pages that compare models say they need two; the others work (Generate's prompt of
    one model had a slider from 1 to 1, which streamlit refuses)."""
    at = _app(single, monkeypatch, page)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error and not at.warning, [e.value for e in [*at.error, *at.warning]]
    if page in ("Neighbours", "Interpolation"):
        assert any("holds one model" in i.value for i in at.info), [i.value for i in at.info]


@pytest.fixture(scope="module")
def nomap(artifacts, tmp_path_factory):
    """An artifacts root whose one set was embedded without a map (`peace embed --no-umap`)."""
    import shutil

    from peace.serve.export import export_embeddings

    root = tmp_path_factory.mktemp("nomap")
    shutil.copytree(artifacts / "runs" / "tiny", root / "runs" / "tiny")
    export_embeddings(root / "runs" / "tiny", root / "embeddings" / "nomap", trees=5, umap=False, progress=False)
    return root


@pytest.mark.parametrize("page", PAGES)
def test_every_page_takes_a_set_embedded_without_a_map(nomap, monkeypatch, page):
    """The map, the path on the map and the samples on the map say how to make the set again with one; the rest
    of each page works (Map, Interpolation and Generate raised a KeyError on the missing coordinates)."""
    at = _app(nomap, monkeypatch, page)
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    if page in ("Map", "Interpolation", "Generate"):
        assert any("has no map" in i.value and "--no-umap" in i.value for i in at.info), [i.value for i in at.info]


def test_neighbour_query_returns_k_rows(artifacts, monkeypatch):
    at = _app(artifacts, monkeypatch, "Neighbours")
    at.slider[0].set_value(5).run()
    peace, function, stats, raw = (d.value for d in at.dataframe[:4])
    assert len(peace) == len(function) == len(stats) == len(raw) == 5
    assert (function["agreement"].dropna() >= 0).all()
    query = at.selectbox(key="query").value
    assert query not in set(peace["model_id"]) and peace["cosine"].is_monotonic_decreasing
    assert any("Same task among the top 5" in i.value for i in at.info)


def test_choices_survive_page_changes_and_live_in_the_url(artifacts, monkeypatch):
    from peace.serve.explore import typical_model

    at = _app(artifacts, monkeypatch, "Neighbours")
    picker = next(s for s in at.selectbox if s.label.startswith("Query model"))
    table = Explorer(artifacts / "embeddings" / "tiny").table
    assert picker.value == typical_model(table) and at.query_params["model"] == picker.value
    other = table["model_id"].iat[3]
    picker.set_value(other).run()
    assert at.query_params["model"] == other
    at.switch_page(VIEWS["Map"]).run()
    next(s for s in at.selectbox if s.label == "Colour by").set_value("test_acc").run()
    assert at.query_params["color"] == "test_acc"
    at.switch_page(VIEWS["Neighbours"]).run()  # the query model is remembered ...
    assert next(s for s in at.selectbox if s.label.startswith("Query model")).value == other
    at.switch_page(VIEWS["Map"]).run()  # ... and so is the colouring
    assert next(s for s in at.selectbox if s.label == "Colour by").value == "test_acc"
    shared = _app(artifacts, monkeypatch)  # a shared URL opens on its model
    shared.query_params["model"] = other
    shared.switch_page(VIEWS["Neighbours"]).run()
    assert next(s for s in shared.selectbox if s.label.startswith("Query model")).value == other


def test_pickers_of_a_big_set_list_its_map_and_open_any_model_by_url(artifacts, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "explorer"))
    import shared  # the module the app's pages import

    monkeypatch.setattr(shared, "MAX_PICKER", 20)  # the tiny set plays a big one
    at = _app(artifacts, monkeypatch, "Neighbours")
    picker = next(s for s in at.selectbox if s.label.startswith("Query model"))
    assert len(picker.options) <= 21 and any("Listing 20 of" in c.value for c in at.caption)
    table = Explorer(artifacts / "embeddings" / "tiny").table
    listed = {o.split(" · ")[0] for o in picker.options}
    outside = next(m for m in table["model_id"] if m not in listed)
    shared = _app(artifacts, monkeypatch)
    shared.query_params["model"] = outside
    shared.switch_page(VIEWS["Neighbours"]).run()
    assert next(s for s in shared.selectbox if s.label.startswith("Query model")).value == outside


def test_query_page_example_finds_the_model_it_shuffled(artifacts, monkeypatch):
    at = _app(artifacts, monkeypatch, "Query your model")
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    hits = at.dataframe[0].value
    original = at.success[0].value.split(" (hidden units shuffled)")[0]
    assert hits["model_id"].iat[0] == original and hits["cosine"].iat[0] > 0.999


def test_missing_and_broken_artifacts_say_what_to_run(artifacts, tmp_path, monkeypatch):
    at = _app(tmp_path / "nothing", monkeypatch)
    assert "No embedding sets" in at.warning[0].value and "./scripts/demo" in at.warning[0].value
    broken = tmp_path / "broken"
    shutil.copytree(artifacts, broken)
    with open(broken / "embeddings" / "tiny" / "embeddings.parquet", "ab") as f:
        f.write(b"garbage")
    at = _app(broken, monkeypatch)
    assert not at.exception
    assert "cannot be used" in at.error[0].value and "peace embed" in at.error[0].value


def test_the_map_search_stars_a_model_and_rings_its_neighbours(artifacts, monkeypatch):
    from peace.serve.explore import find_models, model_label

    table = Explorer(artifacts / "embeddings" / "tiny").table
    labels = pd.Series([model_label(r) for _, r in table.iterrows()], index=table["model_id"])
    target = table.iloc[5]
    assert find_models(labels, target["model_id"])[0] == target["model_id"]  # an exact id first
    words = f"{target['task'][:3].upper()} {target['arch']} epoch {target['epoch']}"  # starts of label words, any case
    found = find_models(labels, words)
    assert target["model_id"] in found and all(f" · {target['task']} · {target['arch']} · epoch {target['epoch']}"
                                               in labels[m] for m in found)
    assert find_models(labels, "no-such-model") == [] and find_models(labels, "  ") == []

    at = _app(artifacts, monkeypatch)
    at.text_input(key="map_find").set_value(target["model_id"]).run()
    names = [t.get("name") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert target["model_id"] in names and "10 nearest (PEACE)" in names
    at.text_input(key="map_find").set_value("no-such-model").run()
    assert any("No model on the map matches" in c.value for c in at.caption)
    at.text_input(key="map_find").set_value(target["task"]).run()  # several: pick one of them
    pick = at.selectbox(key="map_find_pick")
    assert len(pick.options) == min(200, (table["task"] == target["task"]).sum())


def test_map_filters_apply_while_on_and_are_remembered(artifacts, monkeypatch):
    table = Explorer(artifacts / "embeddings" / "tiny").table
    task = sorted(table["task"].unique())[0]

    def drawn(at) -> int:
        return sum(len(t.get("customdata", [])) for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"])

    at = _app(artifacts, monkeypatch)
    assert drawn(at) == len(table) and not at.multiselect  # off: every model, no filter widgets drawn
    at.toggle[0].set_value(True).run()
    next(m for m in at.multiselect if m.label == "Task").set_value([task]).run()
    assert drawn(at) == (table["task"] == task).sum()
    assert any(f"{(table['task'] == task).sum()} of {len(table)} models shown" in c.value for c in at.caption)
    at.toggle[0].set_value(False).run()
    assert drawn(at) == len(table)
    at.toggle[0].set_value(True).run()  # the filter comes back as it was
    assert next(m for m in at.multiselect if m.label == "Task").value == [task] and drawn(at) < len(table)


def test_the_map_opens_without_torch_or_scikit_learn_then_imports_them_for_the_other_pages(artifacts):
    """The page a first visit waits for: importing torch, scikit-learn and nbformat would add ~3 s; they are
    imported in the background once it is out. A fresh interpreter, so that no other test's imports count."""
    code = ("import sys\nfrom streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({APP!r}, default_timeout=120).run()\n"
            "assert not at.exception and not at.error and len(at.get('plotly_chart')) == 1\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy', 'nbformat', 'dgl') if m in sys.modules))\n"
            "import threading\n[t.join() for t in threading.enumerate() if isinstance(t, threading.Timer)]\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PEACE_ARTIFACTS": str(artifacts)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "['scipy', 'sklearn', 'torch']"], out.stdout  # then warmed


def test_the_neighbours_pages_baseline_vectors_are_read_without_torch_or_scikit_learn(artifacts):
    """A link to Neighbours on a cold server waits for what the page imports: reading the set's baseline vectors
    and ranking by them needs numpy alone (computing them imports torch and scikit-learn, ~1.5 s)."""
    emb = artifacts / "embeddings" / "tiny"
    code = ("import sys\nimport pandas as pd\nfrom peace.serve.baseline_vectors import BaselineVectors\n"
            f"t = pd.read_parquet({str(emb / 'embeddings.parquet')!r})\n"
            f"b = BaselineVectors.read({str(emb / 'baselines.npz')!r}, list(t['model_id']))\n"
            "hits = [b.neighbours(m, 0, 3, t) for m in b.methods]\n"
            "assert all(len(h) == 3 for h in hits) and len(b.agreement(0, [1, 2])) == 2\n"
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout


def _until(condition, timeout: float = 60.0) -> None:
    """Wait for a background thread's effect (a loaded machine may take long; a test must not guess how long)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the warm-up thread never got there"
        time.sleep(0.01)


def test_the_warm_up_works_once_the_server_is_idle_stops_when_a_run_starts_and_does_each_item_once():
    import threading

    from peace.serve.warm import WarmUp

    module, calls = "colorsys", []  # a standard module nothing here imports
    sys.modules.pop(module, None)
    warm = WarmUp((module,), idle_s=2.0)
    warm.arm(first=lambda: calls.append("first"))  # a run ended ...
    warm.hold()  # ... and the next began before the server was idle long enough
    time.sleep(2.5)
    assert module not in sys.modules and not warm.done and not calls

    started, release = threading.Event(), threading.Event()

    def slow():  # the item in progress when a run starts: it runs to its end, the next item waits
        calls.append("slow")
        started.set()
        release.wait(60)

    warm.idle_s = 0.05
    warm.arm(first=lambda: calls.append("again"), slow=slow, last=lambda: calls.append("last"))
    assert started.wait(60)  # idle: the import, then the items in order
    warm.hold()  # a run starts during "slow"
    release.set()
    _until(warm._idle.is_set)
    assert module in sys.modules and calls == ["first", "slow"] and warm.done == [f"import {module}", "first", "slow"]
    warm.hold()  # two users' runs overlap: the end of one does not start the work while the other runs
    warm.arm(slow=slow)
    time.sleep(0.5)
    assert calls == ["first", "slow"]
    warm.arm(slow=slow)  # both ended; done items are not done twice, the rest resumes
    _until(lambda: "last" in calls and warm._idle.is_set())
    assert calls == ["first", "slow", "last"] and not warm.todo

    ending, begun = WarmUp((), idle_s=0.05), threading.Event()  # at exit: the item in progress ends, no new one starts

    def ends_later():
        begun.set()
        time.sleep(0.3)
        calls.append("ended")

    ending.arm(slow=ends_later, after=lambda: calls.append("after"))
    assert begun.wait(60)
    ending.close()
    assert calls[-1] == "ended" and "after" not in calls
    ending.arm(again=lambda: calls.append("after close"))
    time.sleep(0.5)
    assert "after close" not in calls


def test_the_explorer_prefetches_what_its_pages_first_compute(artifacts):
    from peace.nets.probes import PROBE_SEED, _columns, _projection, io_space

    _projection.cache_clear(), _columns.cache_clear()  # as in a new server process
    ex = Explorer(artifacts / "embeddings" / "tiny")
    ex.prefetch()
    assert {"baselines", "encoder", "_path_cache"} <= set(vars(ex)) and len(ex._path_cache) == 1
    c, specs = ex.encoder.config, {ex.zoo.spec(m) for m in ex.table["model_id"]}
    before = _columns.cache_info()
    for space, classes in {(io_space(s), s.n_classes) for s in specs}:  # every space's block map built ahead
        _columns(space, c.probes * classes, c.function_block, PROBE_SEED, c.function_block_projection)
    assert _columns.cache_info().misses == before.misses and before.misses > 0


def test_a_stale_set_keeps_its_map_and_is_refused_where_its_zoo_or_encoder_is_used(artifacts, tmp_path, monkeypatch):
    stale = tmp_path / "stale"
    shutil.copytree(artifacts, stale)
    index, es = stale / "embeddings" / "tiny" / "index.json", Explorer(artifacts / "embeddings" / "tiny").es
    index.write_text(json.dumps({**json.loads(index.read_text()), "encoder_sha256": "0" * 64,  # retrained since
                                 "zoo": str(es.source("zoo")), "run": str(es.source("run"))}))
    at = _app(stale, monkeypatch)
    assert not at.exception and not at.error and len(at.get("plotly_chart")) == 1
    for page in ("Neighbours", "Interpolation", "Symmetry lab", "Query your model"):
        at = _app(stale, monkeypatch, page)
        assert not at.exception
        assert "stale" in at.error[0].value and "peace embed" in at.error[0].value, page


def test_explorer_computations(artifacts, tiny_zoo):
    ex = Explorer(artifacts / "embeddings" / "tiny")
    q = ex.table["model_id"].iat[0]
    for method in ("function", "stats", "raw"):
        hits = ex.baseline_neighbours(q, method, 4)
        assert len(hits) == 4 and q not in set(hits["model_id"]) and hits["cosine"].is_monotonic_decreasing
    fn = ex.baseline_neighbours(q, "function", 4)  # the function-space cosine is the agreement itself
    assert np.allclose(fn["cosine"], np.nan_to_num(ex.agreement(q, list(fn["model_id"])), nan=0.0), atol=1e-5)
    agree = ex.agreement(q, [q, *ex.table["model_id"][1:4]])
    assert agree[0] == 1.0 and all(np.isnan(a) or 0 <= a <= 1 for a in agree)
    lab = ex.symmetry_lab(q, permute=True, scale=False, flip=False, seed=1)
    assert lab["max_output_change"] < 1e-4 and lab["peace"] < 1e-4 and lab["raw"] > 100 * lab["peace"]
    resnet = ex.table.loc[ex.table["family"] == "resnet", "model_id"].iat[0]  # residual streams permuted and scaled
    for groups in (None, (0,)):  # every group, or the first stage's residual stream alone
        lab = ex.symmetry_lab(resnet, permute=True, scale=True, flip=False, seed=1, groups=groups)
        assert lab["max_output_change"] < 1e-3 and lab["peace"] < 1e-4 and lab["raw"] > 100 * lab["peace"]
    vit = ex.table.loc[ex.table["family"] == "vit", "model_id"].iat[0]
    for groups in (None, (0,), (2,)):  # everything, the residual stream, query/key pairs
        lab = ex.symmetry_lab(vit, permute=True, scale=True, flip=True, seed=3, groups=groups)
        assert lab["max_output_change"] < 1e-3 and lab["peace"] < 1e-4 and lab["raw"] > 100 * lab["peace"]
    same = ex.table.groupby("arch")["model_id"].apply(list)
    a, b = next(ids for ids in same if len(ids) > 1)[:2]
    paths = ex.weight_path(a, b, n_points=5)
    assert paths["aligned"]["map_xy"].shape == (5, 2) and len(paths["naive"]["loss"]) == 5
    path = ex.embedding_path(a, b, steps=5)
    assert path["model_id"].iat[0] == a and path["model_id"].iat[-1] == b


def test_a_wrong_activation_is_caught_on_the_zoo_tasks_data(artifacts, tmp_path):
    """A network trained with tanh, uploaded as a state dict (which cannot say its activation): with
    tanh it fits its task; any other choice scores far lower there, and the advice names tanh and the
    task (tasks that merely share its sizes score near chance and do not count)."""
    import dataclasses

    from peace.intake.importers import load_model
    from peace.serve.explore import activation_advice

    ex = Explorer(artifacts / "embeddings" / "tiny")
    mid = ex.table.loc[(ex.table["task"] == "tetris") & (ex.table["family"] == "mlp"), "model_id"].iat[0]
    task = ex.zoo.task(mid)
    X, y = torch.from_numpy(task.X_train).float().flatten(1), torch.from_numpy(task.y_train)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 32), torch.nn.Tanh(), torch.nn.Linear(32, task.n_classes))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "tanh.pt")
    m = load_model(tmp_path / "tanh.pt", {"activation": "tanh"})
    check = ex.activation_check(m.spec, m.params)
    assert "tetris" in set(check["task"]) and check.loc[check["chosen"], "activation"].tolist() == ["tanh"] * check["task"].nunique()
    assert activation_advice(check) is None
    told, _, _ = ex.query_file(tmp_path / "tanh.pt", {}, 3)  # a file that does not say: told by data
    assert told.spec.activation == "tanh" and told.inferred == {"activation": "tanh"}
    assert torch.equal(told.params["layers.0.weight"], m.params["layers.0.weight"])
    for wrong in ("relu", "sigmoid"):
        advice = activation_advice(ex.activation_check(dataclasses.replace(m.spec, activation=wrong), m.params))
        assert advice is not None and "tetris" in advice and f"with {wrong}" in advice and "trained with tanh" in advice
    torch.manual_seed(1)  # an untrained network fits no task: nothing to say whatever the choice
    torch.save(torch.nn.Sequential(torch.nn.Linear(X.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, task.n_classes))
               .state_dict(), tmp_path / "random.pt")
    m = load_model(tmp_path / "random.pt", {"activation": "sigmoid"})
    assert activation_advice(ex.activation_check(m.spec, m.params)) is None
    with pytest.raises(PeaceError, match="do not say which activation.*could not tell it from data"):
        ex.query_file(tmp_path / "random.pt", {})
    torch.save(torch.nn.Sequential(torch.nn.Linear(7, 3)).state_dict(), tmp_path / "other.pt")  # no zoo task's sizes
    m = load_model(tmp_path / "other.pt", {"activation": "relu"})
    assert ex.activation_check(m.spec, m.params).empty


def test_uploaded_files_are_queried_or_refused(artifacts, tmp_path):
    ex = Explorer(artifacts / "embeddings" / "tiny")
    mid = ex.table.loc[ex.table["family"] == "mlp", "model_id"].iat[0]
    spec = ex.zoo.spec(mid)
    save_file(ex.zoo.weights(mid), str(tmp_path / "up.safetensors"))
    m, hits, xy = ex.query_file(tmp_path / "up.safetensors", {"activation": spec.activation}, 3)
    assert hits["model_id"].iat[0] == mid and hits["cosine"].iat[0] > 0.9999 and xy.shape == (2,)
    torch.save({"0.weight": torch.ones(2, 2, dtype=torch.int64)}, tmp_path / "bad.pt")
    with pytest.raises(PeaceError, match="dtype torch.int64"):
        ex.query_file(tmp_path / "bad.pt", {"activation": "relu"})
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")  # unpadded: the page's CNN padding field says valid
    cfg = {"activation": "relu", "input_shape": [1, 8, 8], "pool": "none"}
    with pytest.raises(PeaceError, match=r"needs \(10, 256\)"):
        ex.query_file(tmp_path / "cnn.pt", cfg)
    m, hits, _ = ex.query_file(tmp_path / "cnn.pt", {**cfg, "padding": "valid"}, 3)
    assert m.spec.describe() == "cnn2d c4/k3/none/valid relu" and len(hits) == 3


def test_the_map_search_reads_field_words_and_says_how(artifacts, monkeypatch):
    from peace.serve.explore import find_models, model_label

    table = Explorer(artifacts / "embeddings" / "tiny").table
    labels = pd.Series([model_label(r) for _, r in table.iterrows()], index=table["model_id"])
    mlps = table[(table["task"] == "tetris") & (table["family"] == "mlp")]
    epoch = int(mlps["epoch"].max())
    found = find_models(labels, f"tetris mlp epoch {epoch}")  # the search box's own example, on this set
    assert sorted(found) == sorted(mlps.loc[mlps["epoch"] == epoch, "model_id"]) and found
    assert sorted(find_models(labels, "acc > 0.5")) == sorted(table.loc[table["test_acc"] > 0.5, "model_id"])
    assert sorted(find_models(labels, "tetris epoch>=1 acc<=0.4")) == sorted(
        table.loc[(table["task"] == "tetris") & (table["epoch"] >= 1) & (table["test_acc"] <= 0.4), "model_id"])
    assert find_models(labels, "tetris epoch 999") == []

    at = _app(artifacts, monkeypatch)
    at.text_input(key="map_find").set_value("tetris mlp epoch 999").run()
    captions = [c.value for c in at.caption]
    assert "Read as: words 'tetris', 'mlp'; epoch = 999." in captions and any("No model" in c for c in captions)


def test_a_shared_map_link_opens_on_its_model_and_a_bogus_one_is_named(artifacts, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PEACE_ARTIFACTS", str(artifacts))
    target = Explorer(artifacts / "embeddings" / "tiny").table["model_id"].iloc[7]
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["model"] = target
    at.run()
    names = [t.get("name") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert target in names and "10 nearest (PEACE)" in names  # starred and ringed on opening
    assert any(target in i.value for i in at.info)
    for page in (None, "views/neighbours.py"):
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params["model"] = "no-such-model"
        at.run()
        if page:
            at.switch_page(page).run()
        assert any("'no-such-model' is not in this set" in w.value for w in at.warning), page


def test_symmetry_lab_boxes_stay_as_set_and_the_caption_says_when_nothing_moves(artifacts, monkeypatch):
    at = _app(artifacts, monkeypatch, "Symmetry lab")
    relu = Explorer(artifacts / "embeddings" / "tiny").table.query("activation == 'relu' and family == 'mlp'")
    for box in at.checkbox:
        if not box.disabled:
            box.set_value(False)
    at.run()
    assert any("Every transform is off" in c.value for c in at.caption)
    assert all(m.value in ("0.00e+00", "0.0000") for m in at.metric)
    at.selectbox(key="sym_model").set_value(relu["model_id"].iloc[-1]).run()  # another model, scaling allowed
    assert not any(box.value for box in at.checkbox), [(b.label, b.value) for b in at.checkbox]


def test_the_palette_keeps_a_dozen_tasks_apart():
    import itertools

    from plotly.colors import hex_to_rgb

    from peace.serve.plots import PALETTE

    def lab(c):  # sRGB -> CIELAB (D65)
        r = np.array(hex_to_rgb(c)) / 255
        r = np.where(r > 0.04045, ((r + 0.055) / 1.055) ** 2.4, r / 12.92)
        xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ r
        f = lambda t: np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)  # noqa: E731
        x, y, z = f(xyz / np.array([0.95047, 1, 1.08883]))
        return np.array([116 * y - 16, 500 * (x - y), 200 * (y - z)])

    closest = min(np.linalg.norm(lab(a) - lab(b)) for a, b in itertools.combinations(PALETTE[:12], 2))
    assert closest >= 40, closest  # plotly's Dark24 (the old palette): 30, with two magentas
    assert len(set(PALETTE)) == len(PALETTE) == 24


def test_the_ablations_page_shows_the_evaluation_when_there_is_no_grid(artifacts, tmp_path, monkeypatch):
    """Issue 28: after the documented demo (no ablation grid) the page only said how to make one."""
    from peace.orchestrate.evaluation import evaluate

    (tmp_path / "embeddings").symlink_to(artifacts / "embeddings", target_is_directory=True)
    evaluate(artifacts / "runs" / "tiny", tmp_path / "evaluation" / "tiny", transfer=None, accuracy=None,
             probegen=0, progress=False)
    at = _app(tmp_path, monkeypatch, "Ablations")
    assert not at.exception and not at.info, [i.value for i in at.info]
    comparison = next(b for b in at.selectbox if b.label == "Comparison")
    assert comparison.options == ["evaluation tiny: PEACE and the baselines"]
    assert at.get("plotly_chart") and "peace" in at.dataframe[0].value.index
    assert any("No ablation grid yet" in c.value for c in at.caption)


def test_the_best_for_a_task_page_ranks_without_labels_and_compares_with_the_record(artifacts, monkeypatch):
    from peace.orchestrate.selection import rank_models

    at = _app(artifacts, monkeypatch, "Best for a task")
    at.selectbox(key="pref_rank_task").set_value("synth-1").run()
    assert not at.exception, [e.message for e in at.exception]
    shown = at.dataframe[0].value
    assert list(shown["rank"]) == list(range(1, len(shown) + 1)) and shown["score"].is_monotonic_decreasing
    info = at.info[0].value
    assert "inputs written by the better models" in info and "Kendall tau" in info
    ex = Explorer(artifacts / "embeddings" / "tiny")
    ids = " ".join(ex.table.loc[ex.table["task"] == "synth-1", "model_id"])
    assert list(shown["model_id"]) == list(rank_models(ex.zoo, ids)[0]["model_id"][:20])  # what `peace rank` says
    at.radio(key="pref_rank_read").set_value("Gaussian probes (weights only, quicker)").run()
    assert "ranked by consensus on Gaussian probe inputs" in at.info[0].value
    assert list(at.dataframe[0].value["model_id"]) == list(rank_models(ex.zoo, ids, probes=True)[0]["model_id"][:20])
    at.radio(key="pref_rank_read").set_value("the task's unlabelled inputs").run()
    assert "unlabelled test inputs of task 'synth-1'" in at.info[0].value
    assert len(at.get("plotly_chart")) == 1
    archs = at.selectbox(key="pref_rank_arch").options
    at.selectbox(key="pref_rank_arch").set_value(archs[1]).run()  # one architecture: fewer models, still ranked
    assert not at.exception and len(at.dataframe[0].value) <= len(shown)
    assert not at.warning  # synth-1's models are trained from scratch
    at.selectbox(key="pref_rank_arch").set_value("all").run()
    at.radio(key="pref_rank_read").set_value("inputs the models write (weights only)")
    at.selectbox(key="pref_rank_task").set_value("synth-2").run()  # fine-tunes of synth-1 models: said, weights only
    assert any("fine-tuned from models of synth-1" in w.value for w in at.warning), [w.value for w in at.warning]
    at.radio(key="pref_rank_read").set_value("the task's unlabelled inputs").run()
    assert not at.warning
