"""Notebooks run for real with papermill on the tiny preset."""
import json

import papermill as pm
import pytest
from conftest import ROOT


@pytest.mark.slow
def test_build_zoo_notebook(tmp_path):
    out_nb = tmp_path / "01.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/01_build_zoo.ipynb"), str(out_nb), kernel_name="python3",
                        parameters={"preset": "tiny", "out": str(tmp_path / "zoo")}, cwd=str(ROOT / "notebooks"),
                        progress_bar=False)
    assert (tmp_path / "zoo" / "manifest.parquet").exists()
    outputs = [o for c in json.loads(out_nb.read_text())["cells"] for o in c.get("outputs", [])]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)
    assert any("digits-rot90" in "".join(o.get("data", {}).get("text/plain", "")) for o in outputs)


@pytest.mark.slow
def test_symmetry_demo_notebook(tiny_zoo, tmp_path):
    out_nb = tmp_path / "06.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/06_symmetry_demo.ipynb"), str(out_nb), kernel_name="python3",
                        parameters={"preset": "tiny", "zoo_dir": str(tiny_zoo.path), "seed": 3},
                        cwd=str(ROOT / "notebooks"), progress_bar=False)
    text = out_nb.read_text()
    assert "relative raw-weight distance" in text and "predictions that agree: 100.0%" in text
    assert text.count("application/vnd.plotly.v1+json") >= 2


@pytest.mark.slow
def test_train_encoder_notebook(tiny_zoo, tmp_path):
    out_nb = tmp_path / "02.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/02_train_encoder.ipynb"), str(out_nb), kernel_name="python3",
                        parameters={"zoo_dir": str(tiny_zoo.path), "config": "tiny", "device": "cpu",
                                    "overrides": ["train.epochs=2", "augment.distill_epochs=1"],
                                    "out": str(tmp_path / "run")},
                        cwd=str(ROOT / "notebooks"), progress_bar=False)
    text = out_nb.read_text()
    assert "best epoch" in text and "application/vnd.plotly.v1+json" in text
    assert (tmp_path / "run" / "encoder.safetensors").exists()


@pytest.mark.slow
def test_export_and_evaluate_notebooks(tiny_run, tmp_path):
    for name, params, expect in (
            ("03_export_embeddings", {"run_dir": str(tiny_run.path), "out": str(tmp_path / "emb"), "trees": 5},
             "models, 32-d embeddings"),  # tiny: 16 learned + a 16-d function block
            ("04_evaluate", {"run_dir": str(tiny_run.path), "out": str(tmp_path / "eval")}, "held-out tasks")):
        out_nb = tmp_path / f"{name}.ipynb"
        pm.execute_notebook(str(ROOT / f"notebooks/{name}.ipynb"), str(out_nb), kernel_name="python3",
                            parameters=params, cwd=str(ROOT / "notebooks"), progress_bar=False)
        text = out_nb.read_text()
        assert expect in text and "application/vnd.plotly.v1+json" in text, name
    assert (tmp_path / "emb" / "index.ann").exists() and (tmp_path / "eval" / "metrics.json").exists()
    assert "Ranking" in text and "without labels" in text  # 04's model-selection chart (the tiny run holds tasks out)


@pytest.mark.slow
def test_generate_notebook_trains_a_decoder_samples_and_compares(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)  # the notebook adds a decoder to the run
    out_nb = tmp_path / "07.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/07_generate.ipynb"), str(out_nb), kernel_name="python3",
                        parameters={"run_dir": str(run), "out": str(tmp_path / "sampled"), "n": 2, "candidates": 2,
                                    "finetune_epochs": 1, "seeds": 1, "decoder_epochs": 20, "decoder_min_models": 2},
                        cwd=str(ROOT / "notebooks"), progress_bar=False)
    text = out_nb.read_text()
    assert "training a decoder" in text and "sampled + subsampling" in text and "decoded_agreement" in text
    assert "application/vnd.plotly.v1+json" in text
    assert (run / "decoder.safetensors").exists() and (tmp_path / "sampled" / "manifest.parquet").exists()


def test_every_parameters_cell_parses_so_papermill_knows_each_parameter():
    """papermill drops a line it cannot parse (e.g. a colon in its comment) and warns 'unknown parameter'."""
    import ast

    import nbformat
    from papermill.translators import PythonTranslator

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cell = next(c for c in nbformat.read(path, 4).cells if "parameters" in c.metadata.get("tags", []))
        assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
        assert {p.name for p in PythonTranslator.inspect(cell)} == assigned, path.name
