"""SIGKILL a real `peace train` and `peace embed` at random points: whatever is on disk is either
complete and valid or refused with a clear error, and resuming gives the uninterrupted result."""
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import QUICK, kill_when, run_peace
from safetensors.torch import load_file

from peace.core.errors import PeaceError
from peace.learn.run import load_encoder
from peace.serve.index import EmbeddingSet


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, random.Random(7).uniform(0.2, 2.0)])
def test_killed_training_resumes_to_the_uninterrupted_run(tiny_zoo, tiny_run, tmp_path, delay):
    out = tmp_path / "run"
    cmd = ["train", "--zoo", tiny_zoo.path, "--out", out, "--config", "tiny", "--set", *QUICK, "--quiet"]
    kill_when(cmd, lambda: (out / "checkpoint.pt").exists(), delay)
    for name in ("checkpoint.pt",):  # what is there is complete
        torch.load(out / name, weights_only=True)
    if (out / "encoder.json").exists():
        try:
            load_encoder(out)
        except PeaceError as e:  # killed between the two files of the best encoder
            assert "--resume" in str(e)
    pd.read_parquet(out / "history.parquet")
    run_peace(*cmd, "--resume")
    hist, ref = pd.read_parquet(out / "history.parquet"), tiny_run.history
    assert list(hist["epoch"]) == list(ref["epoch"])
    np.testing.assert_allclose(hist["train_loss"], ref["train_loss"], rtol=1e-4)
    a, b = load_file(str(out / "encoder.safetensors")), load_file(str(tiny_run.path / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    load_encoder(out)


@pytest.mark.slow
def test_killed_export_leaves_the_old_set_or_none_then_rebuilds(tiny_run, tmp_path):
    out = tmp_path / "emb"
    cmd = ["embed", "--run", tiny_run.path, "--out", out, "--trees", "100", "--no-umap", "--quiet"]
    staged = lambda: any(tmp_path.glob(".emb.new-*"))  # noqa: E731 - the new set is being written beside --out
    kill_when(cmd, staged, 0, may_finish=True)
    assert not out.exists() or EmbeddingSet(out)  # never a half-written set under the name
    run_peace(*cmd)
    es = EmbeddingSet(out)
    assert not list(tmp_path.glob(".emb.new-*")), "the killed writer's half-written set was not cleaned up"
    ref = run_peace("embed", "--run", tiny_run.path, "--out", tmp_path / "ref", "--trees", "100", "--no-umap", "--quiet")
    assert ref.returncode == 0
    np.testing.assert_array_equal(es.embeddings, EmbeddingSet(tmp_path / "ref").embeddings)
    for seed in range(2):  # over the complete set: killed anywhere in the rebuild, the old set or the new one
        kill_when(cmd, staged, random.Random(seed).uniform(0, 0.05), may_finish=True)
        np.testing.assert_array_equal(EmbeddingSet(out).embeddings, es.embeddings)
