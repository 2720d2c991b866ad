"""The ``peace`` command line: train, embed, query, evaluate, pipeline, ablate; zoo build / info / add live in
``peace.cli.zoo``, decoder and sample in ``peace.cli.generate``, rank in ``peace.cli.rank``."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings
from pathlib import Path

from peace.cli import generate, rank, zoo
from peace.core.errors import PeaceError

__all__ = ["build_parser", "main", "run"]


def _engine(args: argparse.Namespace):
    """The engine --ray asks for (Serial without it: Ray is then not imported)."""
    from peace.core.cluster import open_engine

    return open_engine(args.ray, args.ray_cpus, quiet=getattr(args, "quiet", True))


def _add_ray_option(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("scaling out (see README, Scaling out)")
    g.add_argument("--ray", choices=("local", "auto"), help=f"spread {what} over Ray workers: local (start Ray with "
                   "this machine's cores) or auto (join the running cluster: RAY_ADDRESS or `ray start`)")
    g.add_argument("--ray-cpus", type=int, metavar="N", help="with --ray local: CPUs Ray may use (default: all)")


def _train(args: argparse.Namespace) -> int:
    from peace.learn.distributed import current, init_from_environment, launch
    from peace.learn.run import RunDir
    from peace.learn.runconfig import config_for_zoo, load_config
    from peace.learn.trainer import fit

    overrides = list(args.set or []) + ([f"seed={args.seed}"] if args.seed is not None else [])
    config, preset_set, why = (args.config, [], "") if args.config else config_for_zoo(args.zoo)
    cfg = load_config(config, preset_set + overrides)
    init_from_environment(args.device)  # under torchrun: join its process group
    if why and not args.quiet and current().main:
        print(f"[peace] encoder config {config}{' ' + ' '.join(preset_set) if preset_set else ''}: {why} (--config "
              f"NAME trains another)", file=sys.stderr, flush=True)
    if args.nproc > 1:
        launch(fit, args.nproc, args.device, str(args.zoo), cfg, args.out, args.device, args.resume, not args.quiet)
        res = RunDir(args.out).result()
    else:
        res = fit(args.zoo, cfg, args.out, device=args.device, resume=args.resume, progress=not args.quiet)
    if not current().main:
        return 0
    h = res.history
    print(h.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"best epoch {res.best_epoch}: validation same-{res.relevance} mAP {res.best_val_map:.4f}"
          f"{' (stopped early)' if res.stopped_early else ''}; encoder written to {res.path / 'encoder.safetensors'}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from peace.serve.export import export_embeddings

    with _engine(args) as engine:
        es = export_embeddings(args.run, args.out, zoo=args.zoo, trees=args.trees, umap=not args.no_umap,
                               progress=not args.quiet, engine=engine, baselines=not args.no_baselines)
    print(f"embedded {len(es)} models ({es.dim}-d) into {es.path}: embeddings.parquet, index.ann, index.json")
    return 0


def _model_config(args: argparse.Namespace) -> dict:
    """A model config from --model-config FILE plus the single-key options that override it."""
    from peace.intake.importers import read_config

    cfg = read_config(args.model_config) if args.model_config else {}
    for key in ("activation", "pool", "padding"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if "," in cfg.get("pool", ""):  # one pooling per conv layer
        cfg["pools"] = cfg.pop("pool").split(",")
    if args.input_shape:
        cfg["input_shape"] = args.input_shape
    return cfg


def _limits(args: argparse.Namespace):
    """The import budget from --max-size."""
    from peace.intake.model import Limits

    return Limits(max_bytes=int(args.max_size * 2**20))


def _positive(text: str) -> float:
    """A positive, finite number (sizes and limits)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (0 < v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return v


def _shape(text: str) -> list[int]:
    """--input-shape: positive integers separated by commas."""
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        shape = []
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive integers separated by commas, e.g. 1,28,28")
    return shape


def _add_import_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading model files (what the weights cannot tell)")
    g.add_argument("--activation", help="relu, leaky_relu, tanh, sigmoid, gelu or identity")
    g.add_argument("--input-shape", metavar="C,H,W", type=_shape, help="a CNN's or ResNet's input shape, e.g. 1,28,28")
    g.add_argument("--pool", help="a CNN's pooling after each conv: avg, max or none, or one per conv (max,max,none)")
    g.add_argument("--padding", choices=("same", "valid"), help="a CNN's convolutions: same (k // 2, the default) or "
                   "valid (unpadded, torch's default)")
    g.add_argument("--model-config", type=Path, metavar="JSON", help="architecture config (keys as in config.json)")
    g.add_argument("--max-size", type=_positive, default=512, metavar="MIB", help="refuse larger model files (default 512)")


def _query(args: argparse.Namespace) -> int:
    import pandas as pd

    from peace.intake.sandbox import load_model_isolated
    from peace.serve.export import query_model, query_notes
    from peace.serve.index import EmbeddingSet

    es, notes = EmbeddingSet(args.embeddings), []
    if Path(args.model).exists():  # read like the explorer's uploads: in a child with bounded memory and time
        m = load_model_isolated(args.model, _model_config(args), _limits(args))
        print(f"{m.source}: {m.spec.describe()}, {m.spec.n_params} parameters")
        hits = query_model(es, m.spec, m.params, min(10, len(es)) if args.k is None else args.k, run_dir=args.run)
        notes = query_notes(es, m.spec, hits)
    elif args.model in es.row_of:
        hits = es.neighbours(args.model, min(10, len(es) - 1) if args.k is None else args.k)
    else:
        raise PeaceError(f"{args.model!r} is neither a model id of the embedding set {es.path} nor an existing file or "
                         f"directory")
    cols = [c for c in ["model_id", "cosine", "task", "arch", "epoch", "test_acc", "split"] if c in hits.columns]
    with pd.option_context("display.width", 200):
        print(hits[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for note in notes:
        print(f"note: {note}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from peace.evaluate.prediction import PredictorConfig
    from peace.evaluate.transfer import TransferConfig
    from peace.orchestrate.evaluation import (
        evaluate,
        evaluate_runs,
        summary_markdown,
        summary_table,
    )
    from peace.orchestrate.generation import GenerativeConfig

    transfer = TransferConfig(k=args.transfer_k, epochs=args.transfer_epochs) if args.transfer_epochs > 0 else None
    accuracy = PredictorConfig(epochs=args.accuracy_epochs) if args.accuracy_epochs > 0 else None
    generative = GenerativeConfig(seeds=args.generative_seeds) if args.generative_seeds > 0 else None
    kwargs = dict(zoo=args.zoo, mlp_run=args.mlp_run, seed=args.seed, progress=not args.quiet, transfer=transfer,
                  accuracy=accuracy, generative=generative, probegen=args.probegen_steps)
    with _engine(args) if transfer is not None else contextlib.nullcontext(None) as engine:
        if len(args.run) > 1:
            summary = evaluate_runs(args.run, args.out, engine=engine, **kwargs)
            print(summary_markdown(summary))
            print(f"wrote {args.out / 'summary.md'}, {args.out / 'summary.parquet'} and one folder per run")
            return 0
        metrics = evaluate(args.run[0], args.out, engine=engine, **kwargs)
    print(summary_table(metrics).to_string(float_format=lambda v: f"{v:.3f}"))
    if metrics.get("transfer", {}).get("tasks"):
        print("\ntransfer learning on held-out tasks:")
        print(pd.DataFrame(metrics["transfer"]["methods"]).T.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out / 'metrics.json'}, {args.out / 'report.md'} and {args.out / 'retrieval.html'}")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from peace.orchestrate.pipeline import run_pipeline

    outcome = run_pipeline(args.preset, args.config, args.set or [], args.device, args.seed, args.root, args.name,
                           force=args.force, steps=args.steps, transfer_epochs=args.transfer_epochs,
                           progress=not args.quiet)
    name, root = args.name or args.preset, args.root
    print(f"[peace] pipeline {name}: {outcome.count('ran')} step(s) ran, {outcome.count('current')} current. Outputs:\n"
          f"[peace]   zoo {root}/zoos/{args.preset}, encoder run {root}/runs/{name}, embeddings {root}/embeddings/{name},\n"
          f"[peace]   evaluation {root}/evaluation/{name}/report.md, executed notebooks {root}/notebooks/{name}/\n"
          f"[peace] explore them: streamlit run explorer/app.py (http://localhost:8501)")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from peace.orchestrate.ablation import (
        best_per_metric,
        compare,
        load_grid,
        run_ablation,
    )

    grid = load_grid(args.grid)
    if args.zoo:
        grid.zoo = str(args.zoo)
    if args.ray and args.workers != 1:
        raise PeaceError("--workers runs configurations side by side on this machine; with --ray the cluster's "
                         "CPUs decide how many run at once. Drop one of the two")
    with _engine(args) if args.ray else contextlib.nullcontext(None) as engine:
        summary = run_ablation(grid, args.out, workers=args.workers, progress=not args.quiet, seeds=args.seeds,
                               engine=engine)
    failed = summary[summary["status"] == "failed"]
    print(summary[["configuration", "seed", "status"]].to_string(index=False))
    headline = ["retrieval_task.map", "retrieval_task_heldout.map", "retrieval_lineage.map", "probes.test_acc.r2"]
    table = compare(summary, [m for m in headline if m in summary.columns])
    if len(table):
        print(best_per_metric(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {args.out / 'summary.parquet'}" + (f"; {len(failed)} run(s) failed (see error.txt in their "
                                                      f"directories)" if len(failed) else ""))
    return 1 if len(failed) == len(summary) else 0


def _parser_train(sub) -> None:
    """``peace train``: its options."""
    from peace.learn.runconfig import config_names

    t = sub.add_parser("train", help="train the PEACE encoder contrastively on a zoo",
                       description="Train the encoder on a zoo (splits by lineage, held-out tasks), writing "
                       "config.yaml, splits, checkpoints, history.parquet and the best encoder under --out.")
    t.add_argument("--zoo", type=Path, required=True, metavar="DIR", help="a built zoo")
    t.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory to write")
    t.add_argument("--config", metavar="NAME|FILE",
                   help=f"a built-in config ({', '.join(config_names())}) or a YAML file (default: the one the zoo's "
                   "recipe names, else default)")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config keys, e.g. train.epochs=5 "
                   "encoder.pooling=mean augment.distilled=false encoder.probe_source=learned (ProbeGen probes)")
    t.add_argument("--seed", type=int, help="seed (overrides the config's)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--nproc", type=int, default=1, metavar="N", help="data-parallel processes on this machine (torch "
                   "DDP: gloo on CPU, one GPU each with --device cuda; same global batch). On several machines use "
                   "`torchrun ... -m peace train` instead")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)


def _parser_embed(sub) -> None:
    """``peace embed``: its options."""
    e = sub.add_parser("embed", help="embed a zoo with a trained encoder and build its Annoy index",
                       description="Write embeddings.parquet (embedding, 2-D/3-D UMAP, metadata), index.ann and "
                       "index.json (provenance checksums) to --out.")
    e.add_argument("--run", type=Path, required=True, metavar="DIR", help="a training run (peace train --out)")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="embedding set directory to write")
    e.add_argument("--zoo", type=Path, metavar="DIR", help="zoo to embed (default: the run's own zoo)")
    e.add_argument("--trees", type=int, default=50, help="Annoy trees (more: better recall, bigger index)")
    e.add_argument("--no-umap", action="store_true", help="skip the UMAP coordinates")
    e.add_argument("--no-baselines", action="store_true", help="skip the vectors the explorer compares PEACE with "
                   "(raw weights, s(W), function space; about half of a large CNN zoo's embedding time): the explorer "
                   "then computes them once each time it starts")
    e.add_argument("--quiet", action="store_true")
    _add_ray_option(e, "the embedding (shards of 1,024 models, one encoder per worker)")
    e.set_defaults(func=_embed)


def _parser_query(sub) -> None:
    """``peace query``: its options."""
    q = sub.add_parser("query", help="nearest zoo models of a model", description="The k nearest models of a "
                       "model of the embedding set, by cosine similarity (Annoy).")
    q.add_argument("model", help="a model id of the embedded zoo, or a model file / directory (safetensors or "
                   "PyTorch state dict, optionally beside a config.json)")
    q.add_argument("--embeddings", type=Path, required=True, metavar="DIR", help="an embedding set (peace embed --out)")
    q.add_argument("-k", type=int, help="neighbours to show (default 10, or every other model of a smaller set)")
    q.add_argument("--run", type=Path, metavar="DIR", help="the encoder run (default: the one that made the set)")
    _add_import_options(q)
    q.set_defaults(func=_query)


def _parser_evaluate(sub) -> None:
    """``peace evaluate``: its options."""
    v = sub.add_parser("evaluate", help="compare PEACE with the baselines on held-out models",
                       description="Retrieval, clustering, linear probes, invariance and functional similarity on "
                       "the run's test split, for PEACE and every baseline; writes metrics.json, report.md, figures.")
    v.add_argument("--run", type=Path, required=True, nargs="+", metavar="DIR",
                   help="a training run; several (e.g. seeds) give mean ± std in OUT/summary.md")
    v.add_argument("--out", type=Path, required=True, metavar="DIR")
    v.add_argument("--zoo", type=Path, metavar="DIR", help="default: the run's zoo")
    v.add_argument("--mlp-run", type=Path, metavar="DIR", help="a run trained with encoder.kind=mlp, to compare too")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--transfer-epochs", type=int, default=20, metavar="N",
                   help="fine-tuning budget of the transfer-learning study, also read at 5 epochs (0 skips it)")
    v.add_argument("--transfer-k", type=int, default=5, metavar="K", help="models each method retrieves to fine-tune")
    v.add_argument("--accuracy-epochs", type=int, default=100, metavar="N",
                   help="budget of the NFN accuracy predictors trained on the largest MLP architecture, beside "
                   "PEACE fine-tuned the same way (0 skips the study)")
    v.add_argument("--probegen-steps", type=int, default=100, metavar="N",
                   help="training steps of ProbeGen (learned probes) trained contrastively, a retrieval method "
                   "compared with the others (0 leaves it out)")
    v.add_argument("--generative-seeds", type=int, default=0, metavar="N",
                   help="add the generative study (models sampled with the run's decoder, see `peace decoder`, "
                   "fine-tuned beside random inits, the prompt and retrieval) over N seeds; default 0 skips it")
    v.add_argument("--quiet", action="store_true")
    _add_ray_option(v, "the transfer study's fine-tuning")
    v.set_defaults(func=_evaluate)


def _parser_pipeline(sub) -> None:
    """``peace pipeline``: its options."""
    from peace.zoo.recipe import preset_names

    pl = sub.add_parser("pipeline", help="build, train, export and evaluate with the notebooks (papermill)",
                        description="Run notebooks 01-04 in order with papermill, skipping steps whose outputs exist "
                        "and are current; executed notebooks go to ROOT/notebooks/NAME/.")
    pl.add_argument("--preset", default="demo", help=f"zoo recipe ({', '.join(preset_names())}; default demo)")
    pl.add_argument("--config", metavar="NAME|FILE", help="encoder config (default: the one the preset names, "
                    "see the README's preset table)")
    pl.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="encoder config overrides")
    pl.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--root", type=Path, default=Path("artifacts"), help="artifacts directory (default artifacts)")
    pl.add_argument("--name", help="name of the run, embeddings and evaluation (default: the preset)")
    pl.add_argument("--steps", nargs="+", metavar="STEP", help="only these steps ('build zoo', 'train encoder', ...)")
    pl.add_argument("--transfer-epochs", type=int, default=20, help="transfer study budget in epochs, also read at 5 (0 skips it)")
    pl.add_argument("--force", action="store_true", help="rerun every step even when current")
    pl.add_argument("--quiet", action="store_true", help="no plan and no live progress from the notebooks (CI logs)")
    pl.set_defaults(func=_pipeline)


def _parser_ablate(sub) -> None:
    """``peace ablate``: its options."""
    from peace.orchestrate.ablation import grid_names

    ab = sub.add_parser("ablate", help="train and evaluate every configuration of an ablation grid",
                        description="Run notebooks 02 and 04 per (configuration, seed) of a YAML grid; resumable; "
                        "writes OUT/summary.parquet. Built-in grids: " + ", ".join(grid_names()))
    ab.add_argument("--grid", required=True, metavar="NAME|FILE")
    ab.add_argument("--out", type=Path, required=True, metavar="DIR")
    ab.add_argument("--zoo", type=Path, metavar="DIR", help="override the grid's zoo")
    ab.add_argument("--workers", type=int, default=1, help="configurations run at once (default 1)")
    ab.add_argument("--seeds", type=int, nargs="+", metavar="S",
                    help="run only these of the grid's seeds (a quick first pass; later passes add to the summary)")
    ab.add_argument("--quiet", action="store_true")
    _add_ray_option(ab, "the (configuration, seed) runs, one task each (one GPU each when the grid's device is cuda)")
    ab.set_defaults(func=_ablate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peace", description="PEACE: permutation-equivariant contrastive embeddings "
                                "of neural-network weights. Build model zoos, embed them, explore them.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    zoo.add_parser(sub, _add_import_options, _add_ray_option)
    _parser_train(sub)
    _parser_embed(sub)
    _parser_query(sub)
    _parser_evaluate(sub)
    _parser_pipeline(sub)
    _parser_ablate(sub)
    generate.add_parsers(sub)
    rank.add_parser(sub, _add_import_options)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """PEACE's own warnings as one line a user reads (``peace: note: ...``); other libraries' as Python prints them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        print(f"peace: note: {message}", file=sys.stderr if file is None else file)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        for name in ("out", "root"):  # every command's output directory
            value = getattr(args, name, None)
            if value is not None and Path(value).exists() and not Path(value).is_dir():
                raise PeaceError(f"--{name} {value} is a file; name a directory (new, or one this command wrote)")
        return args.func(args)
    except PeaceError as e:
        print(f"peace: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peace: interrupted; finished parts are kept (rerun with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`peace zoo info Z | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        return 141
    except OSError as e:  # the machine said no (full disk, read-only directory): what and how to go on, not a trace
        print(f"peace: error: {os_error(e)}", file=sys.stderr)
        return 2


FIXES = {errno.ENOSPC: "the disk is full; free some space and run the command again",
         errno.EDQUOT: "the disk quota is used up; free some space and run the command again",
         errno.EROFS: "that file system is read-only; name an output directory you can write to",
         errno.EACCES: "permission denied; name an output directory you can write to, or fix its permissions",
         errno.EPERM: "permission denied; name an output directory you can write to, or fix its permissions",
         errno.ELOOP: "a symbolic link loops or is not allowed there; remove it"}


def os_error(e: OSError) -> str:
    """An operating-system error as one line: what failed, on which file, and what to do."""
    where = " ".join(f"'{f}'" for f in (e.filename, e.filename2) if f)
    what = e.strerror or str(e)
    fix = FIXES.get(e.errno, "check the path and run the command again")
    return f"{what}{f' ({where})' if where else ''}: {fix}"


def run() -> None:
    """The console entry point: ``main``, then leave without interpreter teardown. pyarrow's parquet
    threads can abort a process while it exits (SIGABRT, "terminate called without an active
    exception": apache/arrow#34314), turning a finished command's exit code into -6."""
    code = main()
    with contextlib.suppress(BrokenPipeError):  # output the reader left before
        sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

