"""The ``peace`` command line: ``peace zoo build``, ``peace zoo info`` (more subcommands per issue)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PeaceError


def _zoo_build(args: argparse.Namespace) -> int:
    from .recipe import load_recipe
    from .zoo import build_zoo

    recipe = load_recipe(args.preset, args.config)
    zoo = build_zoo(recipe, args.out, resume=args.resume, progress=not args.quiet)
    print(f"built {zoo!r}")
    print(zoo.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _zoo_info(args: argparse.Namespace) -> int:
    from .zoo import Zoo

    zoo = Zoo(args.dir)
    m = zoo.manifest
    print(f"zoo {zoo.name!r} at {zoo.path}: {len(m)} checkpoints of {m['run_id'].nunique()} runs, "
          f"{m['task'].nunique()} tasks, families {sorted(m['family'].unique())}, created {zoo.info['created']}")
    print(f"status: {m['status'].value_counts().to_dict()}; fine-tuned checkpoints: {int(m['parent_id'].notna().sum())}")
    print(zoo.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .trainer import fit, load_config

    overrides = list(args.set or []) + ([f"seed={args.seed}"] if args.seed is not None else [])
    cfg = load_config(args.config, overrides)
    res = fit(args.zoo, cfg, args.out, device=args.device, resume=args.resume, progress=not args.quiet)
    h = res.history
    print(h.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"best epoch {res.best_epoch}: validation same-task mAP {res.best_val_map:.4f}"
          f"{' (stopped early)' if res.stopped_early else ''}; encoder written to {res.path / 'encoder.safetensors'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .recipe import preset_names

    p = argparse.ArgumentParser(prog="peace", description="PEACE: permutation-equivariant contrastive embeddings "
                                "of neural-network weights. Build model zoos, embed them, explore them.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
    b.set_defaults(func=_zoo_build)
    i = zsub.add_parser("info", help="summarize a built zoo", description="Print counts and accuracy per task.")
    i.add_argument("dir", type=Path, help="zoo directory")
    i.set_defaults(func=_zoo_info)
    from .trainer import config_names

    t = sub.add_parser("train", help="train the PEACE encoder contrastively on a zoo",
                       description="Train the encoder on a zoo (splits by lineage, held-out tasks), writing "
                       "config.yaml, splits, checkpoints, history.parquet and the best encoder under --out.")
    t.add_argument("--zoo", type=Path, required=True, metavar="DIR", help="a built zoo")
    t.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory to write")
    t.add_argument("--config", metavar="NAME|FILE", default="default",
                   help=f"a built-in config ({', '.join(config_names())}) or a YAML file (default: default)")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config keys, e.g. train.epochs=5 "
                   "encoder.pooling=mean augment.distilled=false")
    t.add_argument("--seed", type=int, help="seed (overrides the config's)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PeaceError as e:
        print(f"peace: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peace: interrupted; finished parts are kept (rerun with --resume)", file=sys.stderr)
        return 130
