"""Encoder throughput and training time per epoch: DGL vs pure-torch message passing, side by side.

    python benchmarks/bench_encoder.py artifacts/zoos/demo [--run RUN [RUN ...]] [--threads 2] [--epoch]
    python benchmarks/bench_encoder.py artifacts/zoos/demo --messages mlp gated --backends torch   # message functions
    python benchmarks/bench_encoder.py ZOO --device cuda --backends torch --epoch    # on a GPU machine

Embedding throughput counts everything `peace embed` does per model (canonical form, graph, batch,
probe responses and sketch when the encoder reads them, forward), for the encoders of ``--run`` (default:
untrained default-config encoders, one per ``--messages`` function, the first being the reference the
others are compared with). Each encoder and backend embeds twice: model by model (every graph built
alone, messages gathered and scattered per edge: how PEACE embedded before issue 27) and as it does
now (models of one architecture built as one population, dense layers' messages by broadcasting),
with the largest difference between the two. Training throughput is one optimizer step on two views
per model. With ``--epoch`` each encoder also runs one real training epoch with
`peace.learn.trainer.fit` (default config; pruned and distilled views off, since they are a one-time
cost per run, timed separately with ``--views``).
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch

from peace.core.device import resolve_device
from peace.learn import encoder
from peace.learn.contrastive import AugmentConfig, build_views
from peace.learn.encoder import EncoderConfig, PeaceEncoder, dgl_available
from peace.learn.run import load_encoder
from peace.learn.runconfig import load_config
from peace.learn.trainer import fit
from peace.nets.graph import batch_graphs
from peace.zoo.store import Zoo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def model_by_model():
    """``encoder.batch`` as before issue 27 while inside: each graph built alone, so no population and
    no dense block (the same batches, probe responses and forward otherwise)."""
    population_batch = encoder.prepare_batch
    encoder.prepare_batch = lambda specs, params, config: batch_graphs(
        [encoder.prepare(s, p, config) for s, p in zip(specs, params)])
    try:
        yield
    finally:
        encoder.prepare_batch = population_batch


def embed_rate(embed, specs, weights, batch: int, device) -> tuple[float, torch.Tensor]:
    embed(specs[:batch], weights[:batch], batch)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    out = embed(specs, weights, batch)
    _sync(device)
    return len(specs) / (time.perf_counter() - t0), out


def train_rate(enc: PeaceEncoder, specs, weights, batch: int, device, amp: bool) -> float:
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)
    enc.train()
    n = 0
    t0 = None
    for s in range(0, len(specs), batch):
        if s == batch:  # the first step is a warm-up
            _sync(device)
            t0, n = time.perf_counter(), 0
        g = enc.batch(specs[s:s + batch] * 2, weights[s:s + batch] * 2, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = enc(g)
        (out["projection"].float().pow(2).sum() + out["aux"].float().pow(2).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += 2 * len(specs[s:s + batch])
    _sync(device)
    return n / (time.perf_counter() - t0)


def _encoders(args, device) -> list[tuple[str, str, object]]:
    """(label, backend, factory) for every encoder to time: each ``--run`` or, without one, an untrained
    default-config encoder per ``--messages`` entry; on each backend."""
    backends = [b for b in args.backends if b == "torch" or (dgl_available() and device.type == "cpu")]
    out = []
    for b in backends:
        if args.run:
            out += [(run, b, lambda run=run, b=b: load_encoder(run, str(device), backend=b)) for run in args.run]
        else:
            out += [(f"{m} messages", b, lambda m=m, b=b: PeaceEncoder(EncoderConfig(backend=b, message=m)))
                    for m in args.messages]
    return out


def _epoch(zoo: Zoo, label: str, backend: str, device) -> float:
    """Seconds of one real training epoch of the default config with ``label``'s message function."""
    message = label.split()[0] if label.endswith("messages") else "mlp"
    cfg = load_config("default", [f"encoder.backend={backend}", f"encoder.message={message}", "train.epochs=1",
                                  "augment.pruned=false", "augment.distilled=false"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = fit(zoo, cfg, f"{tmp}/run", device=str(device), progress=False)
        sec = float(res.history["seconds"].iloc[0])
        print(f"[{label} / {backend}] one training epoch ({sec:.1f} s, validation included; "
              f"{time.perf_counter() - t0:.1f} s with set-up), val mAP after it {res.best_val_map:.3f}")
    return sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo")
    ap.add_argument("--run", nargs="+", help="embed with these runs' trained encoders (default: untrained encoders)")
    ap.add_argument("--messages", nargs="+", default=["mlp"], choices=["mlp", "gated"],
                    help="message functions of the untrained default encoders to compare (without --run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", nargs="+", default=["dgl", "torch"], choices=["dgl", "torch"])
    ap.add_argument("--embed", type=int, default=1024, help="models to embed / train on (deterministic sample)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epoch", action="store_true", help="also time one real training epoch per encoder")
    ap.add_argument("--views", action="store_true", help="also time building the pruned / distilled views")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    zoo = Zoo(args.zoo)
    m = zoo.manifest[zoo.manifest["status"] == "ok"]
    ids = list(m.sample(min(args.embed, len(m)), random_state=0)["model_id"])
    specs, weights = [zoo.spec(i) for i in ids], zoo.load_many(ids)
    amp = device.type == "cuda"
    print(f"{zoo.name}: {len(ids)} models, device {device}, torch {torch.__version__}, {args.threads} CPU threads")
    rows = {}
    for label, b, make in _encoders(args, device):
        torch.manual_seed(0)
        enc = make().to(device)
        with model_by_model():
            before, e_before = embed_rate(enc.embed, specs, weights, 128, device)
        now, e_now = embed_rate(enc.embed, specs, weights, 128, device)
        rows[label, b] = {"embed": now, "train": train_rate(enc, specs, weights, args.batch, device, amp)}
        print(f"[{label} / {b}] embed model by model {before:8.1f} models/s, by population {now:8.1f} models/s "
              f"({now / before:.1f}x, max |difference| {(e_now - e_before).abs().max():.1e})   "
              f"train {rows[label, b]['train']:8.1f} graphs/s")
    if args.epoch:
        for label, b in rows:
            rows[label, b]["epoch"] = _epoch(zoo, label, b, device)
    first = next(iter(rows))
    for (label, b), r in list(rows.items())[1:]:
        f = rows[first]
        print(f"[{label} / {b}] against [{first[0]} / {first[1]}]: embedding {r['embed'] / f['embed']:.2f}x, "
              f"training {r['train'] / f['train']:.2f}x" + (f", epoch time {f['epoch'] / r['epoch']:.2f}x faster"
                                                              if "epoch" in r else ""))
    if args.views:
        train = m[m["model_id"].isin(ids)]
        t0 = time.perf_counter()
        views = build_views(train.reset_index(drop=True), dict(zip(ids, weights)), AugmentConfig(), seed=0)
        dt = time.perf_counter() - t0
        print(f"pruned + distilled views for {len(views)} models: {dt:.1f} s ({len(views) / dt:.1f} models/s)")


if __name__ == "__main__":
    main()
