"""peace embed / query / evaluate on the tiny zoo: real UMAP, a real Annoy index, stale detection."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK, run_peace

from peace.core.errors import PeaceError
from peace.evaluate.metrics import cosine_similarity_matrix, normalize_rows
from peace.evaluate.prediction import PredictorConfig
from peace.learn.run import RunDir
from peace.learn.runconfig import load_config
from peace.learn.trainer import fit
from peace.orchestrate.evaluation import evaluate
from peace.serve.export import export_embeddings
from peace.serve.index import EmbeddingSet


@pytest.fixture(scope="module")
def embedding_set(tiny_run, tmp_path_factory):
    return export_embeddings(tiny_run.path, tmp_path_factory.mktemp("emb") / "tiny", trees=10, progress=False)


def test_embedding_set_contents(embedding_set, tiny_zoo, tiny_run):
    t = embedding_set.table
    ok = tiny_zoo.manifest[tiny_zoo.manifest.status == "ok"]
    assert len(t) == len(ok) and set(t.model_id) == set(ok.index)
    for col in ("umap_2d_x", "umap_2d_y", "umap_3d_z", "task", "test_acc", "split", "heldout_task", "arch"):
        assert col in t.columns and t[col].notna().all(), col
    assert embedding_set.embeddings.shape == (len(t), 16 + 16)  # learned part + function block
    info = json.loads((embedding_set.path / "index.json").read_text())
    assert info["encoder_sha256"] == RunDir(tiny_run.path).encoder_sha256() and info["metric"] == "angular"


def test_annoy_neighbours_match_exact_search(embedding_set):
    emb = embedding_set.embeddings
    sim = cosine_similarity_matrix(emb)
    np.fill_diagonal(sim, -np.inf)
    hits = 0
    for i, m in enumerate(embedding_set.table.model_id[:20]):
        nn = embedding_set.neighbours(m, 5)
        assert m not in set(nn.model_id) and len(nn) == 5
        assert (np.diff(nn.distance) >= -1e-6).all()
        hits += len(set(nn.model_id) & set(embedding_set.table.model_id[np.argsort(-sim[i])[:5]]))
        assert np.allclose(nn.cosine.iloc[0], sim[i].max(), atol=1e-4)
    assert hits / 100 >= 0.95
    with pytest.raises(PeaceError, match="k must be between 1 and"):
        embedding_set.neighbours(embedding_set.table.model_id[0], 10_000)
    with pytest.raises(PeaceError, match="not in the embedding set"):
        embedding_set.neighbours("nope", 3)


def test_stale_or_broken_sets_are_refused(embedding_set, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(embedding_set.path, copy)
    EmbeddingSet(copy).check_current(encoder_sha256=embedding_set.info["encoder_sha256"])
    with pytest.raises(PeaceError, match="another encoder.*stale"):
        EmbeddingSet(copy).check_current(encoder_sha256="0" * 64)
    info = json.loads((copy / "index.json").read_text())
    ann = (copy / "index.ann").read_bytes()
    (copy / "index.ann").write_bytes(ann[: len(ann) // 2])  # truncated
    with pytest.raises(PeaceError, match="index.ann does not match the checksum in index.json"):
        EmbeddingSet(copy)
    (copy / "index.ann").write_bytes(ann)
    for text, msg in (("{not json", "is not valid JSON"), ("{}", "lacks"), ("[]", "lacks"),
                      (json.dumps({**info, "dimension": 7}), "says dimension 7")):
        (copy / "index.json").write_text(text)
        with pytest.raises(PeaceError, match=msg):
            EmbeddingSet(copy)
    (copy / "index.json").write_text(json.dumps(info))
    t = embedding_set.table.iloc[::-1]
    t.to_parquet(copy / "embeddings.parquet")  # rows edited after the index was built
    with pytest.raises(PeaceError, match="embeddings.parquet does not match the checksum"):
        EmbeddingSet(copy)
    (copy / "index.json").unlink()
    with pytest.raises(PeaceError, match="missing index.json"):
        EmbeddingSet(copy)


def test_a_set_knows_its_run_and_zoo_from_any_directory(embedding_set, tiny_run, tiny_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # index.json's paths are relative to the set, not to where it was written from
    assert EmbeddingSet(embedding_set.path).source("run") == tiny_run.path.resolve()
    assert EmbeddingSet(embedding_set.path).source("zoo") == tiny_zoo.path.resolve()
    for out, msg in ((tiny_zoo.path / "emb", "inside the zoo"), (tiny_run.path, "is a training run"),
                     (tmp_path / "file", "is a file")):
        (tmp_path / "file").write_text("x")
        with pytest.raises(PeaceError, match=msg):
            export_embeddings(tiny_run.path, out, progress=False)
    assert not (tiny_zoo.path / "emb").exists()


@pytest.mark.slow
def test_evaluate_compares_every_method(tiny_run, tiny_zoo, tmp_path):
    mlp = fit(tiny_zoo, load_config("tiny", QUICK + ["encoder.kind=mlp", "encoder.max_params=512",
                                                     "encoder.function_tokens=false", "encoder.function_block=0"]),
              tmp_path / "mlp", progress=False)
    m = evaluate(tiny_run.path, tmp_path / "eval", mlp_run=mlp.path, progress=False,
                 accuracy=PredictorConfig(channels=4, layers=1, head=8, epochs=3, finetune_epochs=2))
    assert set(m["methods"]) == {"peace", "peace-learned", "mlp-encoder", "metadata", "raw", "stats", "pca", "function",
                              "probegen"}
    peace = m["methods"]["peace"]
    assert peace["invariance"]["ratio"] < 0.01  # exact invariance, measured through the whole pipeline
    assert m["methods"]["function"]["invariance"]["ratio"] == 0  # responses do not see weight-space symmetries
    for name in ("raw", "mlp-encoder"):  # flattened weights are not permutation invariant
        assert m["methods"][name]["invariance"]["ratio"] > 10 * peace["invariance"]["ratio"], name
    assert 0 < peace["retrieval_task"]["map"] <= 1 and "r2" in peace["probes"]["test_acc"]
    assert "map" in peace["retrieval_task_cross_arch"]
    sel = m["selection"]  # ranking the held-out tasks' models without their labels
    assert set(sel["tasks"]) <= set(m["heldout_tasks"]) and sel["n_models"] > 0
    assert set(sel["methods"]) == set(m["methods"]) | {"confidence (task's unlabelled inputs)",
                                                         "consensus (task's unlabelled inputs)",
                                                         "consensus (Gaussian probes, weights only)",
                                                         "probability of the written classes on inputs the models "
                                                         "write (weights only)"}
    assert all(np.isnan(t) or -1 <= t <= 1 for t in sel["methods"].values())
    from peace.serve.plots import selection_bars
    bars = selection_bars(sel).data[0]  # notebook 04's chart of the same table: best at the top, data signals marked
    assert list(bars.x) == sorted(bars.x) and set(bars.y) == {k for k, t in sel["methods"].items() if not np.isnan(t)}
    assert [c == "#ff7f0e" for c in bars.marker.color] == ["unlabelled inputs" in name for name in bars.y]
    study = m["accuracy_prediction"]  # NFN's setting, on the largest MLP architecture
    assert "skipped" in study or {"nfn-hnp", "nfn-np", "peace + ridge", "peace aux head",
                                  "peace fine-tuned"} <= set(study["methods"])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| peace |" in report and "| stats |" in report and "| function |" in report
    assert "cross-arch mAP" in report and "## Accuracy prediction" in report and "## Model selection" in report
    skipped = m["transfer"]["skipped"]  # tiny holds out tetris, which no other tiny task's models can read
    assert list(skipped) == m["heldout_tasks"] and "## Transfer learning" in report and "skipped" in report
    assert (tmp_path / "eval" / "retrieval.html").exists()


@pytest.mark.slow
def test_several_runs_give_mean_and_spread(tiny_run, tmp_path):
    from peace.orchestrate.evaluation import evaluate_runs

    copy = tmp_path / "b" / tiny_run.path.name  # the same run twice: zero spread, names kept apart
    shutil.copytree(tiny_run.path, copy)
    summary = evaluate_runs([tiny_run.path, copy], tmp_path / "eval", transfer=None, accuracy=None, probegen=0,
                            progress=False)
    assert (tmp_path / "eval" / "tiny-0" / "metrics.json").exists() and (tmp_path / "eval" / "tiny-1" / "report.md").exists()
    first, second = ({k: v for k, v in json.loads((tmp_path / "eval" / name / "metrics.json").read_text()).items()
                      if k != "run"} for name in ("tiny-0", "tiny-1"))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)  # every figure, not only these
    peace = summary[(summary.method == "peace") & (summary.metric == "task mAP")].iloc[0]
    assert peace["n"] == 2 and peace["std"] == pytest.approx(0, abs=1e-9)
    assert "± 0.000" in (tmp_path / "eval" / "summary.md").read_text()
    from peace.orchestrate.evaluation import summarize_evaluations  # the same from evaluations already written

    again = summarize_evaluations([tmp_path / "eval" / "tiny-0", tmp_path / "eval" / "tiny-1"], tmp_path / "again")
    pd.testing.assert_frame_equal(again, summary)
    with pytest.raises(PeaceError, match="no metrics.json"):
        summarize_evaluations([tmp_path / "nowhere"], tmp_path / "again")


@pytest.mark.slow
def test_embed_and_query_commands(tiny_run, tmp_path):
    run_peace("embed", "--run", tiny_run.path, "--out", tmp_path / "emb", "--no-umap", "--quiet")
    es = EmbeddingSet(tmp_path / "emb")
    p = run_peace("query", es.table.model_id[0], "--embeddings", tmp_path / "emb", "-k", "3")
    assert len(p.stdout.strip().splitlines()) == 4  # header + 3 neighbours
    bad = run_peace("query", "missing-model", "--embeddings", tmp_path / "emb", check=False)
    assert bad.returncode == 2 and "neither a model id of the embedding set" in bad.stderr


def test_metadata_probes_never_read_their_answer(tiny_run, tiny_zoo):
    from peace.evaluate.baselines import MetadataSearch, Models
    from peace.orchestrate.evaluation import REVEALS

    rows = tiny_zoo.manifest
    card_cols = MetadataSearch().columns
    for target, cols in REVEALS.items():
        kept = [c for c in card_cols if c not in cols]
        card = MetadataSearch(kept).cards(rows.reset_index(drop=True))[0]
        assert not any(f"{c}=" in card for c in cols), target
    models = Models.from_zoo(tiny_zoo, list(rows.index[:4]))
    assert "epoch=" not in MetadataSearch([c for c in card_cols if c != "epoch"]).cards(models.rows)[0]


def test_query_a_model_file(embedding_set, tiny_zoo, tmp_path):
    """`peace query FILE`: an outside copy of a zoo model finds that model first, at cosine 1; a model of another
    input -> class space, or far from every model, is noted as such."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    mid = embedding_set.table["model_id"].iat[3]
    spec = tiny_zoo.spec(mid)
    save_file(tiny_zoo.weights(mid), str(tmp_path / "mine.safetensors"))
    p = run_peace("query", tmp_path / "mine.safetensors", "--embeddings", embedding_set.path, "-k", "3",
                  "--activation", spec.activation, *(["--input-shape", ",".join(map(str, spec.input_shape)),
                                                      "--pool", spec.pool] if spec.family != "mlp" else []))
    first = p.stdout.splitlines()[2].split()
    assert first[0] == mid and float(first[1]) > 0.9999, p.stdout
    assert "note:" not in p.stdout  # its own space, and as close as can be
    torch.manual_seed(0)
    save_file(nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 5)).state_dict(), str(tmp_path / "other.safetensors"))
    other = run_peace("query", tmp_path / "other.safetensors", "--embeddings", embedding_set.path, "--activation", "relu")
    assert f"note: no model of the set maps 7 inputs to 5 classes (its spaces: {', '.join(embedding_set.io_spaces[:8])}" \
        in other.stdout, other.stdout
    from peace.serve.export import query_notes
    typical = embedding_set.typical_nearest_cosine
    assert 0 < typical <= 1 and query_notes(embedding_set, spec, pd.DataFrame({"cosine": [typical - 0.05]})) == []
    weak = query_notes(embedding_set, spec, pd.DataFrame({"cosine": [typical - 0.2]}))
    assert len(weak) == 1 and weak[0].startswith(f"a weak match: the nearest model is at cosine {typical - 0.2:.3f}")
    bad = run_peace("query", tmp_path / "mine.safetensors", "--embeddings", embedding_set.path, check=False)
    assert bad.returncode == 2 and "activation" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_peace("query", "no-such-model", "--embeddings", embedding_set.path, check=False)
    assert "neither a model id" in missing.stderr


def test_big_sets_map_a_sample_that_keeps_every_task():
    from peace.serve.export import map_sample

    task = pd.Series(["big"] * 90_000 + ["mid"] * 9_950 + ["small"] * 50)
    keep = map_sample(task, 1_000, seed=0)
    assert np.array_equal(keep, map_sample(task, 1_000, seed=0))  # deterministic
    per = task[keep].value_counts()
    assert per["small"] == 50 and per["mid"] == 200 and 880 <= per["big"] <= 920  # its share, a floor for small ones
    assert map_sample(task.iloc[:500], 1_000).all()


def test_a_set_bigger_than_its_map_sample(tiny_run, tmp_path, monkeypatch):
    from peace.serve.explore import Explorer
    from peace.serve.plots import embedding_map

    monkeypatch.setattr("peace.serve.export.MAP_SAMPLE", 30)
    es = export_embeddings(tiny_run.path, tmp_path / "emb", trees=10, progress=False)
    mapped = es.table["umap_2d_x"].notna()
    assert 30 <= mapped.sum() < len(es.table) and (mapped == es.table["umap_3d_z"].notna()).all()
    fig = embedding_map(es.table, "task")
    assert sum(len(t.x) for t in fig.data) == mapped.sum() and f"of {len(es.table)} models (a sample)" in fig.layout.title.text
    ex = Explorer(tmp_path / "emb")
    off_map = es.table.index[~mapped][0]
    assert np.isfinite(ex.map_position(es.embeddings[off_map])).all()  # placed by its mapped neighbours


def test_the_3d_view_draws_a_sample_the_2d_map_every_model():
    """A 3-D scene's set-up grows with its points where WebGL runs in software: the 3-D view draws at most
    MAX_POINTS_3D (a random sample, said in the title), the 2-D map every model."""
    from peace.serve.plots import MAX_POINTS_3D, embedding_map

    n = MAX_POINTS_3D + 500
    rng = np.random.default_rng(0)
    table = pd.DataFrame({c: rng.standard_normal(n) for c in ("umap_2d_x", "umap_2d_y", "umap_3d_x", "umap_3d_y",
                                                              "umap_3d_z")})
    table = table.assign(model_id=[f"m{i}" for i in range(n)], task=rng.choice(["a", "b", "c"], n),
                         test_acc=rng.random(n))
    flat, deep = embedding_map(table, "task"), embedding_map(table, "test_acc", dims=3)
    assert sum(len(t.x) for t in flat.data) == n and "(a sample)" not in flat.layout.title.text
    assert sum(len(t.x) for t in deep.data) == MAX_POINTS_3D
    assert f"{MAX_POINTS_3D:,} of {n:,} models (a sample)" in deep.layout.title.text
    small = embedding_map(table.iloc[:100], "task", dims=3)  # under the cap: every model
    assert sum(len(t.x) for t in small.data) == 100 and "(a sample)" not in small.layout.title.text


def test_the_sets_baseline_vectors_rank_as_the_baselines_do(embedding_set, tiny_zoo, tmp_path):
    from peace.evaluate.baselines import FunctionSpace, Models, RawWeights, WeightStats
    from peace.serve.baseline_vectors import BaselineVectors
    from peace.serve.index import BASELINES

    ids = list(embedding_set.table["model_id"])
    bv = BaselineVectors.read(embedding_set.path / BASELINES, ids)
    models = Models.from_zoo(tiny_zoo, ids)
    for method, baseline in (("function", FunctionSpace()), ("stats", WeightStats()), ("raw", RawWeights())):
        v = normalize_rows(baseline.fit(models).transform(models))
        for i in (0, 7, len(ids) - 1):
            np.testing.assert_allclose(bv.scores(method, i), v @ v[i], atol=1e-5, err_msg=method)
    ws = bv.weight_stats()  # the fitted s(W), rebuilt without weights
    np.testing.assert_allclose(ws.transform(models), WeightStats().fit(models).transform(models), atol=1e-5)
    copy = shutil.copytree(embedding_set.path, tmp_path / "copy")
    (copy / BASELINES).write_bytes(b"changed")
    with pytest.raises(PeaceError, match="baselines.npz does not match the checksum"):
        EmbeddingSet(copy)


def test_a_failed_rebuild_leaves_the_old_set_as_it_was(embedding_set, tiny_run, tmp_path, monkeypatch, capsys):
    import errno

    import peace.serve.index as index
    from peace.cli import main

    out = tmp_path / "set"
    shutil.copytree(embedding_set.path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    query = embedding_set.table.model_id[0]
    neighbours = EmbeddingSet(out).neighbours(query, 5).model_id.tolist()

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "index.ann"))

    monkeypatch.setattr(index, "build_annoy", full_disk)
    assert main(["embed", "--run", str(tiny_run.path), "--out", str(out), "--no-umap", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "peace: error:" in err and "No space left" in err and "free" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert EmbeddingSet(out).neighbours(query, 5).model_id.tolist() == neighbours
    assert not list(tmp_path.glob(".set.new-*"))  # the half-written new set is gone
    monkeypatch.undo()
    (out / "notes.txt").write_text("mine")  # a user's file in the set's directory: refused, never deleted
    with pytest.raises(PeaceError, match=r"holds files that are not part of an embedding set \(notes.txt\)"):
        export_embeddings(tiny_run.path, out, umap=False, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and EmbeddingSet(out)


def test_indices_are_reproducible_when_small_and_threaded_when_big(tmp_path, monkeypatch):
    from annoy import AnnoyIndex

    from peace.serve import index

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(60, 16)).astype(np.float32)
    x = normalize_rows(centers[rng.integers(60, size=3000)] + 0.3 * rng.normal(size=(3000, 16)).astype(np.float32))
    index.build_annoy(x, tmp_path / "a.ann", trees=10)
    index.build_annoy(x, tmp_path / "b.ann", trees=10)
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()  # one thread: the same file
    monkeypatch.setattr(index, "PARALLEL_BUILD", 1000)  # as a big set: every core builds trees
    index.build_annoy(x, tmp_path / "c.ann", trees=10)
    ann = AnnoyIndex(16, "angular")
    ann.load(str(tmp_path / "c.ann"))
    assert ann.get_n_items() == 3000 and ann.get_n_trees() == 10
    exact = np.argsort(-(x[:50] @ x.T), axis=1)[:, :10]
    found = [set(ann.get_nns_by_vector(x[i].tolist(), 10, search_k=index.SEARCH_EFFORT * 10 * 11)) for i in range(50)]
    assert np.mean([len(f & set(e)) / 10 for f, e in zip(found, exact)]) >= 0.99


@pytest.mark.slow
def test_a_map_leaves_torchs_thread_count_as_it_was():
    """numba's OpenMP layer runs on torch's libgomp: after a UMAP, a process that gave torch one thread
    ran every torch op on NUMBA_NUM_THREADS threads (the test suite's workers then spun 10x slower)."""
    script = ("import numpy as np, torch; from peace.serve.export import umap_coordinates; "
              "umap_coordinates(np.random.default_rng(0).normal(size=(60, 8)).astype('float32'), 2); "
              "print(torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}  # as the suite's workers (but numba's)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["1"], out.stderr[-2000:]


@pytest.mark.slow
def test_umaps_kernels_are_compiled_once_per_machine_not_once_per_process():
    """umap-learn does not cache its numba kernels: each process compiled them (15-35 s on 2 cores)."""
    script = ("import numpy as np; from peace.serve.export import _umap, umap_coordinates; "
              "umap_coordinates(np.random.default_rng(0).normal(size=(40, 8)).astype('float32'), 2); "
              "k = _umap().umap_.smooth_knn_dist; print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True) for _ in range(2)]
    hits, misses = map(int, runs[1].stdout.split())
    assert (hits, misses) == (1, 0), [r.stdout for r in runs]  # the second process loaded what the first compiled
