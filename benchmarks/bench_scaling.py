"""Scalability: PEACE embedding time per model against the model's parameter count.

    python benchmarks/bench_scaling.py [--threads 2] [--backend auto] [--models 64] [--device cpu]

MLPs (64 inputs, two hidden layers of width w, 10 classes), CNNs (8x8 images, two conv layers
of w channels, one hidden linear layer), ResNets (32x32x3 images, two stages of one basic block,
w and 2w channels, BatchNorm) and ViTs (32x32x3 images, 4x4 patches, width w, 2 heads, 2 blocks, MLP
2w) of growing width, random weights, embedded by the default encoder
(untrained: speed does not depend on what it learnt). Everything `peace embed` does per model is
timed (canonical form, graph, batch, forward). Prints parameters, graph size, ms per model and the
log-log slope of time against parameters (1 = linear). Then a torchvision-layout resnet18 (11.7M
parameters, random init) goes the way of a user's file: written as safetensors, read by
`load_model`, embedded by the trained default's encoder configuration (function tokens on), each
step timed, with the process's peak memory above its state before the file was read. Query time
against zoo size is `benchmarks/bench_index.py` (10k, 100k, 1M embeddings).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from peace.core.device import resolve_device
from peace.intake.importers import load_model
from peace.learn.encoder import EncoderConfig, build_encoder, prepare
from peace.learn.runconfig import load_config
from peace.nets.architectures import ArchSpec, build_module
from peace.zoo.population import HParams, init_params

WIDTHS = (8, 16, 32, 64, 128, 256)


def family_specs(width: int) -> dict[str, ArchSpec]:
    return {"mlp": ArchSpec("mlp", (64,), 10, hidden=(width, width)),
            "cnn": ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(width, width), fc_hidden=(32,)),
            "resnet": ArchSpec("resnet", (3, 32, 32), 10, hidden=(width, 2 * width), blocks=(1, 1), norm="batch",
                               bias=False),
            "vit": ArchSpec("vit", (3, 32, 32), 10, hidden=(width,), fc_hidden=(2 * width,), blocks=(2,), heads=2,
                            kernel_size=4, pool="cls", norm="layer", activation="gelu")}


def _peak_mib() -> float:
    """The process's peak resident memory so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resnet18(device: torch.device, backend: str) -> None:
    """A user's resnet18 file, read and embedded step by step."""
    spec = ArchSpec("resnet", (3, 224, 224), 1000, hidden=(64, 128, 256, 512), blocks=(2, 2, 2, 2), norm="batch",
                    bias=False, stem_kernel=7, stem_stride=2, stem_pool="max")
    torch.manual_seed(0)
    state = {k: v for k, v in build_module(spec).state_dict().items() if not k.endswith("num_batches_tracked")}
    config = load_config("default").encoder
    config.backend = backend
    enc = build_encoder(config).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        save_file(state, f"{d}/model.safetensors")
        (Path(d) / "config.json").write_text(json.dumps({"input_shape": [3, 32, 32]}))
        del state
        before = _peak_mib()
        t0 = time.perf_counter()
        m = load_model(d)
        t1 = time.perf_counter()
        g = prepare(m.spec, m.params, enc.config)
        t2 = time.perf_counter()
        with torch.no_grad():
            enc.embed([m.spec], [m.params])
        t3 = time.perf_counter()
    print(f"resnet18 ({m.spec.n_params:,} parameters and statistics; input 3x32x32; encoder 'default', "
          f"{enc.backend}): read {t1 - t0:.2f} s, canonical form + graph {t2 - t1:.2f} s ({g.num_nodes:,} nodes, "
          f"{g.num_edges:,} edges of {sum(m_.in_features * m_.out_features for m_ in m.spec.layers):,}), "
          f"embed (graph again, probes, forward) {t3 - t2:.2f} s; total {t3 - t0:.2f} s; "
          f"peak memory +{_peak_mib() - before:.0f} MiB over the {before:.0f} MiB before reading")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto", choices=["auto", "dgl", "torch"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", type=int, default=64, help="models embedded per width (in one call)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resnet18-only", action="store_true", help="only the resnet18 file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    resnet18(device, args.backend)  # first: its peak memory is measured from this process's state after imports
    if args.resnet18_only:
        return
    enc = build_encoder(EncoderConfig(backend=args.backend)).to(device).eval()
    torch.manual_seed(0)
    print(f"encoder backend {enc.backend}, device {device}, {args.threads} threads, {args.models} models per row")
    print(f"{'family':6} {'width':>5} {'params':>8} {'nodes':>6} {'edges':>7} {'ms/model':>9} {'models/s':>9}")
    for family in ("mlp", "cnn", "resnet", "vit"):
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
