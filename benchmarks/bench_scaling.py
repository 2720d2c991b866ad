"""Scalability: PEACE embedding time per model against the model's parameter count.

    python benchmarks/bench_scaling.py [--threads 2] [--backend auto] [--models 64] [--device cpu]

MLPs (64 inputs, two hidden layers of width w, 10 classes) and CNNs (8x8 images, two conv layers
of w channels, one hidden linear layer) of growing width, random weights, embedded by the default
encoder (untrained: speed does not depend on what it learnt). Everything `peace embed` does per model
is timed (canonical form, graph, batch, forward). Prints parameters, graph size, ms per model and
the log-log slope of time against parameters (1 = linear). Query time against zoo size is
`benchmarks/bench_index.py` (10k, 100k, 1M embeddings).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from peace.architectures import ArchSpec
from peace.encoder import EncoderConfig, build_encoder, prepare
from peace.population import HParams, init_params
from peace.trainer import resolve_device

WIDTHS = (8, 16, 32, 64, 128, 256)


def family_specs(width: int) -> dict[str, ArchSpec]:
    return {"mlp": ArchSpec("mlp", (64,), 10, hidden=(width, width)),
            "cnn": ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(width, width), fc_hidden=(32,))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=["auto", "dgl", "torch"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", type=int, default=64, help="models embedded per width (in one call)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    enc = build_encoder(EncoderConfig(backend=args.backend)).to(device).eval()
    torch.manual_seed(0)
    print(f"encoder backend {enc.backend}, device {device}, {args.threads} threads, {args.models} models per row")
    print(f"{'family':6} {'width':>5} {'params':>8} {'nodes':>6} {'edges':>7} {'ms/model':>9} {'models/s':>9}")
    for family in ("mlp", "cnn"):
        params_n, times = [], []
        for w in WIDTHS:
            spec = family_specs(w)[family]
            pop = init_params(spec, [HParams(seed=i) for i in range(args.models)])
            weights = [{k: v[i] for k, v in pop.items()} for i in range(args.models)]
            g = prepare(spec, weights[0], enc.config)
            enc.embed([spec] * 2, weights[:2], args.batch)  # warm-up
            t0 = time.perf_counter()
            enc.embed([spec] * args.models, weights, args.batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / args.models
            n = sum(v.numel() for v in weights[0].values())
            params_n.append(n)
            times.append(dt)
            print(f"{family:6} {w:>5} {n:>8} {len(g.node_layer):>6} {len(g.src):>7} {1e3 * dt:>9.2f} {1 / dt:>9.1f}", flush=True)
        slope = np.polyfit(np.log(params_n), np.log(times), 1)[0]
        print(f"{family}: time grows as params^{slope:.2f} from {params_n[0]} to {params_n[-1]} parameters")


if __name__ == "__main__":
    main()
