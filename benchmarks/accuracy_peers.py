"""Accuracy prediction on one architecture, the published peers side by side: NFN (HNP, NP), ProbeGen
(learned probes from a deep linear generator, and freely learned probes), ridge probes on PEACE, s(W),
raw weights and the function space, s(W) with gradient boosting, PEACE's metric head and PEACE
fine-tuned end to end; R2 and Kendall tau on the test models of the largest MLP architecture.

    python benchmarks/accuracy_peers.py --zoo artifacts/zoos/demo --run artifacts/runs/demo --seeds 0 1 2

Each (run, seed): the run's own split; the seed draws the predictors' initialization and batches.
Mean ± std over every (run, seed).
"""
from __future__ import annotations

import argparse

import numpy as np

from peace.evaluate.baselines import FunctionSpace, RawWeights, WeightStats
from peace.evaluate.prediction import accuracy_study
from peace.nets.probes import io_space
from peace.orchestrate.evaluation import EncoderMethod, split_models
from peace.zoo.store import Zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--run", nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    scores: dict[str, dict[str, list[float]]] = {}
    for run in args.run:
        train, val, test = split_models(run, zoo, ("train", "val", "test"))
        peace = EncoderMethod(run, "peace")
        spaces = sorted({io_space(s) for s in train.specs + test.specs + val.specs})
        methods = [m.fit(train) for m in (peace, RawWeights(), WeightStats(), FunctionSpace(spaces=spaces))]
        aux = peace.encoder.config.aux_targets
        head = {} if "test_acc" not in aux else {
            "peace aux head": lambda m: peace.encoder.predict(m.specs, m.params)[:, aux.index("test_acc")].numpy()}
        for seed in args.seeds:
            out = accuracy_study(train, val, test, methods, seed=seed, extra=head, encoder=peace.encoder)
            print(f"{run} seed {seed}: {out['arch']}, {out['n_train']} / {out['n_val']} / {out['n_test']} models", flush=True)
            for name, s in out["methods"].items():
                print(f"  {name:28s} R2 {s['r2']:7.3f}  tau {s['kendall_tau']:6.3f}", flush=True)
                for k in ("r2", "kendall_tau"):
                    scores.setdefault(name, {}).setdefault(k, []).append(s[k])
    n = len(next(iter(scores.values()))["r2"])
    print(f"\n| predictor | R2 | Kendall tau |  (mean ± std over {n} run-seed pairs)\n|---|---|---|")
    for name, s in sorted(scores.items(), key=lambda kv: -np.mean(kv[1]["kendall_tau"])):
        print(f"| {name} | {np.mean(s['r2']):.3f} ± {np.std(s['r2']):.3f} | "
              f"{np.mean(s['kendall_tau']):.3f} ± {np.std(s['kendall_tau']):.3f} |")


if __name__ == "__main__":
    main()
