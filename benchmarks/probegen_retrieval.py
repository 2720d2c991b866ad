"""ProbeGen trained contrastively (``peace.learn.probegen``) beside PEACE and the function-space baseline,
on each run's own test split; PEACE's and the baseline's rows come from the run's ``peace evaluate``.

    python benchmarks/probegen_retrieval.py --zoo artifacts/zoos/demo \\
        --run artifacts/runs/demo artifacts/runs/demo-s1 artifacts/runs/demo-s2 \\
        --eval artifacts/evaluation/demo artifacts/evaluation/demo-s1 artifacts/evaluation/demo-s2

Mean ± std over the runs (ProbeGen's seed follows the run: 0, 1, 2, ...).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from peace.learn.probegen import ProbeGenEmbedding
from peace.nets.probes import io_space
from peace.orchestrate.evaluation import evaluate_method, split_models, summary_table
from peace.zoo.store import Zoo

COLUMNS = ("task mAP", "task P@10", "hard mAP", "held-out task mAP", "cross-arch mAP", "selection tau", "invariance ratio")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--run", nargs="+", required=True)
    ap.add_argument("--eval", nargs="+", required=True, help="each run's `peace evaluate` output, in the same order")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    zoo, rows = Zoo(args.zoo), {}
    for seed, (run, ev) in enumerate(zip(args.run, args.eval)):
        train, test = split_models(run, zoo)
        t0 = time.perf_counter()
        metrics = json.loads((Path(ev) / "metrics.json").read_text())
        spaces = sorted({io_space(s) for s in train.specs + test.specs})
        pg = ProbeGenEmbedding(steps=args.steps, seed=seed, spaces=spaces).fit(train)
        metrics["methods"]["probegen"] = evaluate_method(pg, train, test, seed)
        table = summary_table(metrics)
        print(f"{run}: ProbeGen fit and evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
        for m in ("peace", "peace-learned", "function", "probegen"):
            rows.setdefault(m, []).append([table.loc[m, c] for c in COLUMNS])
            print(f"  {m:14s} " + "  ".join(f"{c} {v:.3f}" for c, v in zip(COLUMNS, rows[m][-1])), flush=True)
    print(f"\n| method | {' | '.join(COLUMNS)} |\n|---|" + "---|" * len(COLUMNS))
    for m, vals in rows.items():
        v = np.array(vals, float)
        print(f"| {m} | " + " | ".join(f"{a:.3f} ± {b:.3f}" for a, b in zip(v.mean(0), v.std(0, ddof=1) if len(v) > 1
                                                                              else np.zeros(v.shape[1]))) + " |")


if __name__ == "__main__":
    main()
