"""Several writers of one zoo take turns: every model lands exactly once, the zoo opens, exits are truthful."""
import multiprocessing as mp
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from safetensors.torch import save_file
from torch import nn

from peace.core.atomic import locked
from peace.core.errors import PeaceError
from peace.zoo.store import Zoo

WRITERS = 4


def _models(tmp_path, n, first_seed=100):
    paths = []
    for i in range(n):
        torch.manual_seed(first_seed + i)
        net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(paths[-1]))
    return paths


def _add(zoo, model, conn):
    from peace.zoo.imported import add_models

    try:
        add_models(zoo, [model])
        conn.send("")
    except Exception as e:  # noqa: BLE001 (sent to the test, which shows it)
        conn.send(repr(e))


def _check(zoo, before, added_ids_expected):
    z = Zoo(zoo)  # opens: manifest and zoo.json agree
    new = z.manifest.iloc[before:]
    assert len(z) == before + added_ids_expected and new["model_id"].is_unique
    for mid in new["model_id"]:
        z.weights(mid)  # every shard is there and matches its checksum


def test_four_concurrent_zoo_add_commands_all_land(tiny_zoo, tmp_path):
    """Real `peace zoo add` processes at once."""
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    paths = _models(tmp_path, WRITERS)
    procs = [subprocess.Popen([sys.executable, "-m", "peace", "zoo", "add", str(zoo), str(p), "--activation", "relu"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in paths]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, [o[1] for o in outs]
    _check(zoo, len(tiny_zoo), WRITERS)


def test_concurrent_adds_twenty_times_in_a_row(tiny_zoo, tmp_path):
    """The writers' part of the same (the zoo's lock and crash-safe append, ``add_models``) in forked
    processes, 20 rounds: the files are read once here, so each round costs the writes, not four readers."""
    from peace.intake.importers import load_model

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    ctx = mp.get_context("fork")
    for round_ in range(20):
        (tmp_path / f"r{round_}").mkdir()
        models = [load_model(p, {"activation": "relu"})
                  for p in _models(tmp_path / f"r{round_}", WRITERS, first_seed=1000 + WRITERS * round_)]
        before = len(Zoo(zoo))
        pipes = [ctx.Pipe(duplex=False) for _ in models]
        procs = [ctx.Process(target=_add, args=(zoo, m, w)) for m, (_, w) in zip(models, pipes)]
        for p in procs:
            p.start()
        errors = [r.recv() for r, _ in pipes]
        for p in procs:
            p.join(60)
        assert errors == [""] * WRITERS and [p.exitcode for p in procs] == [0] * WRITERS, (round_, errors)
        _check(zoo, before, WRITERS)


def test_a_second_writer_waits_then_times_out_with_a_clear_error(tmp_path, capsys):
    ctx = mp.get_context("fork")
    ready, hold = ctx.Event(), ctx.Event()

    def holder():
        with locked(tmp_path, "zoo"):
            ready.set()
            hold.wait(30)

    p = ctx.Process(target=holder)
    p.start()
    assert ready.wait(30)
    with pytest.raises(PeaceError, match="locked by another writer for over 0 s"):
        with locked(tmp_path, "zoo", timeout=0.2):
            pass
    assert "being written by another process; waiting" in capsys.readouterr().err
    hold.set()
    p.join(30)
    with locked(tmp_path, "zoo", timeout=5):  # free again; a killed holder would free it too
        pass
