"""Annoy vs exact numpy search on synthetic embeddings of the default dimension, side by side.

    python benchmarks/bench_index.py [--sizes 10000 100000 1000000] [--dim 64] [--trees 50] [--queries 500]
    python benchmarks/bench_index.py --sizes 1000000 --trees 10 20 30 50 --search-k 500 1000 2000 5000

Embeddings are a mixture of Gaussian clusters (like real model embeddings: many near-duplicates
of a few thousand functions), unit-normalized; ``--data gaussian`` is structureless noise, the
worst case for an approximate index. For each size and tree count: Annoy build time (the build
`peace embed` does, threads as ``--n-jobs``), p50/p99 latency of single queries and recall@10
against exact cosine search (brute-force numpy, also timed per query), for each ``--search-k``.
Several ``--trees`` and ``--search-k`` values make a sweep; the last lines name the cheapest setting
that meets the goal. Goal (issue 27): recall@10 >= 0.99 with p50 under 1 ms, build under 60 s, at 1M.
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


def exact_truth(x: np.ndarray, q: np.ndarray, k: int = 10) -> tuple[list[set[int]], float]:
    """The exact top-k of each query by cosine (rows are unit vectors) and the p50 time of one exact query."""
    times, truth = [], []
    for v in q:
        t0 = time.perf_counter()
        s = x @ v
        top = np.argpartition(-s, k)[:k]
        times.append(time.perf_counter() - t0)
        truth.append(set(top[np.argsort(-s[top])].tolist()))
    return truth, float(np.percentile(times, 50))


def search(index: AnnoyIndex, q: np.ndarray, truth: list[set[int]], search_k: int, k: int = 10) -> tuple[float, float, float]:
    """p50 and p99 latency (seconds) of single queries, as the explorer asks them, and mean recall@k."""
    lat, rec = [], []
    for v, t in zip(q, truth):
        t0 = time.perf_counter()
        got = index.get_nns_by_vector(v.tolist(), k, search_k=search_k)
        lat.append(time.perf_counter() - t0)
        rec.append(len(t & set(got)) / k)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), float(np.mean(rec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--trees", type=int, nargs="+", default=[50])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    ap.add_argument("--n-jobs", type=int, default=None, help="build threads (default: as `peace embed` builds)")
    ap.add_argument("--search-k", type=int, nargs="+", default=[-1, 20_000],
                    help="Annoy search_k values to report (-1: Annoy's default, trees * k)")
    ap.add_argument("--goal", type=float, nargs=3, default=[0.99, 1.0, 60.0], metavar=("RECALL", "P50_MS", "BUILD_S"))
    args = ap.parse_args()
    print(f"{args.data} data, dim {args.dim}, {args.queries} single queries per size, k = 10")
    print(f"{'n':>9} {'trees':>5} {'build s':>8} {'search_k':>9} {'annoy p50 ms':>13} {'p99 ms':>8} {'recall@10':>10} "
          f"{'exact p50 ms':>13} {'exact/annoy':>12}")
    met = []
    for n in args.sizes:
        x = synthetic(n, args.dim, args.data)
        rng = np.random.default_rng(1)
        q = x[rng.choice(n, size=args.queries, replace=False)] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        truth, e50 = exact_truth(x, q)
        for trees in args.trees:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                build_annoy(x, f"{tmp}/i.ann", trees, n_jobs=args.n_jobs)
                build = time.perf_counter() - t0
                index = AnnoyIndex(args.dim, "angular")
                index.load(f"{tmp}/i.ann")
                for sk in args.search_k:
                    p50, p99, recall = search(index, q, truth, sk)
                    print(f"{n:>9} {trees:>5} {build:>8.1f} {sk:>9} {p50 * 1e3:>13.3f} {p99 * 1e3:>8.3f} {recall:>10.3f} "
                          f"{e50 * 1e3:>13.3f} {e50 / p50:>11.1f}x", flush=True)
                    if recall >= args.goal[0] and p50 * 1e3 < args.goal[1] and build < args.goal[2]:
                        met.append((n, trees, sk, p50 * 1e3, recall, build))
                index.unload()
    print(f"goal: recall@10 >= {args.goal[0]}, p50 < {args.goal[1]} ms, build < {args.goal[2]} s")
    for n in args.sizes:
        ok = sorted((m for m in met if m[0] == n), key=lambda m: m[3])
        print(f"  n = {n}: " + ("; ".join(f"trees {t}, search_k {sk}: p50 {p:.3f} ms, recall {r:.3f}, build {b:.1f} s"
                                          for _, t, sk, p, r, b in ok[:3]) if ok else "no setting meets it"))


if __name__ == "__main__":
    main()
