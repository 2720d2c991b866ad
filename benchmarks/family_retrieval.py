"""Same-task retrieval (mAP) per query architecture family, for trained runs on one zoo.

    python benchmarks/family_retrieval.py --zoo artifacts/zoos/residual --run artifacts/runs/residual-lineage-s{0,1,2}
    python benchmarks/family_retrieval.py --zoo artifacts/zoos/vision --run artifacts/runs/vision-s{0,1,2} --final
    python benchmarks/family_retrieval.py --zoo artifacts/zoos/vision --run artifacts/runs/vision-s{0,1,2} \
        --variant artifacts/runs/vision-lp-s{0,1,2}     # PEACE with learned probes beside, on the same splits

Each run's test split; every test model of a family queries all other test models (and, for
"X -> other families", only models of other families); PEACE beside raw weights, s(W), the
function-space baseline, contrastive ProbeGen (learned probes) and the function space read on its
learned probes instead of Gaussian ones, PEACE's learned part alone and random vectors (the chance
level of this split). ``--variant`` adds PEACE runs of another config, one per ``--run`` and on the
same split (e.g. ``encoder.probe_source=learned``). Mean ± std over runs.
"""
from __future__ import annotations

import argparse

import numpy as np

from peace.evaluate.baselines import FunctionSpace, RawWeights, WeightStats
from peace.evaluate.metrics import retrieval_scores
from peace.learn.probegen import ProbeGenEmbedding
from peace.learn.run import RunDir, load_encoder
from peace.nets.probes import io_space
from peace.orchestrate.evaluation import split_models
from peace.zoo.store import Zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--run", nargs="+", required=True)
    ap.add_argument("--final", action="store_true", help="only the runs' final checkpoints, as queries and as "
                    "candidates (the models a user picks from; early checkpoints are near chance on every task)")
    ap.add_argument("--variant", nargs="*", default=[], help="PEACE runs of another config, one per --run, "
                    "trained on the same split (compared side by side)")
    ap.add_argument("--probegen-steps", type=int, default=100, help="ProbeGen's contrastive training steps")
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    if args.variant and len(args.variant) != len(args.run):
        ap.error(f"--variant needs one run per --run ({len(args.run)}), got {len(args.variant)}")
    scores: dict[tuple[str, str], list[float]] = {}
    for i, run in enumerate(args.run):
        train, test = split_models(run, zoo)
        encoder = load_encoder(run)
        peace = encoder.embed(test.specs, test.params).numpy()
        spaces = sorted({io_space(s) for s in train.specs + test.specs})
        probegen = ProbeGenEmbedding(steps=args.probegen_steps, seed=i, spaces=spaces).fit(train)
        features = {"PEACE": peace, "PEACE, learned part": peace[:, :encoder.config.embedding_dim],
                    "ProbeGen (contrastive)": probegen.transform(test),
                    "function space on ProbeGen's learned probes": probegen.fingerprints(test),
                    "raw weights": RawWeights().fit(train).transform(test),
                    "s(W)": WeightStats().fit(train).transform(test),
                    "function space": FunctionSpace(spaces=spaces).fit(train).transform(test),
                    "random": np.random.default_rng(i).normal(size=(len(test.specs), 64))}
        if args.variant:
            variant = load_encoder(args.variant[i])
            if not RunDir(args.variant[i]).splits().equals(RunDir(run).splits()):
                ap.error(f"{args.variant[i]} was not trained on the split of {run}")
            tag = f"{variant.config.probe_source} probes"
            features = {f"PEACE, {tag}": variant.embed(test.specs, test.params).numpy(), **features}
        keep = (test.rows["epoch"] == test.rows["epochs"]).to_numpy() if args.final else np.ones(len(test.rows), bool)
        family, task = test.rows["family"].to_numpy()[keep], test.rows["task"].to_numpy()[keep]
        for name, X in features.items():
            X = X[keep]
            for f in sorted(set(family)):
                scores.setdefault((name, f), []).append(retrieval_scores(X, task, query_mask=family == f)["map"])
                scores.setdefault((name, f"{f} -> other families"), []).append(retrieval_scores(
                    X, task, query_mask=family == f, other_than=np.where(family == f, 0, 1))["map"])
    columns = sorted({c for _, c in scores})
    print(f"task mAP by query family{', final checkpoints' if args.final else ''}, mean ± std over {len(args.run)} runs")
    print(f"| method | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for name in dict.fromkeys(n for n, _ in scores):
        cells = [f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}" for v in
                 (scores[(name, c)] for c in columns)]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
