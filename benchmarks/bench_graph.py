"""Neural-graph construction throughput on a zoo: plain arrays vs DGL graphs, side by side.

    python benchmarks/bench_graph.py artifacts/zoos/demo [--limit 2000] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from peace.nets.graph import batch_dgl, batch_graphs, neural_graph
from peace.zoo.store import Zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo")
    ap.add_argument("--limit", type=int, default=2000, help="models to convert (a deterministic sample)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = Zoo(args.zoo)
    m = zoo.manifest[zoo.manifest["status"] == "ok"]
    ids = list(m.sample(min(args.limit, len(m)), random_state=0)["model_id"])
    t0 = time.perf_counter()
    weights = zoo.load_many(ids)
    t_load = time.perf_counter() - t0
    specs = [zoo.spec(i) for i in ids]
    t0 = time.perf_counter()
    graphs = [neural_graph(s, w) for s, w in zip(specs, weights)]
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch_graphs(graphs)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch_dgl(graphs)
    t_dgl = time.perf_counter() - t0
    n = len(ids)
    nodes, edges = sum(g.num_nodes for g in graphs), sum(g.num_edges for g in graphs)
    print(f"{zoo.name}: {n} models, {nodes / n:.0f} nodes and {edges / n:.0f} edges per graph on average")
    print(f"load weights (checksummed) : {n / t_load:9.0f} models/s")
    print(f"build graph arrays         : {n / t_graph:9.0f} graphs/s")
    print(f"batch arrays (pure torch)  : {n / t_batch:9.0f} graphs/s")
    print(f"convert + batch with DGL   : {n / t_dgl:9.0f} graphs/s  (arrays are {t_dgl / t_batch:.1f}x faster to batch)")


if __name__ == "__main__":
    main()
