import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT, run_peace
from safetensors.torch import load_file

from peace.core.errors import PeaceError
from peace.zoo.recipe import load_recipe
from peace.zoo.store import Zoo, build_zoo


def test_tiny_zoo_manifest(tiny_zoo):
    m = tiny_zoo.manifest
    assert m["model_id"].is_unique and len(m) == 71
    assert set(m["family"]) == {"mlp", "cnn1d", "cnn2d", "resnet", "vit"}
    required = {"model_id", "run_id", "task", "dataset", "family", "arch_spec", "seed", "init", "lr", "weight_decay",
                "dropout", "optimizer", "epoch", "train_loss", "val_acc", "test_acc", "gen_gap", "test_f1_per_class",
                "status", "parent_id", "shard", "checksum"}
    assert required <= set(m.columns)
    children = m[m["parent_id"].notna()]
    assert len(children) and children["parent_id"].isin(m["model_id"]).all()
    parents = m.loc[children["parent_id"]]
    assert (parents["task"] == "synth-1").all() and (children["task"] == "synth-2").all()
    assert (children["lineage_id"].values == parents["lineage_id"].values).all()


@pytest.mark.parametrize("family", ["cnn2d", "resnet"])
def test_lazy_weights_load_into_a_module(tiny_zoo, family):
    row = tiny_zoo.manifest.query(f"family == '{family}'").iloc[-1]
    net = tiny_zoo.model(row["model_id"])
    task = tiny_zoo.task(row["model_id"])
    with torch.no_grad():
        acc = (net(torch.from_numpy(task.X_test).reshape(-1, *task.input_shape)).argmax(1).numpy() == task.y_test).mean()
    assert acc == pytest.approx(row["test_acc"], abs=1e-6)


def test_corrupted_weights_and_manifest_are_detected(tiny_zoo, tmp_path):
    import shutil

    z = tmp_path / "z"
    shutil.copytree(tiny_zoo.path, z)
    zoo = Zoo(z)
    mid = zoo.manifest["model_id"].iloc[0]
    shard = z / zoo.row(mid)["shard"]
    tensors = load_file(shard)
    key = next(k for k in tensors if k.startswith(mid + "/"))
    tensors[key] = tensors[key] + 1.0
    from safetensors.torch import save_file
    save_file(tensors, shard)
    with pytest.raises(PeaceError, match="do not match the manifest checksum"):
        zoo.weights(mid)
    shard.write_bytes(b"\x00" * 10)
    with pytest.raises(PeaceError, match="cannot read weight shard"):
        zoo.weights(mid)
    shard.unlink()  # weights missing altogether
    with pytest.raises(PeaceError, match=f"cannot read weight shard {shard}.*--resume"):
        zoo.weights(mid)
    (z / "manifest.parquet").write_bytes(b"junk")
    with pytest.raises(PeaceError, match="does not match the checksum in zoo.json"):
        Zoo(z)
    (z / "zoo.json").unlink()
    with pytest.raises(PeaceError, match="not a finished zoo.*--resume"):
        Zoo(z)


def test_existing_output_is_never_overwritten(tiny_zoo):
    before = (tiny_zoo.path / "manifest.parquet").read_bytes()
    with pytest.raises(PeaceError, match="already holds a zoo.*--resume"):
        build_zoo(load_recipe("tiny"), tiny_zoo.path, progress=False)
    with pytest.raises(PeaceError, match="different recipe"):
        build_zoo(load_recipe("tetris-seed"), tiny_zoo.path, resume=True, progress=False)
    assert (tiny_zoo.path / "manifest.parquet").read_bytes() == before


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_zoo(tiny_zoo, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "peace", "zoo", "build", "--preset", "tiny", "--out", str(out),
                             "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "parts").glob("*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_parts = len(list((out / "parts").glob("*.parquet")))
    # killed part-way: at least one population left to train (a starved poll may see more than 3 parts)
    assert 3 <= n_parts < tiny_zoo.manifest["population_id"].nunique() and not (out / "manifest.parquet").exists()
    with pytest.raises(PeaceError, match="not a finished zoo"):
        Zoo(out)
    # what a kill inside a shard's write leaves (the kill above lands there only sometimes): the resume clears it
    (out / "shards" / ".0123abcd.safetensors.tmp-99999-deadbeef").write_bytes(b"half a shard")
    run_peace("zoo", "build", "--preset", "tiny", "--out", out, "--resume", "--quiet")
    resumed = Zoo(out)
    cols = [c for c in tiny_zoo.manifest.columns]
    a = tiny_zoo.manifest[cols].reset_index(drop=True)
    b = resumed.manifest[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns=["test_f1_per_class"]), b.drop(columns=["test_f1_per_class"]))
    for shard in tiny_zoo.manifest["shard"].unique():
        x, y = load_file(tiny_zoo.path / shard), load_file(out / shard)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert not list(out.rglob(".*.tmp-*"))


def test_cli_info_and_help(tiny_zoo):
    out = run_peace("zoo", "info", tiny_zoo.path).stdout
    assert "71 checkpoints of 29 runs" in out and "digits-rot90" in out
    assert "--resume" in run_peace("zoo", "build", "--help").stdout
    bad = run_peace("zoo", "build", "--preset", "nope", "--out", "x", check=False)
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_peace("zoo", "info", ROOT / "nowhere", check=False)
    assert missing.returncode == 2 and "peace zoo build" in missing.stderr


@pytest.mark.slow
def test_a_full_disk_during_a_build_is_one_line_and_resumes(tiny_zoo, tmp_path, monkeypatch, capsys):
    """safetensors reports a failed write as its own SafetensorError (ENOSPC seen on a full disk), not OSError."""
    from safetensors import SafetensorError

    import peace.zoo.store as store
    from peace.cli import main

    out, real, calls = tmp_path / "zoo", store.save_file, []

    def full_after_three(*args, **kw):
        calls.append(1)
        if len(calls) > 3:
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(*args, **kw)

    monkeypatch.setattr(store, "save_file", full_after_three)
    assert main(["zoo", "build", "--preset", "tiny", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "--resume" in err, err
    assert len(list((out / "shards").glob("*.safetensors"))) == 3 and not list(out.rglob(".*.tmp-*"))
    monkeypatch.setattr(store, "save_file", real)
    assert main(["zoo", "build", "--preset", "tiny", "--out", str(out), "--resume", "--quiet"]) == 0
    assert list(Zoo(out).manifest.index) == list(tiny_zoo.manifest.index)
