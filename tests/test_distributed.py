"""Data-parallel encoder training (torch DDP, 2 gloo processes on CPU) against one process with the
same global batch; launched by `peace train --nproc 2` and by torchrun."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK, ROOT, run_peace
from safetensors.torch import load_file

from peace.learn.distributed import Rank
from peace.learn.runconfig import load_config
from peace.learn.trainer import fit


def test_shares_cover_a_batch_in_order():
    for n in (0, 1, 5, 64, 67):
        for size in (1, 2, 3):
            parts = [range(n)[Rank(r, size).share(n)] for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _same_run(a, b, weight_atol):
    ha, hb = pd.read_parquet(a / "history.parquet"), pd.read_parquet(b / "history.parquet")
    assert list(ha["epoch"]) == list(hb["epoch"]) and list(ha["best"]) == list(hb["best"])
    # DDP all-reduces gradients: float32 sums in another order, ~1 ulp (6e-8) apart per step, which Adam's
    # 1/sqrt(v) amplifies for near-zero gradients and the epochs compound: 1.7e-5 relative was seen after 3
    # epochs on a loaded machine. 1e-4 leaves room for that; a wrong reduction (a mean over ranks missing, a
    # share of the batch seen twice) moves the losses by far more than that from the first epoch on.
    for col in ("train_loss", "train_nce", "train_aux", "val_map"):
        np.testing.assert_allclose(hb[col], ha[col], rtol=1e-4, atol=1e-6)
    wa, wb = load_file(a / "encoder.safetensors"), load_file(b / "encoder.safetensors")
    assert wa.keys() == wb.keys()
    # Adam divides by sqrt(v): rounding differences in near-zero gradients move a weight by up to ~lr
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < weight_atol
    assert json.loads((b / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_two_gloo_processes_train_what_one_process_trains(tiny_zoo, tmp_path):
    overrides = QUICK
    alone = fit(tiny_zoo, load_config("tiny", overrides), tmp_path / "alone", progress=False).path
    args = ["train", "--zoo", tiny_zoo.path, "--config", "tiny", "--set", *overrides, "--quiet"]
    p = run_peace(*args, "--out", tmp_path / "ddp", "--nproc", "2")
    assert p.stdout.count("best epoch") == 1  # rank 0 reports
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["processes"] == 2
    _same_run(alone, tmp_path / "ddp", weight_atol=5e-3)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "peace"]
    t = subprocess.run(torchrun + [str(a) for a in args] + ["--out", str(tmp_path / "torchrun")], cwd=ROOT,
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr[-2000:]
    _same_run(alone, tmp_path / "torchrun", weight_atol=5e-3)
    again = run_peace(*args, "--out", tmp_path / "ddp", "--nproc", "2", check=False)  # an error in the processes
    assert again.returncode == 2 and "is not empty; pass --resume" in again.stderr and "Traceback" not in again.stderr
