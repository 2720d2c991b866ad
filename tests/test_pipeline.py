"""peace pipeline and peace ablate: real papermill runs of the notebooks on the tiny preset."""
import json
import shutil
import subprocess
import sys

import nbformat
import pandas as pd
import papermill as pm
import pytest
import yaml
from conftest import QUICK, ROOT, run_peace

from peace.core.errors import PeaceError
from peace.learn.run import RunDir
from peace.learn.runconfig import load_config
from peace.orchestrate.ablation import best_per_metric, compare, load_grid, run_ablation
from peace.orchestrate.pipeline import NOTEBOOKS, pipeline_steps, run_pipeline, run_steps
from peace.zoo.store import Zoo


def _root_with_zoo(tiny_zoo, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_zoo.path, root / "zoos" / "tiny")  # saves rebuilding it; step 1 still runs (no stamp)
    return root


@pytest.mark.slow
def test_a_failing_step_names_notebook_and_cell_and_keeps_earlier_outputs(tiny_zoo, tmp_path):
    root = _root_with_zoo(tiny_zoo, tmp_path)
    steps = pipeline_steps("tiny", "tiny", QUICK, "cpu", root=root, transfer_epochs=0)
    steps[1].parameters["overrides"] = ["train.batch_size=100000"]  # more than the zoo has: the trainer refuses
    stale = root / "runs" / "tiny"  # an earlier run with other parameters: replaced only once the new one is done
    stale.mkdir(parents=True)
    (stale / ".pipeline-step.json").write_text(json.dumps({"step": "train encoder", "parameters": {"seed": 9}}))
    (stale / "encoder.safetensors").write_text("the earlier encoder")
    with pytest.raises(PeaceError, match=r"step 2/4 \(train encoder\): 02_train_encoder.ipynb failed in cell \d+ "
                                         r"\(PeaceError: .*batch"):
        run_steps(steps, root / "notebooks", progress=False)
    assert (stale / "encoder.safetensors").read_text() == "the earlier encoder"  # the failed rebuild lost nothing
    assert sorted(p.name for p in stale.parent.iterdir()) == ["tiny"]
    assert len(Zoo(root / "zoos/tiny")) == len(tiny_zoo)  # step 1's output intact
    assert (root / "notebooks/02_train_encoder.ipynb").exists()  # the executed notebook, with the traceback


def test_notebooks_without_parameters_cell_are_refused_before_anything_runs(tmp_path):
    nbs = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, nbs)
    nb = nbformat.read(str(nbs / "03_export_embeddings.ipynb"), as_version=4)
    for c in nb.cells:
        c.metadata.pop("tags", None)
    nbformat.write(nb, str(nbs / "03_export_embeddings.ipynb"))
    steps = pipeline_steps("tiny", "tiny", root=tmp_path / "artifacts")
    with pytest.raises(PeaceError, match="03_export_embeddings.ipynb has no cell tagged 'parameters'"):
        run_steps(steps, tmp_path / "out", notebooks=nbs, progress=False)
    assert not (tmp_path / "artifacts").exists()
    (nbs / "03_export_embeddings.ipynb").write_text('{"cells": [')  # cut short
    with pytest.raises(PeaceError, match=r"03_export_embeddings.ipynb is not a Jupyter notebook.*git checkout"):
        run_steps(steps, tmp_path / "out", notebooks=nbs, progress=False)
    nb = nbformat.read(str(NOTEBOOKS / "02_train_encoder.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("seed"))
    nbformat.write(nb, str(nbs / "02_train_encoder.ipynb"))  # written with its source as a list of lines
    with pytest.raises(PeaceError, match=r"the parameters cell of .*02_train_encoder.ipynb does not define \['seed'\]"):
        run_steps(steps, tmp_path / "out", notebooks=nbs, progress=False)
    assert not (tmp_path / "artifacts").exists()
    with pytest.raises(PeaceError, match="unknown preset 'nope'"):
        pipeline_steps("nope")
    with pytest.raises(PeaceError, match="unknown pipeline step 'train'"):
        run_pipeline("tiny", root=tmp_path / "artifacts", steps=["train"])


def _grid(tmp_path, text):
    (tmp_path / "grid.yaml").write_text(text)
    return tmp_path / "grid.yaml"


def test_bad_grids_are_refused_before_anything_runs(tmp_path):
    head = "zoo: z\nbase: tiny\nconfigurations:\n"
    with pytest.raises(PeaceError, match="configuration 'b'.*'augment.permut'"):
        load_grid(_grid(tmp_path, head + "  - {name: a}\n  - {name: b, set: {augment.permut: false}}\n"))
    with pytest.raises(PeaceError, match=r"duplicate configuration name\(s\) \['a'\]"):
        load_grid(_grid(tmp_path, head + "  - {name: a}\n  - {name: a, set: {encoder.rounds: 1}}\n"))
    with pytest.raises(PeaceError, match="unknown key in ablation grid.*'seed'"):
        load_grid(_grid(tmp_path, "seed: 1\n" + head + "  - {name: a}\n"))
    with pytest.raises(PeaceError, match="unknown key in configuration #1.*'sett'"):
        load_grid(_grid(tmp_path, head + "  - {name: a, sett: {}}\n"))
    bad = run_peace("ablate", "--grid", _grid(tmp_path, head + "  - {name: a}\n"), "--out", tmp_path / "o", check=False)
    assert bad.returncode == 2 and "not a finished zoo" in bad.stderr and not (tmp_path / "o").exists()
    assert len(load_grid("default").configurations) >= 19


@pytest.mark.slow
def test_tiny_ablation_grid_end_to_end_with_resume(tiny_zoo, tmp_path):
    grid = load_grid("tiny")
    grid.zoo = str(tiny_zoo.path)
    out = tmp_path / "ablation"
    s = run_ablation(grid, out, workers=2, progress=False)
    assert list(s["configuration"]) == ["full", "mean-pooling-no-transformer"] and set(s["status"]) == {"ran"}
    assert s["retrieval_task.map"].between(0, 1).all() and (s["invariance.ratio"] < 0.01).all()
    shutil.rmtree(out / "runs" / "mean-pooling-no-transformer-s0")
    s2 = run_ablation(grid, out, workers=1, progress=False)
    assert list(s2["status"]) == ["skipped (done)", "ran"]
    assert s2.loc[0, "retrieval_task.map"] == s.loc[0, "retrieval_task.map"]
    assert pd.read_parquet(out / "summary.parquet").shape == s2.shape
    table = compare(s2, ["retrieval_task.map", "invariance.ratio", "invariance.distance_to_transform"])
    best = best_per_metric(table).set_index("metric")
    assert best.loc["retrieval_task.map", "best configuration"] == s2.loc[s2["retrieval_task.map"].idxmax(), "configuration"]
    for lower in ("invariance.ratio", "invariance.distance_to_transform"):  # lower is better for both
        assert best.loc[lower, "best configuration"] == s2.loc[s2[lower].idxmin(), "configuration"]
    out_nb = tmp_path / "05.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/05_ablations.ipynb"), str(out_nb), kernel_name="python3",
                        parameters={"summary_path": str(out / "summary.parquet")}, cwd=str(ROOT / "notebooks"),
                        progress_bar=False)
    text = out_nb.read_text()
    assert text.count("application/vnd.plotly.v1+json") >= 2 and "best configuration" in text
    failing = load_grid("tiny")
    failing.zoo = str(tiny_zoo.path)
    failing.configurations = failing.configurations[:1]
    failing.overrides = failing.overrides + ["train.batch_size=100000"]
    failing.seeds = [0, 1]
    f1 = run_ablation(failing, tmp_path / "failing", progress=False, seeds=[1])  # a pass at one seed
    assert list(f1["seed"]) == [1] and not (tmp_path / "failing/runs/full-s0").exists()
    f = run_ablation(failing, tmp_path / "failing", progress=False, seeds=[0])  # the next pass adds to the summary
    assert list(f["seed"]) == [0, 1] and list(f["status"]) == ["failed"] * 2 and "batch" in f.loc[0, "error"]
    assert "batch" in (tmp_path / "failing/runs/full-s0/error.txt").read_text()
    with pytest.raises(PeaceError, match=r"seeds \[7\] are not in the grid's seeds \[0, 1\]"):
        run_ablation(failing, tmp_path / "failing", progress=False, seeds=[7])
    json.dumps(f.to_dict())  # the summary is plain data


@pytest.mark.slow
def test_the_tiny_preset_runs_as_a_user_types_it_then_reruns_only_stale_steps(tmp_path, capsys):
    """`peace pipeline --preset tiny`, no other flag (issue 30: it used to stop at step 2 on the default config);
    then the same pipeline again: only what is missing or stale runs."""
    p = subprocess.run([sys.executable, "-m", "peace", "pipeline", "--preset", "tiny"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[peace] encoder config tiny: preset tiny's own" in p.stdout
    assert "IPKernelApp" not in p.stderr  # the kernels' start-up log is not the user's business
    root = tmp_path / "artifacts"
    for path in ("zoos/tiny/zoo.json", "runs/tiny/encoder.safetensors", "embeddings/tiny/index.json",
                 "evaluation/tiny/metrics.json", "notebooks/tiny/04_evaluate.ipynb"):
        assert (root / path).exists(), path
    saved = yaml.safe_load((root / "runs/tiny/config.yaml").read_text())
    assert saved["encoder"]["hidden"] == load_config("tiny").encoder.hidden != load_config("default").encoder.hidden
    assert set(json.loads((root / "notebooks/tiny/timings.json").read_text())) == {
        "build zoo", "train encoder", "export embeddings", "evaluate"}

    kw = dict(preset="tiny", root=root, progress=False)  # what the command line ran, from Python
    assert run_pipeline(**kw) == ["current"] * 4
    built = json.loads((root / "notebooks/tiny/timings.json").read_text())["build zoo"]
    capsys.readouterr()
    assert run_pipeline(**{**kw, "progress": True, "force": True}, steps=["build zoo"]) == ["ran"]
    said = capsys.readouterr().out  # a forced zoo step opens the built zoo (zoos are never rebuilt)
    assert "build zoo (01_build_zoo.ipynb): runs, opens its current output (seconds)" in said
    assert json.loads((root / "notebooks/tiny/timings.json").read_text())["build zoo"] == built  # not its build time
    (root / "evaluation/tiny/metrics.json").unlink()  # a missing output: only that step runs
    capsys.readouterr()
    assert run_pipeline(**{**kw, "progress": True}) == ["current"] * 3 + ["ran"]
    said = capsys.readouterr()  # the plan with this machine's timings, then the notebook's progress (its stderr)
    assert "[peace] plan: 1 of 4 step(s) to run" in said.out and "evaluate (04_evaluate.ipynb): runs, last took" in said.out
    assert "evaluate:" in said.err and "[peace] 4/4 evaluate: done in" in said.out
    shutil.rmtree(root / "runs/tiny")  # retrained bit for bit (deterministic): embeddings stay current
    assert run_pipeline(**kw) == ["current", "ran", "current", "current"]
    for name in RunDir.DECODER:  # a decoder the user trained in the run: carried into the rebuilt run, never lost
        (root / "runs/tiny" / name).write_text(f"the user's {name}")
    assert run_pipeline(**{**kw, "seed": 1}, steps=["train encoder"]) == ["ran"]  # another encoder: everything
    assert all((root / "runs/tiny" / n).read_text() == f"the user's {n}" for n in RunDir.DECODER)
    assert json.loads((root / "runs/tiny/.pipeline-step.json").read_text())["parameters"]["seed"] == 1
    assert [s.is_current() for s in pipeline_steps("tiny", root=root, seed=1)] == [True, True, False, False]  # downstream


def test_every_preset_names_a_config_its_planned_zoo_can_train(tmp_path):
    from peace.learn.trainer import check_fits
    from peace.zoo.recipe import load_recipe, planned_models, preset_names

    for preset in preset_names():
        recipe = load_recipe(preset)
        check_fits(planned_models(recipe), load_config(recipe.encoder_config, recipe.encoder_set))
    with pytest.raises(PeaceError, match=r"preset 'tiny' with encoder config 'default': the training split has \d+ "
                                         r"models but train.batch_size is 64.*before building it.*own config is 'tiny'"):
        run_pipeline("tiny", "default", root=tmp_path / "artifacts", progress=False)
    assert not (tmp_path / "artifacts").exists()


def test_zoos_built_before_presets_named_configs_still_resume_and_train_on_default(tiny_zoo, tmp_path):
    from peace.learn.runconfig import config_for_zoo
    from peace.zoo.recipe import load_recipe
    from peace.zoo.store import build_zoo

    assert config_for_zoo(tiny_zoo.path) == ("tiny", [], "named by the zoo's recipe")
    old = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, old)
    recipe = json.loads((old / "recipe.json").read_text())
    for key in ("encoder_config", "encoder_set"):
        recipe.pop(key)
    (old / "recipe.json").write_text(json.dumps(recipe))
    assert config_for_zoo(old) == ("default", [], "the zoo's recipe names none")  # trained as before
    assert len(build_zoo(load_recipe("tiny"), old, resume=True, progress=False)) == len(tiny_zoo)  # same zoo


def test_plan_scales_reference_times_by_this_machines_calibration(monkeypatch):
    from types import SimpleNamespace

    from peace.orchestrate import estimate

    steps = [SimpleNamespace(name=n, notebook=f"0{i}.ipynb") for i, n in enumerate(["build zoo", "train encoder"], 1)]
    reference = {"build zoo": 2, "train encoder": 10}
    calls = []
    monkeypatch.setattr(estimate, "local_cores", lambda: 2)  # as the reference machine
    monkeypatch.setattr(estimate, "_calibration_seconds",
                        lambda: calls.append(1) or 3 * estimate.REFERENCE_CALIBRATION_S)  # a machine 3x slower
    said = estimate.plan(steps, [True, True], {}, reference)
    assert "build zoo (01.ipynb): runs, about 6 min on this machine" in said
    assert "train encoder (02.ipynb): runs, about 30 min on this machine" in said
    assert "roughly 36 min in all" in said and "3.0x the time of the 2-core reference" in said
    assert len(calls) == 1  # calibrated once per plan, not once per step
    calls.clear()
    said = estimate.plan(steps, [False, True], {"train encoder": 125.0}, reference)
    assert "build zoo: current, skipped" in said and "last took 2 min here" in said and not calls
    said = estimate.plan(steps, [True, True], {"build zoo": 540.0, "train encoder": 125.0}, reference, [True, False])
    assert "build zoo (01.ipynb): runs, opens its current output (seconds)" in said and "9 min" not in said
    assert "roughly 2 min in all" in said and not calls
    monkeypatch.setattr(estimate, "local_cores", lambda: 1)  # one core: without the reference's second thread
    assert estimate.machine_factor() == pytest.approx(3 * estimate.SINGLE_CORE)
    monkeypatch.setattr(estimate, "_calibration_seconds", lambda: 1e6)  # a hung machine: the factor is bounded
    assert estimate.machine_factor() == 20.0
    monkeypatch.undo()
    assert 0 < estimate._calibration_seconds(steps=1) < 30  # the real one: the encoder's training step runs
