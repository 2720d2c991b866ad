"""``peace rank``: order a zoo's models for a task nobody labelled (consensus among them; no labels read)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


def _rank(args: argparse.Namespace) -> int:
    import pandas as pd

    from peace.cli import _limits, _model_config
    from peace.core.atomic import atomic_path
    from peace.core.errors import PeaceError
    from peace.intake.sandbox import load_models_isolated
    from peace.orchestrate.selection import agreement_with_record, parent_tasks, rank, rank_models
    from peace.zoo.store import Zoo

    if args.csv and args.csv.exists():
        raise PeaceError(f"{args.csv} exists; name a new file for --csv (nothing of yours is overwritten)")
    if bool(args.files) == bool(args.zoo or args.models):
        raise PeaceError("rank model files (peace rank FILE ...) or a zoo's models (--zoo DIR --models SELECTION), "
                         "one of the two")
    parents: dict[str, int] = {}  # a zoo's fine-tunes of other tasks' models, by parent task
    if args.files:
        models = load_models_isolated(args.files, _model_config(args), _limits(args))  # each in a bounded child
        rows = pd.DataFrame({"model_id": [str(f) for f in args.files], "arch": [m.spec.describe() for m in models]})
        table, read = rank([m.spec for m in models], [m.params for m in models], rows, args.inputs, args.task,
                            args.probes)
    elif not (args.zoo and args.models):
        raise PeaceError("--zoo DIR and --models SELECTION go together")
    else:
        zoo = Zoo(args.zoo)
        table, read = rank_models(zoo, args.models, inputs=args.inputs, task=args.task, probes=args.probes)
        parents = parent_tasks(zoo, list(table["model_id"])) if not (args.inputs or args.task) else {}
    print(f"{len(table)} models ranked by {read}; best first:")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.head(args.top).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if parents:
        print(f"note: {sum(parents.values())} of these models were fine-tuned from models of "
              f"{', '.join(map(repr, parents))}; from the weights alone a fine-tune that still computes much of its "
              f"parent's function can rank high (docs/benchmarks.md, demo zoo: digits-flip, all fine-tunes of digits "
              f"models, ranks at tau -0.26; synth-2 and teacher-1, a ninth of them fine-tunes, at 0.83-0.86); --task "
              f"or --inputs ranks them on the task's data")
    tau = agreement_with_record(table)
    if tau is not None:
        print(f"test_acc is what the manifest records (not read by the ranking); Kendall tau between the two: {tau:.3f}")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            table.to_csv(tmp, index=False)
        print(f"all {len(table)} rows written to {args.csv}")
    return 0


def add_parser(sub, import_options) -> None:
    """Add ``rank`` to the ``peace`` command's subcommands (``import_options``: the model-file flags)."""
    r = sub.add_parser("rank", help="rank models for a task nobody labelled (a zoo's, or model files)",
                       description="Order models best first without any label: models that solve a task agree "
                       "with each other, models that do not err each their own way. Ranks model files (read "
                       "in an isolated child, as peace query does) or a zoo's models (--zoo and --models), of one "
                       "input -> class space, on your unlabelled inputs (--inputs), a PEACE task's (--task) or, "
                       "with neither, from the weights alone: the better models write inputs, each for a class "
                       "(model inversion), and each model scores its probability of those classes. Measured in "
                       "docs/benchmarks.md (model selection).")
    r.add_argument("files", nargs="*", type=Path, metavar="FILE", help="model files or directories (safetensors or "
                   "PyTorch state dicts, optionally beside a config.json), at least 3")
    r.add_argument("--zoo", type=Path, metavar="DIR", help="the zoo that holds the models")
    r.add_argument("--models", metavar="SELECTION", help="model ids, or a manifest query such as "
                   "\"task == 'synth-2' and arch == 'mlp 16-32-4 relu'\"")
    r.add_argument("--inputs", type=Path, metavar="FILE.npy", help="unlabelled inputs, an (n, features) float array "
                   "(numpy.save); the first 512 rows are read")
    r.add_argument("--task", metavar="NAME", help="use this PEACE task's unlabelled test inputs instead")
    r.add_argument("--probes", action="store_true", help="with neither: consensus on Gaussian probes instead of "
                   "the written inputs (weights only; about 1 s a task where writing takes 2-8 s on 2 cores, and "
                   "less often right: docs/benchmarks.md)")
    r.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    r.add_argument("--csv", type=Path, metavar="FILE", help="write the whole ranking as CSV")
    import_options(r)
    r.set_defaults(func=_rank)
