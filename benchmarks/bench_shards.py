"""Zoo shard I/O: safetensors' torch side against its numpy side, side by side in one run.

Reads every model of a zoo both ways (as ``Zoo.load_many`` did, and as it does now) and writes the
same models as one shard both ways, checking that the files are byte for byte the same and that
the tensors read match; best of ``--repeats``, alternating, so both see the same machine.

    python benchmarks/bench_shards.py artifacts/zoos/demo --repeats 3
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from peace.zoo.store import Zoo


def _read(zoo: Zoo, framework: str) -> dict[str, torch.Tensor]:
    """Every tensor of every shard, read by safetensors' ``framework`` side ("pt" or "np")."""
    out = {}
    for shard in zoo.manifest["shard"].unique():
        with safe_open(str(zoo.path / shard), framework) as f:
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = t if framework == "pt" else torch.from_numpy(t)
    return out


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    n = len(zoo)
    a, b = _read(zoo, "pt"), _read(zoo, "np")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the two readers disagree"
    read_pt, read_np = (_best(lambda f=f: _read(zoo, f), args.repeats) for f in ("pt", "np"))
    with tempfile.TemporaryDirectory() as tmp:
        pt, np_ = Path(tmp) / "torch.safetensors", Path(tmp) / "numpy.safetensors"
        write_pt = _best(lambda: save_torch(a, str(pt)), args.repeats)
        write_np = _best(lambda: save_numpy({k: v.numpy() for k, v in a.items()}, str(np_)), args.repeats)
        same = pt.read_bytes() == np_.read_bytes()
    t0 = time.perf_counter()
    zoo.load_many(list(zoo.manifest["model_id"]))
    load_many = time.perf_counter() - t0
    print(f"{args.zoo}: {n} models, {len(a)} tensors in {zoo.manifest['shard'].nunique()} shards; "
          f"files written both ways byte-identical: {same}")
    print("| step | torch side | numpy side | ratio |\n|---|---|---|---|")
    print(f"| read every tensor (models/s) | {n / read_pt:.0f} | {n / read_np:.0f} | {read_pt / read_np:.2f}x |")
    print(f"| write one shard of all (models/s) | {n / write_pt:.0f} | {n / write_np:.0f} | {write_pt / write_np:.2f}x |")
    print(f"Zoo.load_many of every model, checksums verified: {n / load_many:.0f} models/s")


if __name__ == "__main__":
    main()
