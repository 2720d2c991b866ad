"""Do probes written by the training models tell tasks apart better than Gaussian ones? The function space alone.

For each run: its training split's models write a probe bank (``peace.learn.inversion.inverted_probes``, what
``encoder.probe_source=inverted`` holds), and the test split's models are compared by their answers on it and on
the Gaussian probes (``FunctionSpace``), per io-space: same-task mAP among the test models of that space. Nothing
is trained, so this reads the probes alone, before any encoder; docs/benchmarks.md, "Probes written by the
training models", has the trained encoders beside it.

    python benchmarks/written_probes.py artifacts/runs/demo artifacts/runs/def-s1 artifacts/runs/def-s2
"""
from __future__ import annotations

import argparse

import pandas as pd

from peace.evaluate.baselines import FunctionSpace
from peace.evaluate.metrics import retrieval_scores
from peace.learn.inversion import inverted_probes
from peace.learn.run import load_encoder
from peace.nets.probes import N_PROBES, io_space
from peace.orchestrate.evaluation import split_models
from peace.zoo.store import Zoo


def compare(run: str, n_probes: int = N_PROBES) -> list[dict]:
    """Same-task mAP of the run's test models per io-space, on Gaussian probes and on the written bank."""
    zoo = Zoo(load_encoder(run).meta["zoo"])
    train, test = split_models(run, zoo)
    bank = inverted_probes(train.specs, train.params, list(train.rows["task"]), n_probes)
    spaces = sorted({io_space(s) for s in train.specs + test.specs})
    rows = []
    for name, fs in (("gaussian", FunctionSpace(n_probes, spaces=spaces)),
                     ("written", FunctionSpace(n_probes, spaces=spaces, inputs=bank))):
        x, labels = fs.fit(train).transform(test), test.rows["task"].to_numpy()
        test_spaces = pd.Series([io_space(s) for s in test.specs])
        for space, idx in test_spaces.groupby(test_spaces).indices.items():
            tasks = len(set(labels[idx]))
            if tasks > 1:  # one task: nothing to tell apart
                rows.append({"run": run, "space": space, "probes": name, "tasks": tasks, "models": len(idx),
                             "map": retrieval_scores(x[idx], labels[idx])["map"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="trained runs (their splits say which models write and which are compared)")
    ap.add_argument("--probes", type=int, default=N_PROBES, help="probe inputs per io-space")
    args = ap.parse_args()
    df = pd.DataFrame([r for run in args.runs for r in compare(run, args.probes)])
    table = df.pivot_table(index=["space", "run"], columns="probes", values="map", sort=False)
    table["gain"] = table["written"] - table["gaussian"]
    pd.set_option("display.width", 200)
    print(table.round(3).to_string())
    print(df.groupby(["space", "probes"])["map"].agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
