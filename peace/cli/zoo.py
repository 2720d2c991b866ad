"""``peace zoo build | info | add``: train a zoo from a recipe, summarize one, add models made elsewhere to one
(model files, or the published zoos: Ray Tune trials, `peace.intake.tune`; weight matrices, `peace.intake.matrix_zoo`)."""
from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from pathlib import Path

from peace.core.errors import PeaceError

__all__ = ["add_parser"]


def _zoo_build(args: argparse.Namespace) -> int:
    from peace.cli import _engine
    from peace.zoo.recipe import load_recipe
    from peace.zoo.store import build_zoo

    recipe = load_recipe(args.preset, args.config)
    with _engine(args) as engine:
        zoo = build_zoo(recipe, args.out, resume=args.resume, progress=not args.quiet, engine=engine)
    print(f"built {zoo!r}")
    print(zoo.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _zoo_info(args: argparse.Namespace) -> int:
    from peace.zoo.store import Zoo

    zoo = Zoo(args.dir)
    m = zoo.manifest
    print(f"zoo {zoo.name!r} at {zoo.path}: {len(m)} checkpoints of {m['run_id'].nunique()} runs, "
          f"{m['task'].nunique()} tasks, families {sorted(m['family'].unique())}, created {zoo.info['created']}")
    print(f"status: {m['status'].value_counts().to_dict()}; fine-tuned checkpoints: {int(m['parent_id'].notna().sum())}")
    print(zoo.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    problems = zoo.verify(weights=args.verify, progress=args.verify)
    if problems:
        raise PeaceError(f"{len(problems)} shard problem(s): " + "; ".join(problems[:5]) +
                         f". Delete the broken shards and run `peace zoo build ... --out {zoo.path} --resume`")
    print("shards: all present and readable; " + ("every model's weights match their checksums" if args.verify else
                                                 "weights not checksummed (add --verify to read and check them all)"))
    return 0


def _zoo_add(args: argparse.Namespace) -> int:
    from peace.cli import _limits, _model_config
    from peace.intake.sandbox import load_models_isolated
    from peace.intake.matrix_zoo import is_matrix_zoo, matrix_zoos_in
    from peace.intake.tune import is_tune_zoo
    from peace.zoo.imported import add_models

    given, args.models = args.models, []
    for p in given:  # the Small CNN Zoo unpacks to a directory per dataset: its parent means all of them
        inside = [] if is_tune_zoo(p) or is_matrix_zoo(p) else matrix_zoos_in(p)
        if inside:
            print(f"note: {p} holds the weight-matrix zoos {', '.join(z.name for z in inside)}: adding each")
        args.models += inside or [p]
    if any(is_tune_zoo(p) or is_matrix_zoo(p) for p in args.models):
        models, lineages = _published_models(args)
    elif args.last_only or args.runs:
        raise PeaceError("--last-only and --runs choose among a published zoo's checkpoints; the models given are "
                         "model files (add the ones you want)")
    else:
        models, lineages = load_models_isolated(args.models, _model_config(args), _limits(args)), None  # bounded children
    zoo = add_models(args.dir, models, task=args.task, group=args.group, new=args.new, lineages=lineages)
    added = zoo.manifest.iloc[-len(models):]
    cols = [c for c in ["model_id", "task", "arch", "n_params", "test_acc"] if c in added.columns]
    print(added[cols].head(20).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(added) > 20:  # a published zoo adds tens of thousands of checkpoints: `peace zoo info` summarizes them
        print(f"... and {len(added) - 20} more")
    if args.new:
        print(f"made a zoo of {len(models)} model(s) at {zoo!r}; index them with `peace embed --zoo "
              f"{shlex.quote(str(args.dir))} --run RUN --out artifacts/embeddings/NAME`")
    else:
        print(f"added {len(models)} model(s) to {zoo!r}; re-run `peace embed` to index them")
    return 0


def _published_models(args: argparse.Namespace) -> tuple[list, list[tuple[str, int]]]:
    """The checkpoints of published zoos, each run a lineage, with what their files record (model card, results):
    Ray Tune trial directories (``peace.intake.tune``) and weight matrices (``peace.intake.matrix_zoo``)."""
    from peace.intake.matrix_zoo import is_matrix_zoo
    from peace.intake.tune import is_tune_zoo

    mixed = [str(p) for p in args.models if not is_tune_zoo(p) and not is_matrix_zoo(p)]
    if mixed:
        raise PeaceError(f"{mixed[0]} is not a published zoo (a directory of trials: params.json beside "
                         f"checkpoint_NNNNNN/checkpoints; or weights.npy beside layout.csv) like the other directories "
                         f"given; add model files and published zoos in separate commands")
    models, lineages = [], []
    for root in args.models:
        m, lin = _matrix_models(root, args) if is_matrix_zoo(root) else _tune_models(root, args)
        models += m
        lineages += lin
    print(f"read {len(models)} checkpoints of {len({name for name, _ in lineages})} runs")
    return models, lineages


def _foreign_task(label: str, root: Path, args: argparse.Namespace) -> str:
    """The task recorded for a published zoo's models: ``label`` (their dataset or the zoo's directory), with
    ``-zoo`` added where it names a PEACE task, whose data are not the ones they were trained on."""
    from peace.zoo.tasks import is_task

    if is_task(label) and not args.task:
        print(f"note: the task of {root}'s models is recorded as {label + '-zoo'!r}: PEACE's own {label!r} task "
              f"has other data (name a PEACE task with --task only to measure the models on it)")
        return label + "-zoo"
    return label


def _matrix_models(root: Path, args: argparse.Namespace) -> tuple[list, list[tuple[str, int]]]:
    """A weight-matrix zoo's checkpoints (the Small CNN Zoo), with its dataset as their task."""
    from dataclasses import replace

    from peace.cli import _limits, _model_config
    from peace.intake.matrix_zoo import read_matrix_zoo

    read = read_matrix_zoo(root, _model_config(args), _limits(args), last_only=args.last_only, runs=args.runs)
    for note in read.notes:
        print(f"note: {root}: {note}")
    tasks = {t: _foreign_task(t, root, args) for t in {m.metadata["task"] for m in read.models}}
    return [replace(m, metadata={**m.metadata, "task": tasks[m.metadata["task"]]}) for m in read.models], read.lineages


def _tune_models(root: Path, args: argparse.Namespace) -> tuple[list, list[tuple[str, int]]]:
    """A zoo of Ray Tune trials' checkpoints, read like model files, with each trial's activation, model card and
    recorded results."""
    from dataclasses import replace

    from peace.cli import _limits, _model_config
    from peace.core.paths import SAFE_NAME
    from peace.intake.sandbox import load_models_isolated
    from peace.intake.tune import tune_checkpoints

    label = _foreign_task(root.resolve().name if SAFE_NAME.fullmatch(root.resolve().name) else "imported", root, args)
    checkpoints = tune_checkpoints(root)
    trials = set(list(dict.fromkeys(c.trial for c in checkpoints))[:args.runs])
    last = {c.trial: c.epoch for c in checkpoints}  # epochs come in order
    checkpoints = [replace(c, metadata={"task": label, **c.metadata}) for c in checkpoints
                   if c.trial in trials and (not args.last_only or c.epoch == last[c.trial])]
    configs: dict[str, list[int]] = {}  # one reading per importer config (a trial's activation, ...)
    given = _model_config(args)  # the command's options override what the trials say
    for i, c in enumerate(checkpoints):
        configs.setdefault(json.dumps({**c.config, **given}, sort_keys=True), []).append(i)
    read: dict[int, object] = {}
    for config, idx in configs.items():
        for i, m in zip(idx, load_models_isolated([checkpoints[i].path for i in idx], json.loads(config), _limits(args))):
            read[i] = replace(m, metadata={**m.metadata, **checkpoints[i].metadata})
    return [read[i] for i in range(len(checkpoints))], [(f"{label}/{c.trial}", c.epoch) for c in checkpoints]


def _count(text: str) -> int:
    """--runs: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(text)


def add_parser(sub, import_options: Callable, ray_option: Callable) -> None:
    """``peace zoo build | info | add``: their options (``import_options`` / ``ray_option``: the options shared
    with other commands)."""
    from peace.zoo.recipe import preset_names

    zoo = sub.add_parser("zoo", help="build and inspect model zoos", description="Build and inspect model zoos.")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    b = zsub.add_parser("build", help="train a zoo from a preset or a YAML recipe",
                        description="Train a population-batched model zoo. Presets: " + ", ".join(preset_names())
                        + ". Writes manifest.parquet, safetensors shards and zoo.json under --out.")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help=f"a built-in recipe ({', '.join(preset_names())})")
    src.add_argument("--config", metavar="FILE", type=Path, help="your own YAML recipe (see peace/presets/*.yaml)")
    b.add_argument("--out", metavar="DIR", type=Path, required=True, help="zoo directory to write")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build in --out")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    ray_option(b, "the populations")
    b.set_defaults(func=_zoo_build)
    i = zsub.add_parser("info", help="summarize a built zoo", description="Print counts and accuracy per task.")
    i.add_argument("dir", type=Path, help="zoo directory")
    i.add_argument("--verify", action="store_true", help="read every model's weights and check their checksums")
    i.set_defaults(func=_zoo_info)
    a = zsub.add_parser("add", help="append model files to a built zoo (or make a zoo of them: --new)",
                        description="Read model files or directories (safetensors / PyTorch state dicts, config.json) "
                        "and append them to the zoo's manifest and shards; with --task, measure them on that task. "
                        "With --new, DIR is a new directory that becomes a zoo of these models alone, which "
                        "`peace embed`, `peace query`, `peace rank` and the explorer read like any zoo. A directory "
                        "of Ray Tune trials (params.json, result.json, checkpoint_N/checkpoints: the layout of the "
                        "published model zoos) adds every checkpoint, each trial a lineage, with its recorded "
                        "accuracy and hyperparameters; so does a directory holding weights.npy, layout.csv and "
                        "metrics.csv.gz (the Small CNN Zoo of Unterthiner et al.: NFN's and ProbeGen's CIFAR10-GS).")
    a.add_argument("dir", type=Path, help="zoo directory (with --new: a new one)")
    a.add_argument("--new", action="store_true", help="make DIR (absent or empty) a zoo of these models alone")
    a.add_argument("models", nargs="+", type=Path, help="model files or directories, or zoos of Ray Tune trials")
    a.add_argument("--task", help="the PEACE task the models solve (their accuracy is then measured)")
    a.add_argument("--group", default="imported", help="group label in the manifest (default: imported)")
    a.add_argument("--last-only", action="store_true",
                   help="of a published zoo, only each run's last checkpoint (what NFN and ProbeGen train on)")
    a.add_argument("--runs", type=_count, metavar="N", help="of a published zoo, only its first N runs")
    import_options(a)
    a.set_defaults(func=_zoo_add)
