"""An embedding set of a million models: write, open, query and map it, timed on this machine.

    python benchmarks/bench_big_set.py [--n 1000000] [--dim 64] [--trees 50] [--queries 200] [--no-umap]

The set is synthetic (clustered unit vectors as in bench_index.py, manifest-like metadata of 12
tasks and 40 architectures): what is measured is the index's machinery, not an encoder. Steps:
the map sample (peace.serve.export.map_sample) and its 2-D / 3-D UMAP, ``write_embedding_set`` (parquet,
Annoy, checksums), opening the set (Arrow read straight into one matrix) beside the previous way
(pandas object column + np.stack) in the same run, single-query latency, and the map figure. Peak
memory is the process's maximum resident set.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_index import synthetic  # noqa: E402

from peace.serve.export import MAP_SAMPLE, cosine_neighbours, map_sample, umap_coordinates  # noqa: E402
from peace.serve.index import EmbeddingSet, read_embeddings, write_embedding_set  # noqa: E402
from peace.serve.plots import embedding_map  # noqa: E402


def table_of(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tasks = np.array([f"task-{i}" for i in range(12)])
    archs = np.array([f"mlp {w}-{w // 2}-10" for w in range(8, 48)])
    return pd.DataFrame({
        "model_id": [f"m{i:07d}-e{i % 20:03d}" for i in range(n)], "run_id": [f"m{i:07d}" for i in range(n)],
        "task": tasks[rng.choice(12, n, p=np.r_[np.full(11, 0.09), 0.01])], "arch": archs[rng.integers(40, size=n)],
        "family": "mlp", "activation": np.array(["relu", "tanh", "gelu"])[rng.integers(3, size=n)],
        "epoch": rng.integers(0, 20, n), "test_acc": rng.random(n).astype(np.float32),
        "train_acc": rng.random(n).astype(np.float32), "lr": 10 ** rng.uniform(-4, -2, n),
        "split": np.array(["train", "val", "test"])[rng.integers(3, size=n)], "heldout_task": False})


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--trees", type=int, default=50)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-umap", action="store_true", help="leave the maps out (the slowest step)")
    args = ap.parse_args()
    rows: list[tuple[str, float, str]] = []

    def step(name: str, t0: float, note: str = "") -> None:
        rows.append((name, time.perf_counter() - t0, note))
        print(f"{name:<44} {rows[-1][1]:9.2f} s  {note}", flush=True)

    t0 = time.perf_counter()
    emb, table = synthetic(args.n, args.dim), table_of(args.n)
    step("make synthetic set", t0, f"{args.n:,} x {args.dim}")
    if not args.no_umap:
        t0 = time.perf_counter()
        on_map = map_sample(table["task"], MAP_SAMPLE)
        neighbours = cosine_neighbours(emb[on_map])  # as export_embeddings: one search for both maps
        for d in (2, 3):
            xy = np.full((args.n, d), np.nan, np.float32)
            xy[on_map] = umap_coordinates(emb[on_map], d, neighbours=neighbours)
            for j, axis in enumerate("xyz"[:d]):
                table[f"umap_{d}d_{axis}"] = xy[:, j]
        step("map sample + UMAP 2-D and 3-D", t0, f"{on_map.sum():,} models on the maps")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set"
        t0 = time.perf_counter()
        write_embedding_set(out, table, emb, args.trees, {})
        size = sum(f.stat().st_size for f in out.iterdir()) / 2**30
        step("write_embedding_set (parquet, Annoy, checksums)", t0, f"{size:.2f} GB on disk")
        del table
        t0 = time.perf_counter()
        old = pd.read_parquet(out / "embeddings.parquet")
        np.stack(old["embedding"].to_numpy()).astype(np.float32)
        before = time.perf_counter() - t0
        step("read table + matrix, previous way (pandas)", t0, "objects per row + np.stack")
        del old
        t0 = time.perf_counter()
        read_embeddings(out / "embeddings.parquet", args.dim)
        after = time.perf_counter() - t0
        step("read table + matrix (read_embeddings: Arrow)", t0, f"{before / after:.1f}x faster than before")
        t0 = time.perf_counter()
        es = EmbeddingSet(out)
        step("open EmbeddingSet (read, checksums, Annoy load)", t0)
        rng = np.random.default_rng(1)
        ids = es.table["model_id"].to_numpy()[rng.choice(len(es), args.queries, replace=False)]
        times = []
        for m in ids:
            t0 = time.perf_counter()
            es.neighbours(m, 10)
            times.append(time.perf_counter() - t0)
        rows.append(("neighbours(k=10) p50", float(np.median(times)), f"p99 {np.quantile(times, 0.99) * 1e3:.1f} ms"))
        print(f"{'neighbours(k=10), rows included':<44} {np.median(times) * 1e3:9.2f} ms p50, "
              f"{np.quantile(times, 0.99) * 1e3:.1f} ms p99")
        if not args.no_umap:
            t0 = time.perf_counter()
            fig = embedding_map(es.table, "task")
            step("map figure (2-D)", t0, fig.layout.title.text)
    print(f"peak memory (max RSS): {rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
