"""Zoo recipes: a YAML description of which models to train, expanded into runs and populations.

A recipe has ``groups`` (grids of tasks x architectures x hyperparameters x seeds trained from
scratch) and optional ``finetune`` families (children started from a group's final weights and
trained on related tasks, with ``parent_id`` recorded). Any list value is a grid axis; for
``hidden`` / ``fc_hidden`` a list of lists is the axis and a flat list is one option. Presets
live in ``peace/presets/*.yaml`` and are recipes like any user's own.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peace.core.config import checked, read_yaml
from peace.core.errors import PeaceError, unknown
from peace.nets.architectures import ArchSpec
from peace.zoo.population import HParams, Schedule
from peace.zoo.tasks import check_task_name, load_task

__all__ = [
    "MAX_BATCH", "MAX_EPOCHS", "MAX_LAYERS", "MAX_RUNS", "MAX_WIDTH", "PRESET_DIR", "Finetune", "Group", "Recipe",
    "RunSpec", "expand", "lineages", "load_recipe", "planned_models", "populations", "preset_names", "recipe_from_dict"
]

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
# bounds on what one recipe may ask for, checked before anything is built or trained
MAX_RUNS, MAX_EPOCHS, MAX_BATCH, MAX_WIDTH, MAX_LAYERS = 1_000_000, 10_000, 1_000_000, 65_536, 64


@dataclass
class Group:
    """A grid of from-scratch runs."""

    name: str
    tasks: list[str] | str
    architecture: dict[str, Any]
    seeds: int | list[int] = 1  # an int n means seeds 1..n; a list gives them
    init: Any = "kaiming_uniform"
    lr: Any = 1e-3
    weight_decay: Any = 0.0
    dropout: Any = 0.0
    optimizer: Any = "adam"
    epochs: Any = 10
    batch_size: Any = 32
    checkpoints: Any = "last"  # "all", "last" or a list of epochs


@dataclass
class Finetune:
    """Children started from the final weights of a group's runs, trained on related tasks."""

    name: str
    parent_group: str
    tasks: list[str] | str
    parent_tasks: list[str] | None = None
    max_parents: int = 10
    lr: Any = 1e-3
    epochs: int = 5
    batch_size: int = 32
    checkpoints: Any = "last"


@dataclass
class Recipe:
    name: str
    groups: list[Group]
    finetune: list[Finetune] = field(default_factory=list)
    description: str = ""
    chunk_size: int = 1000  # most models trained in one population
    encoder_config: str = "default"  # the encoder config this zoo is meant to be trained with (advice, not identity)
    encoder_set: list = field(default_factory=list)  # KEY=VALUE overrides of that config, before the user's --set

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One training run: everything needed to reproduce it."""

    run_id: str
    group: str
    task: str
    spec: ArchSpec
    hparams: HParams
    schedule: Schedule
    parent_run: str | None = None  # fine-tunes: the parent's run_id (started from its last epoch)

    def population_key(self) -> str:
        return json.dumps([self.group, self.task, self.spec.to_dict(), asdict(self.schedule),
                           self.parent_run is not None], sort_keys=True)


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """Validate a parsed recipe; every unknown key or value is a ``PeaceError`` listing valid ones."""
    d = dict(d)
    d["groups"] = [checked(Group, g, f"groups[{i}]") for i, g in enumerate(d.get("groups") or [])]
    d["finetune"] = [checked(Finetune, f, f"finetune[{i}]") for i, f in enumerate(d.get("finetune") or [])]
    recipe = checked(Recipe, d, "recipe")
    if not recipe.groups:
        raise PeaceError("a recipe needs at least one entry under 'groups'")
    names = [g.name for g in recipe.groups] + [f.name for f in recipe.finetune]
    if len(set(names)) != len(names):
        raise PeaceError(f"group and finetune names must be unique, got {names}")
    expand(recipe)  # surfaces bad tasks, architectures and hyperparameters before any training
    if not isinstance(recipe.encoder_config, str) or not recipe.encoder_config:
        raise PeaceError(f"encoder_config must name an encoder config (e.g. default, tiny), got {recipe.encoder_config!r}")
    if not isinstance(recipe.encoder_set, list) or not all(isinstance(o, str) and "=" in o for o in recipe.encoder_set):
        raise PeaceError(f"encoder_set must be a list of KEY=VALUE strings, got {recipe.encoder_set!r}")
    return recipe


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_recipe(preset: str | None = None, path: str | Path | None = None) -> Recipe:
    """A preset by name, or a user's YAML file."""
    if (preset is None) == (path is None):
        raise PeaceError("give exactly one of a preset name or a recipe file")
    if preset is not None:
        if preset not in preset_names():
            raise unknown("preset", preset, preset_names(), "Or pass your own recipe with --config FILE.")
        path = PRESET_DIR / f"{preset}.yaml"
    d = read_yaml(path, "recipe")
    if "groups" not in d:
        raise PeaceError(f"recipe file {path} must hold a mapping with 'name' and 'groups'")
    return recipe_from_dict(d)


# --- expansion ----------------------------------------------------------------------------------

def _axis(v: Any, nested: bool = False) -> list:
    """Grid values of one key: lists are axes (for nested keys, lists of lists)."""
    if nested:
        return [tuple(x) for x in v] if v and isinstance(v[0], (list, tuple)) else [tuple(v)]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _numbers(values: list, what: str, kind: type, lo: float, hi: float) -> list:
    """Grid values of a numeric key, each checked for type and range (bools are not numbers)."""
    for v in values:
        ok = isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) and lo <= v <= hi
        if not ok:
            noun, fmt = ("an integer", "{:,}") if kind is int else ("a number", "{:g}")
            raise PeaceError(f"{what} must be {noun} between {fmt.format(lo)} and {fmt.format(hi)} (or a list of "
                             f"them), got {v!r:.60}")
    return [kind(v) for v in values]


def _texts(values: list, what: str) -> list[str]:
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise PeaceError(f"{what} must be text (or a list of texts), got {bad[0]!r:.60}")
    return values


def _seeds(v: Any, what: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        _numbers([v], f"{what} seeds (a count)", int, 1, MAX_RUNS)
        return list(range(1, v + 1))
    if not isinstance(v, list) or len(v) > MAX_RUNS:
        raise PeaceError(f"{what} seeds must be a count or a list of at most {MAX_RUNS:,} seeds")
    return _numbers(v, f"{what} seeds", int, 0, 2**31 - 1)


def _checkpoints(v: Any, epochs: int) -> tuple[int, ...]:
    if v == "all":
        return tuple(range(epochs + 1))
    if v == "last":
        return (epochs,)
    if isinstance(v, (list, tuple)) and all(isinstance(e, int) for e in v):
        return tuple(e for e in v if e <= epochs) or (epochs,)
    raise PeaceError(f"checkpoints must be 'all', 'last' or a list of epochs, got {v!r}")


def _run_id(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _arch_options(arch: dict[str, Any], task: str) -> list[ArchSpec]:
    t = load_task(task)
    keys = sorted(arch)
    axes = [_axis(arch[k], nested=k in ("hidden", "fc_hidden", "blocks")) for k in keys]
    out = []
    for k, values in zip(keys, axes):
        if k in ("hidden", "fc_hidden", "blocks"):
            for widths in values:
                if len(widths) > MAX_LAYERS:
                    raise PeaceError(f"architecture {k} has {len(widths)} layers; at most {MAX_LAYERS}")
                _numbers(list(widths), f"architecture {k} widths", int, 1, MAX_WIDTH)
    if math.prod(len(a) for a in axes) > MAX_RUNS:
        raise PeaceError(f"the architecture grid has over {MAX_RUNS:,} combinations")
    for combo in itertools.product(*axes):
        kw = dict(zip(keys, combo))
        for k in ("input_shape", "n_classes"):
            if k in kw:
                raise PeaceError(f"architecture key {k!r} comes from the task; remove it from the recipe")
        kw.setdefault("family", "mlp")
        try:
            out.append(ArchSpec.from_dict({**kw, "input_shape": t.input_shape, "n_classes": t.n_classes}))
        except PeaceError as e:
            raise PeaceError(f"task {task!r}: {e}") from None
    return out


def expand(recipe: Recipe) -> list[RunSpec]:
    """All runs of a recipe, from-scratch groups first, in a deterministic order."""
    runs: list[RunSpec] = []
    if not isinstance(recipe.chunk_size, int) or recipe.chunk_size < 1:
        raise PeaceError(f"chunk_size must be a positive integer, got {recipe.chunk_size!r}")
    for g in recipe.groups:
        what = f"group {g.name!r}:"
        seeds = _seeds(g.seeds, what)
        epochs = _numbers(_axis(g.epochs), f"{what} epochs", int, 0, MAX_EPOCHS)
        batches = _numbers(_axis(g.batch_size), f"{what} batch_size", int, 1, MAX_BATCH)
        lrs = _numbers(_axis(g.lr), f"{what} lr", float, 0, 1e3)
        wds = _numbers(_axis(g.weight_decay), f"{what} weight_decay", float, 0, 1e3)
        drops = _numbers(_axis(g.dropout), f"{what} dropout", float, 0, 1)
        inits, opts = _texts(_axis(g.init), f"{what} init"), _texts(_axis(g.optimizer), f"{what} optimizer")
        tasks = _texts(_axis(g.tasks), f"{what} tasks")
        specs = []  # (task, its architectures), in the recipe's order (repeats stay: expand refuses them)
        for task in tasks:
            check_task_name(task)
            try:
                specs.append((task, _arch_options(g.architecture, task)))
            except PeaceError as e:
                raise PeaceError(f"{what} {e}") from None
        per_spec = len(seeds) * len(epochs) * len(batches) * len(lrs) * len(wds) * len(drops) * len(inits) * len(opts)
        if len(runs) + per_spec * sum(len(s) for _, s in specs) > MAX_RUNS:
            raise PeaceError(f"{what} the recipe asks for over {MAX_RUNS:,} runs; split it into several zoos")
        for task, task_specs in specs:
            for spec in task_specs:
                for opt, ep, bs in itertools.product(opts, epochs, batches):
                    sched = Schedule(ep, bs, opt, _checkpoints(g.checkpoints, ep))
                    for init, lr, wd, dr, seed in itertools.product(inits, lrs, wds, drops, seeds):
                        hp = HParams(seed, init, lr, wd, dr)
                        rid = _run_id(g.name, task, spec.to_dict(), asdict(hp), asdict(sched))
                        runs.append(RunSpec(rid, g.name, task, spec, hp, sched))
    by_group = {g.name: [r for r in runs if r.group == g.name] for g in recipe.groups}
    for f in recipe.finetune:
        if f.parent_group not in by_group:
            raise unknown("parent_group", f.parent_group, list(by_group))
        parents = [r for r in by_group[f.parent_group] if f.parent_tasks is None or r.task in f.parent_tasks]
        if not parents:
            raise PeaceError(f"finetune {f.name!r}: no runs of group {f.parent_group!r} on tasks {f.parent_tasks}")
        parents = parents[: f.max_parents]
        _numbers([f.epochs], f"finetune {f.name!r}: epochs", int, 0, MAX_EPOCHS)
        _numbers([f.batch_size], f"finetune {f.name!r}: batch_size", int, 1, MAX_BATCH)
        _numbers(_axis(f.lr), f"finetune {f.name!r}: lr", float, 0, 1e3)
        for task in _texts(_axis(f.tasks), f"finetune {f.name!r}: tasks"):
            t = load_task(task)
            for p in parents:
                if (t.input_shape, t.n_classes) != (p.spec.input_shape, p.spec.n_classes):
                    raise PeaceError(f"finetune {f.name!r}: task {task!r} (inputs {t.input_shape}, {t.n_classes} "
                                     f"classes) does not fit parent task {p.task!r}; children keep the parent's architecture")
                for lr in _axis(f.lr):
                    sched = Schedule(int(f.epochs), int(f.batch_size), p.schedule.optimizer,
                                     _checkpoints(f.checkpoints, int(f.epochs)))
                    hp = HParams(p.hparams.seed, p.hparams.init, float(lr), p.hparams.weight_decay, p.hparams.dropout)
                    rid = _run_id(f.name, task, p.run_id, asdict(hp), asdict(sched))
                    runs.append(RunSpec(rid, f.name, task, p.spec, hp, sched, parent_run=p.run_id))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise PeaceError("the recipe lists the same run twice (duplicate values in a grid axis?)")
    return runs


def lineages(runs: list[RunSpec]) -> dict[str, str]:
    """Each run's lineage: its own id, or its root parent's (parents precede children in ``expand``'s order)."""
    out: dict[str, str] = {}
    for r in runs:
        out[r.run_id] = out[r.parent_run] if r.parent_run else r.run_id
    return out


def planned_models(recipe: Recipe):
    """One row per checkpoint the recipe will write (``model_id``, ``task``, ``lineage_id``, ``status``): the
    zoo as planned, so that a training split can be checked before anything is built."""
    import pandas as pd

    runs = expand(recipe)
    lineage = lineages(runs)
    return pd.DataFrame([{"model_id": f"{r.run_id}@{e}", "task": r.task, "lineage_id": lineage[r.run_id],
                          "status": "ok"} for r in runs for e in r.schedule.checkpoints])


def populations(runs: list[RunSpec], chunk_size: int) -> list[list[RunSpec]]:
    """Group runs that can train together, in chunks of at most ``chunk_size`` models."""
    groups: dict[str, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault(r.population_key(), []).append(r)
    out = []
    for members in groups.values():
        out.extend(members[i:i + chunk_size] for i in range(0, len(members), chunk_size))
    return out
