"""Zoo build and embedding with 1 vs 2 Ray workers, beside the plain single-process run, in one run.

    python benchmarks/bench_scale_out.py [--preset demo] [--run artifacts/ablations/functional/runs/full-s0/run]
                                         [--workers 1 2] [--skip-build] [--skip-embed]

For each engine: ``peace zoo build --preset PRESET`` into a temporary directory (every population
trained, shards and manifest written by the driver) and the embedding of the run's zoo (every
``ok`` model, shards of 1,024 per worker; no UMAP / index, which run on the driver alone). Ray's
start-up is timed apart. Printed: wall seconds, per-1,000-model cost, and speed-up over 1 worker.
The serial run uses torch's default threads (all cores); each Ray worker one thread per CPU it holds.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from peace.core.cluster import RayEngine, Serial
from peace.learn.run import load_encoder
from peace.serve.export import embed_models
from peace.zoo.recipe import expand, load_recipe
from peace.zoo.store import Zoo, build_zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--run", type=Path, default=Path("artifacts/ablations/functional/runs/full-s0/run"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()
    recipe = load_recipe(args.preset)
    n_runs = len(expand(recipe))
    zoo = None if args.skip_embed else Zoo(load_encoder(args.run).meta["zoo"])
    ids = [] if zoo is None else list(zoo.manifest.index[zoo.manifest["status"] == "ok"])
    results: dict[str, dict[str, float]] = {}

    def measure(name: str, engine) -> None:
        r = results.setdefault(name, {})
        if not args.skip_build:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                build_zoo(recipe, Path(tmp) / "zoo", progress=False, engine=engine)
                r["build"] = time.perf_counter() - t0
        if zoo is not None:
            t0 = time.perf_counter()
            embed_models(args.run, zoo, ids, engine)
            r["embed"] = time.perf_counter() - t0
        print(name, {k: round(v, 1) for k, v in r.items()}, flush=True)

    measure("serial (1 process, all cores)", Serial())
    for w in args.workers:
        t0 = time.perf_counter()
        with RayEngine("local", num_cpus=w) as engine:
            results.setdefault(f"ray, {w} worker(s)", {})["ray start"] = time.perf_counter() - t0
            measure(f"ray, {w} worker(s)", engine)
    base = results.get(f"ray, {args.workers[0]} worker(s)", {})
    print(f"\nzoo build: preset {args.preset} ({n_runs} runs); embed: {len(ids)} models of {zoo.path if zoo else '-'}")
    print(f"{'engine':<32} {'ray start s':>11} {'build s':>8} {'s/1k runs':>10} {'embed s':>8} {'s/1k models':>12} "
          f"{'speed-up build':>15} {'speed-up embed':>15}")
    for name, r in results.items():
        sb = base.get("build", float("nan")) / r.get("build", float("nan"))
        se = base.get("embed", float("nan")) / r.get("embed", float("nan"))
        print(f"{name:<32} {r.get('ray start', 0):11.1f} {r.get('build', float('nan')):8.1f} "
              f"{1000 * r.get('build', float('nan')) / n_runs:10.1f} {r.get('embed', float('nan')):8.1f} "
              f"{1000 * r.get('embed', float('nan')) / max(1, len(ids)):12.1f} {sb:15.2f} {se:15.2f}")


if __name__ == "__main__":
    main()
