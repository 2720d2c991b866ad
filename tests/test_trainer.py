"""Training runs: splits, artifacts, determinism, resume, bad input; the `peace train` command."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import QUICK, run_peace
from safetensors.torch import load_file

from peace.core.device import resolve_device
from peace.core.errors import PeaceError
from peace.learn.encoder import dgl_available
from peace.learn.run import load_encoder
from peace.learn.runconfig import load_config
from peace.learn.trainer import fit
from peace.zoo.recipe import recipe_from_dict
from peace.zoo.splits import split_zoo
from peace.zoo.store import build_zoo


def test_splits_keep_lineages_together_and_hold_out_tasks(tiny_zoo):
    m = tiny_zoo.manifest.reset_index(drop=True)
    s = split_zoo(m, 0.25, 0.25, holdout=["synth-2"], seed=3).assign(lineage=m.lineage_id.values, task=m.task.values)
    assert s.groupby("lineage")["split"].nunique().max() == 1
    assert (s[s.task == "synth-2"].split == "test").all() and s[s.task == "synth-2"].heldout_task.all()
    assert set(s.split) == {"train", "val", "test"}
    assert s.equals(split_zoo(m, 0.25, 0.25, holdout=["synth-2"], seed=3).assign(lineage=m.lineage_id.values,
                                                                                task=m.task.values))
    with pytest.raises(PeaceError, match="unknown held-out task 'cifar10'"):
        split_zoo(m, holdout=["cifar10"])
    # validation can hold out a task of its own, never one of test's
    v = split_zoo(m, 0.25, 0.25, holdout=["synth-2"], seed=3, val_holdout=["digits"]).assign(task=m.task.values)
    assert (v[v.task == "digits"].split == "val").all() and v[v.task == "digits"].val_heldout_task.all()
    assert not v[v.task != "digits"].val_heldout_task.any() and (v[v.task == "synth-2"].split == "test").all()
    drawn = split_zoo(m, holdout=1, seed=0, val_holdout=1)
    held, val_held = set(m.task[drawn.heldout_task]), set(m.task[drawn.val_heldout_task])
    assert len(held) == len(val_held) == 1 and not held & val_held
    with pytest.raises(PeaceError, match="unknown held-out task"):
        split_zoo(m, holdout=["synth-2"], val_holdout=["synth-2"])


def test_auxiliary_targets_are_columns_or_training_progress(tiny_zoo):
    from peace.learn.trainer import _targets

    rows = tiny_zoo.manifest.reset_index(drop=True)
    t = _targets(rows, ["test_acc", "progress"])
    assert t.shape == (len(rows), 2) and (t[:, 1] == (rows.epoch / rows.epochs).to_numpy(np.float32)).all()
    with pytest.raises(PeaceError, match="auxiliary target column 'colour'.*progress"):
        _targets(rows, ["colour"])


def test_a_run_writes_everything_and_the_encoder_reloads(tiny_run, tiny_zoo):
    out = tiny_run.path
    for name in ("config.yaml", "splits.parquet", "checkpoint.pt", "encoder.safetensors", "encoder.json",
                 "history.parquet", "run.json"):
        assert (out / name).exists(), name
    hist = pd.read_parquet(out / "history.parquet")
    assert list(hist.epoch) == [1, 2, 3]
    assert hist[["train_loss", "train_nce", "train_aux", "val_map"]].notna().all().all()
    assert 0 < hist.val_map.max() <= 1
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["best_epoch"] == tiny_run.best_epoch
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["config"]["train"]["holdout_tasks"] == meta["holdout_tasks"] and len(meta["holdout_tasks"]) == 1
    enc = load_encoder(out)
    ids = list(tiny_zoo.manifest.index[:5])
    emb = enc.embed([tiny_zoo.spec(i) for i in ids], tiny_zoo.load_many(ids))
    assert emb.shape == (5, 16 + 16) and torch.isfinite(emb).all()
    assert torch.equal(load_file(str(out / "encoder.safetensors"))["edge_scale"], enc.edge_scale)
    assert not torch.equal(enc.edge_scale, torch.ones_like(enc.edge_scale))  # standardization was fit


def test_training_is_deterministic_and_resume_continues_exactly(tiny_zoo, tmp_path, monkeypatch):
    """An interrupted run resumed equals the uninterrupted one, trained here in the same process state
    (the session's tiny_run may have been trained on another thread count: other float sums)."""
    from peace.learn import trainer

    tiny_run = fit(tiny_zoo, load_config("tiny", QUICK), tmp_path / "uninterrupted", progress=False)
    calls = {"n": 0}
    real = trainer._validate

    def crash_at_third_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(trainer, "_validate", crash_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_zoo, load_config("tiny", QUICK), tmp_path / "run", progress=False)
    assert len(pd.read_parquet(tmp_path / "run" / "history.parquet")) == 2
    monkeypatch.setattr(trainer, "_validate", real)
    with pytest.raises(PeaceError, match="pass --resume"):
        fit(tiny_zoo, load_config("tiny", QUICK), tmp_path / "run", progress=False)
    with pytest.raises(PeaceError, match=r"different config \(train.lr differ"):
        fit(tiny_zoo, load_config("tiny", QUICK + ["train.lr=0.01"]), tmp_path / "run", resume=True, progress=False)
    # a run interrupted under an older PEACE, whose config.yaml lacks keys added since (at their defaults), resumes
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["encoder"]["probe_source"], saved["train"]["probe_steps"]
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = fit(tiny_zoo, load_config("tiny", QUICK), tmp_path / "run", resume=True, progress=False)
    a = load_file(str(tiny_run.path / "encoder.safetensors"))
    b = load_file(str(resumed.path / "encoder.safetensors"))
    cols = ["epoch", "train_loss", "val_map"]
    if dgl_available():  # CI: DGL's CPU kernels are bitwise deterministic, so resume is bit-exact
        assert all(torch.equal(a[k], b[k]) for k in a)
        pd.testing.assert_frame_equal(tiny_run.history[cols], resumed.history[cols])
    else:  # torch's CPU scatter-adds may sum in any order: equal to float tolerance
        assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
        pd.testing.assert_frame_equal(tiny_run.history[cols], resumed.history[cols], atol=1e-4)


def test_the_task_term_reads_the_training_tasks_labels(tiny_zoo, tmp_path, monkeypatch):
    """With ``train.task_weight`` each view carries its weights' task (relabelled copies none) and the
    soft targets move that share to the batch's views of the anchor's task."""
    from peace.learn import trainer

    seen = []
    real = trainer.task_targets
    monkeypatch.setattr(trainer, "task_targets", lambda t, same, w: seen.append((t, same, w)) or real(t, same, w))
    quick = QUICK[:1] + ["train.epochs=1", "augment.relabelled=2"]
    on = fit(tiny_zoo, load_config("tiny", quick + ["train.task_weight=1.0"]), tmp_path / "on", progress=False)
    assert seen and all(w == 1.0 for *_, w in seen)
    t, same, _ = seen[0]
    assert same.shape == t.shape and same.diagonal().all()  # every view is of its own task ...
    assert same[:, -2:].sum() == 0 and 0 < same.float().mean() < 1  # ... the relabelled copies (last) of none
    seen.clear()
    off = fit(tiny_zoo, load_config("tiny", quick + ["train.task_weight=0"]), tmp_path / "off", progress=False)
    assert not seen and on.history.train_nce.iloc[0] != off.history.train_nce.iloc[0]
    with pytest.raises(PeaceError, match="task_weight must be in"):
        load_config("tiny", ["train.task_weight=1.5"])


def test_renamed_pairs_are_tasks_of_their_own(tiny_zoo, tmp_path, monkeypatch):
    """With ``augment.renamed`` a share of each batch's anchors and their partners are a renamed task's: the
    classes permuted in one order per task and batch, labelled as a task of their own for the task term."""
    from peace.learn import trainer

    batches = []
    real = trainer._draw_batch
    monkeypatch.setattr(trainer, "_draw_batch", lambda *a, **k: batches.append(real(*a, **k)) or batches[-1])
    quick = QUICK[:1] + ["train.epochs=1", "train.task_weight=0.75"]
    fit(tiny_zoo, load_config("tiny", quick + ["augment.renamed=0.5"]), tmp_path / "on", progress=False)
    renamed = 0
    for b in batches:
        B = len(b.anchors)
        tasks = b.tasks[:2 * B]
        assert sum(" renamed " in t for t in tasks) == 2 * round(0.5 * B)  # anchor and partner alike
        for i in range(B):
            assert (" renamed " in tasks[i]) == (" renamed " in tasks[B + i])
            if " renamed " in tasks[i]:
                renamed += 1
                order = tasks[i].split(" renamed ")[1]
                assert tasks[B + i].endswith(order)  # the partner renamed in the anchor's order
                base = tasks[i].split(" renamed ")[0]
                ones = {t.split(" renamed ")[1] for t in tasks[:B] if t.startswith(base + " renamed ")}
                assert len(ones) == 1  # one order per task and batch: a task's renamed anchors are one task
    assert renamed > 0
    batches.clear()
    fit(tiny_zoo, load_config("tiny", quick), tmp_path / "off", progress=False)
    assert batches and not any(" renamed " in t for b in batches for t in b.tasks if t)
    with pytest.raises(PeaceError, match="renamed in"):
        load_config("tiny", ["augment.renamed=1.5"])


def test_bad_input_is_named(tiny_zoo, tmp_path):
    one_task = build_zoo(recipe_from_dict({"name": "one", "groups": [
        {"name": "g", "tasks": ["tetris"], "architecture": {"family": "mlp", "hidden": [3]}, "seeds": 4, "epochs": 1}]}),
        tmp_path / "one", progress=False)
    with pytest.raises(PeaceError, match="1 task.*after holding out 1.*train.holdout_tasks=0"):
        fit(one_task, load_config("tiny"), tmp_path / "r1", progress=False)
    with pytest.raises(PeaceError, match="at least 2 training task"):
        fit(one_task, load_config("tiny", ["train.val_relevance=task", "train.holdout_tasks=0"]), tmp_path / "r1b",
            progress=False)
    with pytest.raises(PeaceError, match="training split has .* models but train.batch_size is 500"):
        fit(tiny_zoo, load_config("tiny", ["train.batch_size=500"]), tmp_path / "r2", progress=False)
    with pytest.raises(PeaceError, match="max_models_per_epoch"):
        load_config("tiny", ["train.max_models_per_epoch=2"])
    with pytest.raises(PeaceError, match="cuda"):
        resolve_device("cuda:99")
    with pytest.raises(PeaceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(PeaceError, match="no trained encoder"):
        load_encoder(tmp_path)
    with pytest.raises(PeaceError, match="unknown auxiliary target column 'accuracy'"):
        fit(tiny_zoo, load_config("tiny", ["encoder.aux_targets=[accuracy]"]), tmp_path / "r3", progress=False)


def test_a_single_task_zoo_trains_with_lineage_validation(tmp_path):
    """TETRIS-SEED-like zoos (one task, many seeds): validation mAP by lineage, subsampled epochs."""
    zoo = build_zoo(recipe_from_dict({"name": "seeds", "groups": [
        {"name": "g", "tasks": ["tetris"], "architecture": {"family": "mlp", "hidden": [5], "activation": "tanh"},
         "seeds": 12, "epochs": 4, "checkpoints": [1, 2, 3, 4]}]}), tmp_path / "seeds", progress=False)
    res = fit(zoo, load_config("tiny", ["train.holdout_tasks=0", "train.epochs=2", "train.max_models_per_epoch=16",
                                        "train.max_val_models=9", "augment.distill_epochs=1", "train.task_weight=0.5"]),
              tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "encoder.json").read_text())
    assert meta["val_relevance"] == "lineage" and meta["holdout_tasks"] == []
    assert meta["config"]["train"]["task_weight"] == 0  # one training task: nothing to tell apart, so off
    splits = pd.read_parquet(tmp_path / "run" / "splits.parquet")
    assert (splits.split == "val").sum() == 12 and meta["n_val"] == 8  # 3 validation runs, 2 whole ones drawn
    assert len(res.history) == 2 and res.history.val_map.notna().all()


@pytest.mark.slow
def test_peace_train_command(tiny_zoo, tmp_path):
    p = run_peace("train", "--zoo", tiny_zoo.path, "--out", tmp_path / "run", "--config", "tiny", "--quiet",
                  "--set", "train.epochs=2", "augment.distill_epochs=1", "--seed", "1")
    assert "best epoch" in p.stdout and (tmp_path / "run" / "encoder.safetensors").exists()
    assert json.loads((tmp_path / "run" / "encoder.json").read_text())["config"]["seed"] == 1
    bad = run_peace("train", "--zoo", tiny_zoo.path, "--out", tmp_path / "r2", "--device", "cuda:99", check=False)
    assert bad.returncode == 2 and "cuda" in bad.stderr and "Traceback" not in bad.stderr
    # without --config, on a preset's zoo: the config the preset names, said before anything runs
    assert "[peace] encoder config tiny: named by the zoo's recipe" in bad.stderr
