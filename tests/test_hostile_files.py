"""Hostile model files, built here: refused cleanly by the library, `peace query`, `peace zoo add` and
the explorer's isolated reader, within bounded memory and time, with nothing stored and nothing crashed."""
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from conftest import ROOT, run_peace
from safetensors.torch import save_file
from torch import nn

from peace.core.errors import PeaceError
from peace.intake.importers import load_model
from peace.intake.sandbox import load_model_isolated
from peace.zoo.store import Zoo


class _Storage:  # pickled as torch pickles a storage: a persistent id
    def __init__(self, key, numel, typ=torch.FloatStorage):
        self.key, self.numel, self.typ = key, numel, typ


class _Tensor:  # pickled as torch pickles a tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", obj.typ, obj.key, "cpu", obj.numel) if isinstance(obj, _Storage) else None


def craft_pt(path, obj, entries, deflate=()):
    """A torch.save-style zip archive with whatever data.pkl and storage entries we choose."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, data in entries.items():
            z.writestr(f"archive/data/{key}", data,
                       compress_type=zipfile.ZIP_DEFLATED if key in deflate else zipfile.ZIP_STORED)
        z.writestr("archive/version", "3\n")


def _zip_pickle(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")


def _floats(*values):
    return struct.pack(f"<{len(values)}f", *values)


def _chain(p, w0, w1):  # a two-layer state dict of crafted tensors over storages "0" and "1"
    return {"0.weight": w0, "1.weight": w1}


class Meters(torch.Tensor):  # a tensor subclass (pickled with its class name)
    pass


def _legacy_overclaim(p):
    torch.save({"0.weight": torch.ones(3, 2), "1.weight": torch.ones(2, 3)}, p, _use_new_zipfile_serialization=False)
    data = bytearray(p.read_bytes())
    at = data.rfind(struct.pack("<q", 6))  # the last storage record's element count
    data[at:at + 8] = struct.pack("<q", 10**9)
    p.write_bytes(bytes(data))


def _torchscript(p):
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(p))


def _deep(p):
    obj: list = []
    for _ in range(200):
        obj = [obj]
    torch.save({"0.weight": obj}, p)


def _memo_bomb(p):  # one list put at memo index 2^32 - 16: the C unpickler would size its table to it
    _zip_pickle(p, b"\x80\x02}]r" + struct.pack("<I", 2**32 - 16) + b".")


def _alias_bomb(p):
    """A state dict whose value is 10^30 lists deep in shared references: 200 bytes of pickle."""
    ops = b"\x80\x02}X\x08\x00\x00\x000.weight]q\x000"  # {}, key; L0 = [] into memo 0, popped
    for i in range(30):  # L(i+1) = [Li] * 10 into memo i + 1; all but the last popped
        ops += b"(" + (b"h" + bytes([i])) * 10 + b"lq" + bytes([i + 1]) + (b"0" if i < 29 else b"")
    _zip_pickle(p, ops + b"s.")


def _legacy_big_pickle(p):  # a legacy (non-zip) file with a 40 MB pickle: the zip format's size cap applies too
    torch.save({"0.weight": torch.ones(2, 2), "note": "x" * 40_000_000}, p, _use_new_zipfile_serialization=False)


HOSTILE = {  # name -> (make(path), what the error must say)
    "pickle memo index 2^32": (_memo_bomb, "memo index 4294967280"),
    "shared references expanding to 10^30 values": (_alias_bomb, "more than 2,000,000 values once shared references"),
    "legacy file with a 40 MB pickle": (_legacy_big_pickle, "a pickle of more than 33554432 bytes"),
    "storage over-claims its bytes": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 100), 0, (10, 10), (10, 1)),
                                                                   _Tensor(_Storage("1", 20), 0, (2, 10), (10, 1))),
                                                         {"0": _floats(1.0) * 7, "1": _floats(1.0) * 20}),
                                      r"storage 0 declares 100 FloatStorage values \(400 bytes\) but its entry holds 28"),
    "view past its storage": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 4), 0, (4, 4), (4, 1)),
                                                           _Tensor(_Storage("1", 8), 0, (2, 4), (4, 1))),
                                                 {"0": _floats(1, 2, 3, 4), "1": _floats(*range(8))}),
                              "reaches past its storage of 4 values"),
    "huge shape over one value": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 1), 0, (10**6, 10**6), (0, 0)),
                                                               _Tensor(_Storage("1", 1), 0, (2, 10**6), (0, 0))),
                                                     {"0": _floats(1), "1": _floats(1)}),
                                  "shapes declare .* MiB of values, over the 512 MiB limit"),
    "huge declared storage": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 10**12), 0, (2, 2), (2, 1)),
                                                           _Tensor(_Storage("1", 4), 0, (2, 2), (2, 1))),
                                                 {"0": _floats(1, 2, 3, 4), "1": _floats(1, 2, 3, 4)}),
                              r"storage 0 declares 1000000000000 FloatStorage values"),
    "negative offset": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 4), -2, (2, 2), (2, 1)),
                                                     _Tensor(_Storage("1", 4), 0, (2, 2), (2, 1))),
                                           {"0": _floats(1, 2, 3, 4), "1": _floats(1, 2, 3, 4)}),
                        "malformed tensor record"),
    "strides past int64": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 4), 0, (1, 4), (2**63, 1)),
                                                        _Tensor(_Storage("1", 4), 0, (4, 1), (1, 2**64))),
                                              {"0": _floats(1, 2, 3, 4), "1": _floats(1, 2, 3, 4)}),
                           "malformed tensor record"),
    "zip bomb": (lambda p: craft_pt(p, _chain(p, _Tensor(_Storage("0", 2**24), 0, (4096, 4096), (4096, 1)),
                                              _Tensor(_Storage("1", 4096), 0, (1, 4096), (4096, 1))),
                                    {"0": bytes(2**26), "1": bytes(4 * 4096)}, deflate={"0"}),
                 "compressed zip entries"),
    "legacy format over-claim": (_legacy_overclaim, "storage .* declares 6 values but its data record says otherwise"),
    "sparse tensor": (lambda p: torch.save({"0.weight": torch.eye(3).to_sparse()}, p), "a sparse tensor"),
    "meta tensor": (lambda p: torch.save({"0.weight": torch.empty(3, 3, device="meta")}, p), "a meta tensor"),
    "nested tensor": (lambda p: torch.save({"0.weight": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])}, p),
                      "a nested tensor"),
    "tensor subclass": (lambda p: torch.save({"0.weight": torch.ones(2, 2).as_subclass(Meters)}, p), "a tensor subclass"),
    "quantized tensor": (lambda p: torch.save({"0.weight": torch.quantize_per_tensor(torch.ones(2, 2), 0.1, 0, torch.qint8)}, p),
                         "a quantized tensor"),
    "TorchScript archive": (_torchscript, "a TorchScript archive"),
    "nesting 200 deep": (_deep, "nest"),
    "100,000 chained 1x1 layers": (lambda p: save_file({f"l.{i}.weight": torch.ones(1, 1) for i in range(100_000)}, str(p)),
                                   "100,000 layers"),
    "pickle string declaring 2^56 bytes": (lambda p: p.write_bytes(b"\x80\x02\x8d" + struct.pack("<Q", 2**56)),
                                           "not a valid pickle .*expected 72057594037927936 bytes"),
    "zipped pickle string declaring 2^56 bytes": (
        lambda p: _zip_pickle(p, b"\x80\x02\x8d" + struct.pack("<Q", 2**56)), "not a valid pickle"),
    "70,000 hidden units": (lambda p: save_file({"0.weight": torch.ones(70_000, 1), "1.weight": torch.ones(1, 70_000)}, str(p)),
                            "70,000 neurons in one layer"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    files = {}
    for i, (name, (make, _)) in enumerate(HOSTILE.items()):
        files[name] = d / f"m{i}.pt"
        make(files[name])
    return files


def test_the_crafting_is_faithful_a_well_formed_crafted_file_reads(tmp_path):
    """Control: the same crafting with honest sizes gives a model equal to the declared values."""
    craft_pt(tmp_path / "ok.pt", _chain(None, _Tensor(_Storage("0", 6), 0, (3, 2), (2, 1)),
                                        _Tensor(_Storage("1", 8), 1, (2, 3), (1, 2))),  # a strided view with offset
             {"0": _floats(*range(6)), "1": _floats(*range(8))})
    m = load_model(tmp_path / "ok.pt", {"activation": "relu"})
    assert m.spec.describe() == "mlp 2-3-2 relu nobias"
    assert m.params["layers.0.weight"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert m.params["layers.1.weight"].tolist() == [[1, 3, 5], [2, 4, 6]]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_file_is_refused_naming_the_problem(corpus, name):
    with pytest.raises(PeaceError, match=HOSTILE[name][1]) as e:
        load_model(corpus[name], {"activation": "relu"})
    assert str(corpus[name]) in str(e.value) and "\n" not in str(e.value)


def test_the_whole_corpus_costs_bounded_memory_and_time(corpus):
    """One fresh process reads every file: peak RSS and wall time stay small, every file is refused.
    Peak RSS is VmHWM, which exec resets; ru_maxrss would carry over the (large) pytest worker's peak."""
    script = ("import json, re, sys, time\nfrom peace.intake.importers import load_model\nfrom peace.core.errors import PeaceError\n"
              "def hwm():\n    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024\n"
              "base = hwm(); t = time.time(); out = {}\nfor name, path in json.loads(sys.argv[1]).items():\n"
              "    try:\n        load_model(path, {'activation': 'relu'}); out[name] = 'READ'\n"
              "    except PeaceError as e:\n        out[name] = str(e)\n"
              "print(json.dumps({'errors': out, 'seconds': time.time() - t, 'base_mib': base, 'peak_mib': hwm()}))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in corpus.items()})],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert "READ" not in r["errors"].values()
    assert r["peak_mib"] - r["base_mib"] < 1024 and r["seconds"] < 120, r


@pytest.mark.slow
def test_the_explorers_isolated_reader_refuses_the_corpus(corpus):
    for name, path in corpus.items():
        with pytest.raises(PeaceError, match=HOSTILE[name][1]):
            load_model_isolated(path, {"activation": "relu"})


def test_the_isolated_reader_enforces_its_limits(tmp_path):
    torch.save(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4)).state_dict(), tmp_path / "ok.pt")
    m = load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"})
    assert m.spec.describe() == "mlp 64-256-4 relu" and m.params["layers.0.weight"].shape == (256, 64)
    with pytest.raises(PeaceError, match="took over 0 s and was stopped"):  # stopped, whatever it was doing
        load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}, timeout_s=0)
    os.mkfifo(tmp_path / "pipe.pt")  # a read would wait for a writer forever
    with pytest.raises(PeaceError, match="pipe.pt: not a regular file"):
        load_model_isolated(tmp_path / "pipe.pt", {"activation": "relu"})
    with pytest.raises(PeaceError, match="ok.pt"):  # no room to read it: refused, the caller lives on
        load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}, memory_mib=0)


def test_readers_fork_from_one_process_started_ahead_and_a_crash_takes_nothing_with_it(tmp_path):
    """``prepare_reader`` starts the process that forks the readers early (the explorer does while a user
    picks a file). Every file then gets its own forked child under the limits: a file that kills its
    reader or runs out of time leaves the next file's read unharmed, from the same process, and a
    process that died is replaced."""
    import peace.intake.sandbox as sandbox

    torch.save(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).state_dict(), tmp_path / "ok.pt")
    sandbox.prepare_reader()
    zygote = sandbox._zygote
    assert load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}).spec.describe() == "mlp 64-16-4 relu"
    with pytest.raises(PeaceError, match="ok.pt"):  # no room to read it, though the imports were done before
        load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}, memory_mib=0)
    with pytest.raises(PeaceError, match="took over 0 s and was stopped"):
        load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}, timeout_s=0)
    t0 = time.perf_counter()
    for _ in range(5):  # forks, not interpreters: no import per file
        assert load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}).spec.describe() == "mlp 64-16-4 relu"
    assert sandbox._zygote is zygote and zygote.poll() is None and time.perf_counter() - t0 < 10
    zygote.kill()
    zygote.wait()
    assert load_model_isolated(tmp_path / "ok.pt", {"activation": "relu"}).spec.describe() == "mlp 64-16-4 relu"
    assert sandbox._zygote is not zygote and sandbox._zygote.poll() is None


def test_a_chain_without_its_activation_comes_back_read_as_identity_from_one_child(tmp_path):
    """The explorer tells a plain chain's activation by data: the one child that found it missing hands
    the chain back read with the identity (no second read of an untrusted file)."""
    import peace.intake.sandbox as sandbox
    from peace.intake.importers import NO_ACTIVATION, MissingActivation

    net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 4))
    torch.save(net.state_dict(), tmp_path / "chain.pt")
    sandbox.prepare_reader()
    with pytest.raises(MissingActivation, match=NO_ACTIVATION) as caught:
        load_model_isolated(tmp_path / "chain.pt", {})
    m = caught.value.model
    assert m.spec.describe() == "mlp 64-16-4 identity"
    assert torch.equal(m.params["layers.0.weight"], net[0].weight.detach())
    torch.save({"0.weight": torch.ones(2, 2, dtype=torch.int64)}, tmp_path / "bad.pt")
    with pytest.raises(PeaceError, match="dtype torch.int64") as caught:  # a fault of the file is not a question
        load_model_isolated(tmp_path / "bad.pt", {})
    assert not isinstance(caught.value, MissingActivation)


@pytest.mark.slow
def test_the_command_line_refuses_hostile_files_and_stores_nothing(corpus, tiny_zoo, artifacts, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo.path, zoo)
    before = {p.name: p.stat().st_mtime_ns for p in zoo.rglob("*")}
    for name in ("storage over-claims its bytes", "view past its storage", "zip bomb"):
        add = run_peace("zoo", "add", zoo, corpus[name], "--activation", "relu", check=False)
        assert add.returncode == 2 and add.stderr.startswith("peace: error: ") and "Traceback" not in add.stderr, add.stderr
    q = run_peace("query", corpus["huge shape over one value"], "--embeddings", artifacts / "embeddings" / "tiny",
                  "--activation", "relu", check=False)
    assert q.returncode == 2 and "peace: error:" in q.stderr and "Traceback" not in q.stderr, q.stderr
    assert {p.name: p.stat().st_mtime_ns for p in zoo.rglob("*")} == before and len(Zoo(zoo)) == len(tiny_zoo)


@pytest.mark.parametrize("make, msg", [
    (lambda: torch.empty(3, 3, device="meta"), "a meta tensor"),
    (lambda: torch.eye(3).to_sparse(), "a sparse or other non-dense tensor"),
    (lambda: torch.ones(3, 3).as_subclass(Meters), "a tensor subclass"),
    (lambda: torch.nested.nested_tensor([torch.ones(3), torch.ones(3)]), "a nested tensor"),
])
def test_in_memory_state_dicts_with_exotic_tensors_are_refused(make, msg):
    from peace.intake.importers import from_state_dict

    with pytest.raises(PeaceError, match=msg):
        from_state_dict({"0.weight": make(), "1.weight": torch.ones(2, 3)}, {"activation": "relu"})
