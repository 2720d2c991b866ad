"""The paper-faithful zoo presets (TETRIS-SEED, TETRIS-HYP, the MNIST-SEED-like CNN on digits):
what the paper fixes, tiny variants that build and learn, and the paper table end to end."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT

from peace.learn.runconfig import load_config
from peace.learn.trainer import fit
from peace.nets.architectures import ArchSpec
from peace.serve.plots import learning_curve
from peace.zoo.population import HParams, init_params
from peace.zoo.recipe import expand, load_recipe, recipe_from_dict
from peace.zoo.store import build_zoo


def shrunk(preset: str, **group) -> dict:
    """A preset's recipe with its (single) group's grid overridden: the tiny variant of a paper zoo."""
    r = load_recipe(preset).to_dict()
    r["groups"][0].update(group)
    return r


def test_tetris_seed_keeps_what_the_paper_fixes():
    runs = expand(load_recipe("tetris-seed"))
    assert len(runs) == 1000 and sorted(r.hparams.seed for r in runs) == list(range(1, 1001))
    r = runs[0]
    assert (r.spec.describe(), r.hparams.init, r.hparams.lr, r.schedule.optimizer, r.schedule.epochs) == \
        ("mlp 16-5-4 tanh nobias", "uniform", 3e-5, "adam", 75)
    assert r.schedule.checkpoints == tuple(range(76)) and r.task == "tetris-canonical"


def test_tetris_hyp_is_the_papers_grid():
    runs = expand(load_recipe("tetris-hyp"))
    assert len(runs) == 2 * 6 * 3 * 100
    assert {r.spec.activation for r in runs} == {"tanh", "relu"}
    assert {r.hparams.init for r in runs} == {"uniform", "normal", "kaiming_uniform", "kaiming_normal",
                                              "xavier_uniform", "xavier_normal"}
    assert {r.hparams.lr for r in runs} == {1e-3, 1e-4, 1e-5} and {r.schedule.epochs for r in runs} == {75}


def test_digits_seed_is_the_papers_cnn_shape_on_8x8_digits():
    r = expand(load_recipe("digits-seed"))[0]
    assert [l.kind for l in r.spec.layers] == ["conv2d"] * 3 + ["linear"] * 2
    assert r.spec.n_params == 2328 and r.spec.activation == "tanh" and r.hparams.lr == 3e-4


def test_uniform_and_normal_inits_are_torchs_defaults():
    """The paper's `uniform` is torch.nn.init.uniform_ (U(0, 1)) and `normal` is normal_ (N(0, 1))."""
    spec = ArchSpec(family="mlp", input_shape=(16,), n_classes=4, hidden=(64,), bias=False)
    u = init_params(spec, [HParams(seed=s, init="uniform") for s in range(50)])["layers.0.weight"]
    n = init_params(spec, [HParams(seed=s, init="normal") for s in range(50)])["layers.0.weight"]
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12 ** -0.5) < 0.01
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1) < 0.01
    assert not torch.equal(u[0], u[1])  # each seed its own draw


@pytest.mark.slow
def test_tiny_tetris_seed_learns_with_a_spread(tmp_path):
    """20 seeds of the real recipe: accuracy rises over the 75 epochs, well above chance, seeds differ."""
    zoo = build_zoo(recipe_from_dict(shrunk("tetris-seed", seeds=20)), tmp_path / "z", progress=False)
    m = zoo.manifest
    first, last = m[m.epoch == 0].test_acc, m[m.epoch == 75].test_acc
    assert last.mean() > 0.5 and last.mean() > first.mean() + 0.2 and last.std() > 0.03
    bands = learning_curve(m).set_index("epoch")
    curve = bands["mean"]
    assert curve.loc[25] > curve.loc[0] and curve.loc[50] > curve.loc[25] and curve.loc[75] > curve.loc[50]
    assert (bands.q10 <= curve).all() and (curve <= bands.q90).all() and (bands.runs == 20).all()


@pytest.mark.slow
def test_tiny_tetris_hyp_and_digits_seed_build_and_learn(tmp_path):
    hyp = build_zoo(recipe_from_dict(shrunk("tetris-hyp", seeds=1, epochs=10)), tmp_path / "hyp", progress=False)
    m = hyp.manifest
    assert len(m) == 36 * 11 and set(m.status) <= {"ok", "diverged"}
    fast = m[(m.epoch == 10) & (m.lr == 1e-3) & m.init.str.startswith(("kaiming", "xavier"))]
    assert fast.test_acc.mean() > 0.5  # the well-scaled inits at the highest lr learn within 10 epochs
    cnn = build_zoo(recipe_from_dict(shrunk("digits-seed", seeds=3, epochs=10, checkpoints=[0, 10])),
                    tmp_path / "cnn", progress=False)
    acc = cnn.manifest.groupby("epoch").test_acc.mean()
    assert acc.loc[0] < 0.2 and acc.loc[10] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_paper_table_runs_end_to_end_on_a_tiny_tetris_zoo(tmp_path):
    zoo = build_zoo(recipe_from_dict(shrunk("tetris-seed", seeds=24, epochs=10, lr=3e-3)), tmp_path / "zoo", progress=False)
    cfg = ["train.epochs=1", "train.batch_size=16", "train.holdout_tasks=0", "train.val_relevance=lineage",
           "train.val_fraction=0.25", "train.test_fraction=0.25", "augment.distill_epochs=1", "augment.functional=false"]
    for name in ("a", "b"):
        fit(zoo, load_config("tiny", cfg + [f"augment.checkpoint={name == 'a'}"]), tmp_path / name, progress=False)
    p = subprocess.run([sys.executable, "benchmarks/paper_table.py", "--zoo", str(tmp_path / "zoo"),
                        "--run", str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "PEACE chosen on validation: PEACE " in lines[0]
    body = {l.rsplit(None, 3)[0].strip(): [float(v) for v in l.split()[-3:]] for l in lines[3:]}
    assert set(body) == {"W", "s(W)", "function space", "PEACE a", "PEACE b", "s(W), paper", "E.D, paper"}
    assert body["E.D, paper"] == [97.0, 90.2, 81.9] and all(np.isfinite(v).all() for v in body.values())
    assert body["s(W)"][0] > 20, p.stdout  # ten epochs at lr 3e-3 move the weights: s(W) reads the epoch
    alone = subprocess.run([sys.executable, "benchmarks/paper_table.py", "--zoo", str(tmp_path / "zoo")],
                           capture_output=True, text=True, cwd=ROOT)
    assert alone.returncode == 0 and "chosen on validation: none" in alone.stdout, alone.stderr
    assert "function space" in alone.stdout and "PEACE" not in alone.stdout.split("\n", 1)[1]


def test_paper_table_refuses_runs_on_different_splits(tmp_path, tiny_zoo, tiny_run):
    other = tmp_path / "other"
    other.mkdir()
    for f in ("encoder.safetensors", "splits.parquet"):
        (other / f).write_bytes((tiny_run.path / f).read_bytes())
    s = pd.read_parquet(other / "splits.parquet")
    s.loc[0, "split"] = "val" if s.loc[0, "split"] != "val" else "train"
    s.to_parquet(other / "splits.parquet")
    p = subprocess.run([sys.executable, "benchmarks/paper_table.py", "--zoo", str(tiny_zoo.path), "--run",
                        str(tiny_run.path), str(other)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode != 0 and "different splits" in p.stderr
