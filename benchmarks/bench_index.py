"""Annoy vs exact numpy search on synthetic embeddings of the default dimension, side by side.

    python benchmarks/bench_index.py [--sizes 10000 100000 1000000] [--dim 64] [--trees 50] [--queries 500]

Embeddings are a mixture of Gaussian clusters (like real model embeddings: many near-duplicates
of a few thousand functions), unit-normalized; ``--data gaussian`` is structureless noise, the
worst case for an approximate index. For each size: Annoy build time, p50/p99 latency of
single queries and recall@10 against exact cosine search (brute-force numpy, also timed per query).
Goal (issue 5): recall@10 >= 0.95 with p50 under 1 ms at 100k.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from annoy import AnnoyIndex

from peace.serve.index import build_annoy


def synthetic(n: int, dim: int, data: str = "clustered", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if data == "gaussian":  # no structure at all: the hardest case for any approximate index
        x = rng.normal(size=(n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    centers = rng.normal(size=(max(10, n // 100), dim)).astype(np.float32)
    x = centers[rng.integers(len(centers), size=n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--trees", type=int, default=50)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    ap.add_argument("--search-k", type=int, nargs="+", default=[-1, 20_000],
                    help="Annoy search_k values to report (-1: Annoy's default, trees * k)")
    args = ap.parse_args()
    print(f"{args.data} data, dim {args.dim}, {args.trees} trees, {args.queries} single queries per size, k = 10")
    print(f"{'n':>9} {'build s':>8} {'search_k':>9} {'annoy p50 ms':>13} {'p99 ms':>8} {'recall@10':>10} "
          f"{'exact p50 ms':>13} {'exact/annoy':>12}")
    for n in args.sizes:
        x = synthetic(n, args.dim, args.data)
        rng = np.random.default_rng(1)
        q = x[rng.choice(n, size=args.queries, replace=False)] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_annoy(x, f"{tmp}/i.ann", args.trees)
            build = time.perf_counter() - t0
            index = AnnoyIndex(args.dim, "angular")
            index.load(f"{tmp}/i.ann")
            exact_t, truth = [], []
            for v in q:
                t0 = time.perf_counter()
                s = x @ v
                top = np.argpartition(-s, 10)[:10]
                exact_t.append(time.perf_counter() - t0)
                truth.append(set(top[np.argsort(-s[top])].tolist()))
            for sk in args.search_k:
                lat, rec = [], []
                for v, t in zip(q, truth):
                    t0 = time.perf_counter()
                    got = index.get_nns_by_vector(v.tolist(), 10, search_k=sk)
                    lat.append(time.perf_counter() - t0)
                    rec.append(len(t & set(got)) / 10)
                p50, p99, e50 = (np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3,
                                 np.percentile(exact_t, 50) * 1e3)
                print(f"{n:>9} {build:>8.1f} {sk:>9} {p50:>13.3f} {p99:>8.3f} {np.mean(rec):>10.3f} {e50:>13.3f} "
                      f"{e50 / p50:>11.1f}x", flush=True)
            index.unload()


if __name__ == "__main__":
    main()
