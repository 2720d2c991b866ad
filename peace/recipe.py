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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .architectures import ArchSpec
from .config import checked, read_yaml
from .errors import PeaceError, unknown
from .population import HParams, Schedule
from .tasks import check_task_name, load_task

PRESET_DIR = Path(__file__).with_name("presets")


@dataclass
class Group:
    """A grid of from-scratch runs."""

    name: str
    tasks: list[str]
    architecture: dict[str, Any]
    seeds: Any = 1  # an int n means seeds 1..n; a list gives them
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
    tasks: list[str]
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
    axes = [_axis(arch[k], nested=k in ("hidden", "fc_hidden")) for k in keys]
    out = []
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
    for g in recipe.groups:
        seeds = list(range(1, g.seeds + 1)) if isinstance(g.seeds, int) else [int(s) for s in g.seeds]
        for task in _axis(g.tasks):
            check_task_name(task)
            for spec in _arch_options(g.architecture, task):
                for opt, ep, bs in itertools.product(_axis(g.optimizer), _axis(g.epochs), _axis(g.batch_size)):
                    sched = Schedule(int(ep), int(bs), opt, _checkpoints(g.checkpoints, int(ep)))
                    for init, lr, wd, dr, seed in itertools.product(_axis(g.init), _axis(g.lr), _axis(g.weight_decay),
                                                                    _axis(g.dropout), seeds):
                        hp = HParams(seed, init, float(lr), float(wd), float(dr))
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
        for task in _axis(f.tasks):
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


def populations(runs: list[RunSpec], chunk_size: int) -> list[list[RunSpec]]:
    """Group runs that can train together, in chunks of at most ``chunk_size`` models."""
    groups: dict[str, list[RunSpec]] = {}
    for r in runs:
        groups.setdefault(r.population_key(), []).append(r)
    out = []
    for members in groups.values():
        out.extend(members[i:i + chunk_size] for i in range(0, len(members), chunk_size))
    return out
