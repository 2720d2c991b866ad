"""``peace rank``: order a zoo's models for a task nobody labelled (consensus among them; no labels read)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def _rank(args: argparse.Namespace) -> int:
    import pandas as pd

    from peace.core.atomic import atomic_path
    from peace.core.errors import PeaceError
    from peace.orchestrate.selection import agreement_with_record, rank_models
    from peace.zoo.store import Zoo

    if args.csv and args.csv.exists():
        raise PeaceError(f"{args.csv} exists; name a new file for --csv (nothing of yours is overwritten)")
    zoo = Zoo(args.zoo)
    table, read = rank_models(zoo, args.models, inputs=args.inputs, task=args.task)
    print(f"{len(table)} models ranked by consensus on {read}; best first:")
    with pd.option_context("display.width", 200):
        print(table.head(args.top).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    tau = agreement_with_record(table)
    if tau is not None:
        print(f"test_acc is what the manifest records (not read by the ranking); Kendall tau between the two: {tau:.3f}")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=False)
        print(f"all {len(table)} rows written to {args.csv}")
    return 0


def add_parser(sub) -> None:
    """Add ``rank`` to the ``peace`` command's subcommands."""
    r = sub.add_parser("rank", help="rank a zoo's models for a task nobody labelled",
                       description="Order the selected models (one input -> class space) best first without any "
                       "label: models that solve a task agree with each other, models that do not err each their "
                       "own way. Reads your unlabelled inputs (--inputs), a PEACE task's (--task) or, with neither, "
                       "Gaussian probes (weights only). Measured in docs/benchmarks.md (model selection).")
    r.add_argument("--zoo", type=Path, required=True, metavar="DIR", help="the zoo that holds the models")
    r.add_argument("--models", required=True, metavar="SELECTION", help="model ids, or a manifest query such as "
                   "\"task == 'synth-2' and arch == 'mlp 16-32-4 relu'\"")
    r.add_argument("--inputs", type=Path, metavar="FILE.npy", help="unlabelled inputs, an (n, features) float array "
                   "(numpy.save); the first 512 rows are read")
    r.add_argument("--task", metavar="NAME", help="use this PEACE task's unlabelled test inputs instead")
    r.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    r.add_argument("--csv", type=Path, metavar="FILE", help="write the whole ranking as CSV")
    r.set_defaults(func=_rank)
