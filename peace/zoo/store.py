"""The model-zoo store: build it from a recipe (resumably), then read it lazily.

Layout of a zoo directory::

    recipe.json          the expanded recipe, written first (a resume must match it)
    shards/POP.safetensors   weights of one population: keys ``MODEL_ID/layers.0.weight``
    parts/POP.parquet    that population's manifest rows; written after its shard, so a part
                         on disk means the population is complete
    manifest.parquet     all rows (one per checkpoint), written last
    zoo.json             recipe, versions, counts, creation time

Every file is written atomically; a build killed at any point resumes with ``resume=True`` and
produces the same manifest and weights as an uninterrupted build.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.numpy import save_file
from safetensors.torch import safe_open
from torch import Tensor, nn
from tqdm import tqdm

from peace.core.atomic import (
    LOCK_NAME,
    atomic_path,
    locked,
    remove_temporaries,
    sha256_file,
    write_json,
)
from peace.core.cluster import Engine, Serial
from peace.core.errors import PeaceError
from peace.core.paths import contained_all
from peace.nets.architectures import ArchSpec, build_module, load_weights, stack_params
from peace.zoo.population import PopulationResult, train_population
from peace.zoo.recipe import Recipe, RunSpec, expand, lineages, populations
from peace.zoo.tasks import Task, load_task

__all__ = [
    "FORMAT_VERSION", "SPEC_COLUMNS", "Zoo", "build_or_open", "build_zoo", "model_id", "USABLE", "open_zoo",
    "save_shard", "spec_columns", "train_one_population", "usable", "weights_checksum"
]

FORMAT_VERSION = 1
USABLE = ("ok", "sampled")  # statuses of models every command reads (trained or imported; decoded from samples)


def usable(manifest: pd.DataFrame) -> pd.Series:
    """Which manifest rows are models to embed, train on and explore (not diverged ones)."""
    return manifest["status"].isin(USABLE)


def weights_checksum(weights: dict[str, Tensor]) -> str:
    """SHA-256 over a model's tensors in name order (detects changed or swapped weights)."""
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def model_id(run_id: str, epoch: int) -> str:
    return f"{run_id}-e{epoch:03d}"


# --- building -----------------------------------------------------------------------------------

SPEC_COLUMNS = ("family", "arch", "arch_spec", "activation", "bias", "depth", "width", "n_params")
# every built zoo's manifest columns and their types (a zoo of imported models starts from them, so its tables
# line up with built zoos' and model metadata is checked against the same types)
MANIFEST_COLUMNS = {
    "model_id": "object", "run_id": "object", "population_id": "object", "group": "object", "task": "object",
    "dataset": "object", "family": "object", "arch": "object", "arch_spec": "object", "activation": "object",
    "bias": "bool", "depth": "int64", "width": "int64", "n_params": "int64", "seed": "int64", "init": "object",
    "lr": "float64", "weight_decay": "float64", "dropout": "float64", "optimizer": "object", "batch_size": "int64",
    "epochs": "int64", "epoch": "int64", "train_loss": "float64", "train_acc": "float64", "val_loss": "float64",
    "val_acc": "float64", "test_loss": "float64", "test_acc": "float64", "gen_gap": "float64",
    "test_f1_per_class": "object", "test_macro_f1": "float64", "status": "object", "parent_id": "object",
    "lineage_id": "object", "shard": "object", "checksum": "object"}


def typed_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """A manifest's number columns as numbers: a model measured on no task has NaN accuracy, not None (which
    makes the whole column text, and every reader of the zoo trip on it: zoos that `peace zoo add` wrote before
    are read so too); integers stay integers where every row has one."""
    kinds = {c: t if t == "float64" or manifest[c].notna().all() else "float64" for c, t in MANIFEST_COLUMNS.items()
             if c in manifest and t in ("int64", "float64")}
    return manifest.astype({c: t for c, t in kinds.items() if manifest[c].dtype != t})


def check_new_zoo_dir(out: Path, what: str) -> None:
    """Refuse to write a new zoo (``what``, for the message) where one is, or into a zoo or a directory in use."""
    if out.exists() and not out.is_dir():
        raise PeaceError(f"{out} is a file; name a new directory for {what}")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise PeaceError(f"{out} exists and is not empty; name a new directory for {what} (nothing there was changed)")
    for d in out.resolve().parents:
        if (d / "zoo.json").exists():
            raise PeaceError(f"{out} is inside the zoo {d}; write {what} to its own directory")


def spec_columns(spec: ArchSpec) -> dict:
    """The manifest's columns that describe a model's architecture (``SPEC_COLUMNS``)."""
    return {"family": spec.family, "arch": spec.describe(), "arch_spec": json.dumps(spec.to_dict(), sort_keys=True),
            "activation": spec.activation, "bias": spec.bias, "depth": spec.depth,
            "width": max(spec.hidden + spec.fc_hidden, default=0), "n_params": spec.n_params}


def _population_id(pop: list[RunSpec]) -> str:
    return hashlib.sha1("|".join(r.run_id for r in pop).encode()).hexdigest()[:12]


def _rows(pop: list[RunSpec], pop_id: str, metrics: list[dict], weights: dict[int, dict[str, Tensor]],
          parent_ids: dict[str, str], lineage: dict[str, str]) -> list[dict]:
    rows = []
    for m in metrics:
        r = pop[m["model_index"]]
        w = {k: v[m["model_index"]] for k, v in weights[m["epoch"]].items()}
        task = load_task(r.task)
        row = {
            "model_id": model_id(r.run_id, m["epoch"]), "run_id": r.run_id, "population_id": pop_id,
            "group": r.group, "task": r.task, "dataset": task.family, **spec_columns(r.spec),
            **asdict(r.hparams), "optimizer": r.schedule.optimizer, "batch_size": r.schedule.batch_size,
            "epochs": r.schedule.epochs,
            **{k: v for k, v in m.items() if k != "model_index"},
            "parent_id": parent_ids.get(r.run_id), "lineage_id": lineage[r.run_id],
            "shard": f"shards/{pop_id}.safetensors", "checksum": weights_checksum(w),
        }
        rows.append(row)
    return rows


def _check_existing(out: Path, recipe: Recipe, resume: bool) -> None:
    rec = out / "recipe.json"
    if out.exists() and not out.is_dir():
        raise PeaceError(f"{out} is a file; --out must name a directory (new, or a zoo to --resume)")
    if not rec.exists():
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not resume:
            raise PeaceError(f"{out} exists and is not empty; choose a new --out directory")
        return
    if not resume:
        raise PeaceError(f"{out} already holds a zoo (or a partial build); pass --resume to continue it, "
                         f"or choose another --out. Nothing was changed.")
    old = json.loads(rec.read_text())
    advice = ("encoder_config", "encoder_set")  # how to train an encoder on the zoo does not change the zoo
    new = json.loads(json.dumps(recipe.to_dict(), default=str))
    if {k: v for k, v in old.items() if k not in advice} != {k: v for k, v in new.items() if k not in advice}:
        raise PeaceError(f"{out} was built from a different recipe ({old.get('name')!r}); resume needs the same "
                         f"recipe. Use another --out for a new recipe.")


def _part_is_complete(out: Path, pop_id: str) -> bool:
    """Parts are written after their shard, both atomically: both readable means the population is done."""
    part, shard = out / "parts" / f"{pop_id}.parquet", out / "shards" / f"{pop_id}.safetensors"
    try:
        pd.read_parquet(part, columns=["model_id"])
        with safe_open(str(shard), "pt"):
            return True
    except Exception:  # missing or unreadable leftovers are rebuilt
        return False


def build_zoo(recipe: Recipe, out: str | Path, resume: bool = False, progress: bool = True,
              engine: Engine | None = None) -> Zoo:
    """Train every run of ``recipe`` into a zoo at ``out`` and return it opened (holding the zoo's
    writer lock: a second build or ``add`` waits). ``engine`` trains populations elsewhere (Ray):
    this process still writes every file, so resume and checksums work as without it."""
    out = Path(out)
    runs = expand(recipe)
    _check_existing(out, recipe, resume)  # before the lock creates the directory: a clear error, nothing made
    with locked(out, "zoo"):
        _check_existing(out, recipe, resume)  # again: another writer may have started meanwhile
        return _build(recipe, runs, out, resume, progress, engine or Serial())


def train_one_population(pop: list[RunSpec], start: dict[str, Tensor] | None) -> PopulationResult:
    """One population's training (a piece of work an engine may run on another machine)."""
    return train_population(load_task(pop[0].task), pop[0].spec, [r.hparams for r in pop], pop[0].schedule,
                            start=start)


def save_shard(path: Path, tensors: dict[str, Tensor], pop_id: str, sync: bool = True) -> None:
    """One shard, atomically (safetensors' numpy writer: its torch one's bytes, 5x faster on many small
    tensors); a failed write (a full disk, a read-only zoo) is one ``PeaceError``. ``sync``: as ``atomic_path``."""
    arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}
    try:
        with atomic_path(path, sync) as tmp:
            save_file(arrays, str(tmp), metadata={"format": "peace-zoo-shard", "population_id": pop_id})
    except SafetensorError as e:  # safetensors reports its own I/O errors, not as OSError
        raise PeaceError(f"could not write {path} ({e}); free disk space or make the zoo writable, then rerun "
                         f"(`zoo build --resume` keeps every population already written)") from None


def _write_population(out: Path, pop: list[RunSpec], pop_id: str, res: PopulationResult, parent_ids: dict,
                      lineage: dict) -> None:
    """The shard, then the part (a part on disk means its population is complete)."""
    tensors = {f"{model_id(r.run_id, e)}/{k}": v[i].contiguous()
               for e, w in res.checkpoints.items() for i, r in enumerate(pop) for k, v in w.items()}
    save_shard(out / "shards" / f"{pop_id}.safetensors", tensors, pop_id)
    with atomic_path(out / "parts" / f"{pop_id}.parquet") as tmp:
        pd.DataFrame(_rows(pop, pop_id, res.metrics, res.checkpoints, parent_ids, lineage)).to_parquet(tmp)


def _build(recipe: Recipe, runs: list[RunSpec], out: Path, resume: bool, progress: bool, engine: Engine) -> Zoo:
    if resume:  # under the zoo's lock: what a killed build was writing is litter
        remove_temporaries(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    write_json(out / "recipe.json", recipe.to_dict())
    pops = populations(runs, recipe.chunk_size)
    by_id = {r.run_id: r for r in runs}
    lineage = lineages(runs)
    final_of = {r.run_id: model_id(r.run_id, r.schedule.epochs) for r in runs}
    parent_ids = {r.run_id: final_of[r.parent_run] for r in runs if r.parent_run}
    pop_of = {r.run_id: _population_id(pop) for pop in pops for r in pop}  # run -> population, for fine-tune parents
    bar = tqdm(total=sum(len(p) for p in pops), desc=f"zoo {recipe.name}", unit="run", disable=not progress)
    done: set[str] = set()
    waiting = []
    for pop in pops:
        if resume and _part_is_complete(out, pop_of[pop[0].run_id]):
            done.add(pop_of[pop[0].run_id])
            bar.update(len(pop))
        else:
            waiting.append(pop)
    running: dict[Future, list[RunSpec]] = {}
    while waiting or running:
        # keep the engine busy with populations whose parents are written (in order: Serial keeps the old order)
        while waiting and len(running) < engine.slots:
            ready = next((p for p in waiting if all(pop_of[r.parent_run] in done for r in p if r.parent_run)), None)
            if ready is None:
                break
            waiting.remove(ready)
            start = None
            if ready[0].parent_run is not None:
                start = stack_params([_load_final(out, pop_of[r.parent_run], by_id[r.parent_run]) for r in ready])
            bar.set_postfix_str(f"{ready[0].group}/{ready[0].task}")
            running[engine.submit(train_one_population, ready, start)] = ready
        if not running:
            raise PeaceError(f"zoo {out}: populations wait for parents that are never trained (a recipe bug)")
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for f in finished:
            pop = running.pop(f)
            _write_population(out, pop, pop_of[pop[0].run_id], f.result(), parent_ids, lineage)
            done.add(pop_of[pop[0].run_id])
            bar.update(len(pop))
    bar.close()
    parts = [pd.read_parquet(out / "parts" / f"{pop_of[p[0].run_id]}.parquet") for p in pops]
    write_zoo(out, pd.concat(parts, ignore_index=True), recipe.name, recipe.to_dict())
    return Zoo(out)


def write_zoo(out: Path, manifest: pd.DataFrame, name: str, recipe: dict | None, **extra) -> None:
    """A zoo's ``manifest.parquet`` (atomically) and then its ``zoo.json``: format, name, recipe (None for a zoo
    written from weights), counts, the manifest's checksum, creation time and versions, plus ``extra`` keys."""
    with atomic_path(out / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp)
    write_json(out / "zoo.json", {
        "format_version": FORMAT_VERSION, "name": name, "recipe": recipe, **extra,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "n_checkpoints": len(manifest), "n_runs": int(manifest["run_id"].nunique()),
        "manifest_sha256": sha256_file(out / "manifest.parquet"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    })


def _load_final(out: Path, pop_id: str, run: RunSpec) -> dict[str, Tensor]:
    prefix = model_id(run.run_id, run.schedule.epochs) + "/"
    with safe_open(str(out / "shards" / f"{pop_id}.safetensors"), "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


# --- reading ------------------------------------------------------------------------------------

class Zoo:
    """A built zoo, opened lazily: metadata at once, weights only when asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta, man = self.path / "zoo.json", self.path / "manifest.parquet"
        if not meta.exists() or not man.exists():
            hint = " (a partial build: run `peace zoo build ... --resume`)" if (self.path / "recipe.json").exists() else ""
            raise PeaceError(f"{self.path} is not a finished zoo: zoo.json or manifest.parquet is missing{hint}. "
                             f"Build one with `peace zoo build --preset demo --out {self.path}`.")
        try:
            self.info = json.loads(meta.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise PeaceError(f"{meta} is corrupted ({e}); rebuild the zoo with --resume") from None
        if not isinstance(self.info, dict):
            raise PeaceError(f"{meta} is corrupted (it holds a {type(self.info).__name__}, not an object); rebuild "
                             f"the zoo with --resume")
        if self.info.get("format_version") != FORMAT_VERSION:
            raise PeaceError(f"{meta} has format version {self.info.get('format_version')}, this PEACE reads "
                             f"{FORMAT_VERSION}; rebuild the zoo")
        actual = sha256_file(man)
        # previous_manifest_sha256: `peace zoo add` was interrupted before replacing the manifest, which
        # then still lists exactly the models it did before (the new shard is simply not referenced)
        if actual not in (self.info.get("manifest_sha256"), self.info.get("previous_manifest_sha256")):
            raise PeaceError(f"{man} does not match the checksum in zoo.json (changed or corrupted); "
                             f"rebuild it with `peace zoo build ... --out {self.path} --resume`")
        self.info["manifest_sha256"] = actual
        self.manifest = typed_manifest(pd.read_parquet(man)).set_index("model_id", drop=False).rename_axis(None)
        self._shards = contained_all(self.path, self.manifest["shard"].unique(), f"weight shard in {man}")

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, {len(self)} checkpoints, {self.manifest['run_id'].nunique()} runs)"

    @property
    def name(self) -> str:
        return self.info["name"]

    def _known(self, model_id: str) -> str:
        if model_id not in self.manifest.index:
            raise PeaceError(f"model {model_id!r} is not in zoo {self.path}")
        return model_id

    def row(self, model_id: str) -> pd.Series:
        return self.manifest.loc[self._known(model_id)]

    def _cell(self, model_id: str, column: str):
        return self.manifest.at[self._known(model_id), column]  # a scalar lookup: no row Series for big zoos

    def spec(self, model_id: str) -> ArchSpec:
        return _spec_from_json(self._cell(model_id, "arch_spec"))

    def task(self, model_id: str) -> Task:
        """The PEACE task a model solves: its data, for what needs it (accuracy, loss, fine-tuning)."""
        name = self._cell(model_id, "task")
        try:
            return load_task(name)
        except PeaceError as e:
            why = "it was added without --task" if name == "unknown" else str(e)
            raise PeaceError(f"model {model_id} solves no task PEACE has data for ({why}), so what needs that data "
                             f"(accuracy, loss, fine-tuning) cannot be computed for it; `peace zoo add --task NAME` "
                             f"adds models measured on a PEACE task") from None

    def weights(self, model_id: str, verify: bool = True) -> dict[str, Tensor]:
        """One model's state dict, read from its shard (checksum-verified)."""
        return self.load_many([model_id], verify=verify)[0]

    def load_many(self, model_ids: Iterable[str], verify: bool = True) -> list[dict[str, Tensor]]:
        """State dicts of many models, opening each shard once."""
        ids = list(model_ids)
        rows = self.manifest.loc[ids] if ids else self.manifest.iloc[:0]
        out: dict[str, dict[str, Tensor]] = {}
        names = {s: list(_spec_from_json(s).param_shapes()) for s in rows["arch_spec"].unique()}
        for shard, sub in rows.groupby("shard", sort=False):
            path = self._shards[shard]
            try:
                with safe_open(str(path), "np") as f:  # numpy, then torch: 4x faster than safetensors' torch reader
                    for mid, checksum, spec_json in zip(sub["model_id"], sub["checksum"], sub["arch_spec"]):
                        w = {k: torch.from_numpy(f.get_tensor(f"{mid}/{k}")) for k in names[spec_json]}
                        if verify and weights_checksum(w) != checksum:
                            raise PeaceError(f"weights of {mid} in {path} do not match the manifest checksum "
                                             f"(corrupted shard); rebuild with --resume after deleting {path}")
                        out[mid] = w
            except (SafetensorError, OSError) as e:
                raise PeaceError(f"cannot read weight shard {path}: {e}. Delete it and run "
                                 f"`peace zoo build ... --out {self.path} --resume` to rebuild it.") from None
        return [out[m] for m in ids]

    def verify(self, weights: bool = False, progress: bool = False) -> list[str]:
        """Problems found in the shards: missing or unreadable files, missing tensors and, with
        ``weights``, checksum mismatches (reads every weight). Empty when all is well."""
        problems = []
        ids, specs = self.manifest["model_id"].to_numpy(), self.manifest["arch_spec"].to_numpy()
        shards = self.manifest.groupby("shard", sort=False).indices  # positions: no frame sliced per shard
        for shard, rows in tqdm(shards.items(), desc="verify", unit="shard", disable=not progress):
            path = self._shards[shard]
            try:
                with safe_open(str(path), "pt") as f:
                    keys = set(f.keys())
                missing = [m for m, spec in zip(ids[rows], specs[rows])
                           if any(f"{m}/{k}" not in keys for k in _spec_from_json(spec).param_shapes())]
                if missing:
                    problems.append(f"{shard}: no weights for {len(missing)} model(s), e.g. {missing[0]}")
                elif weights:
                    self.load_many(list(ids[rows]), verify=True)
            except (SafetensorError, OSError) as e:
                problems.append(f"{shard}: cannot be read ({str(e)[:120]})")
            except PeaceError as e:
                problems.append(str(e))
        return problems

    def model(self, model_id: str) -> nn.Module:
        return load_weights(build_module(self.spec(model_id)), self.weights(model_id)).eval()

    @cached_property
    def summary(self) -> pd.DataFrame:
        """Per task and architecture family: runs, checkpoints, diverged count, final test accuracy."""
        m = self.manifest
        final = m[m["epoch"] == m["epochs"]]
        g = m.groupby(["task", "family"])
        s = pd.DataFrame({"runs": g["run_id"].nunique(), "checkpoints": g.size(),
                          "diverged": g["status"].apply(lambda s: int((s == "diverged").sum()))})
        acc = final.groupby(["task", "family"])["test_acc"]
        s["final_test_acc_mean"], s["final_test_acc_std"] = acc.mean(), acc.std()
        return s.reset_index()


@lru_cache(maxsize=1024)
def _spec_from_json(s: str) -> ArchSpec:
    return ArchSpec.from_dict(json.loads(s))


def open_zoo(path: str | Path) -> Zoo:
    return Zoo(path)


def build_or_open(recipe: Recipe, out: str | Path, progress: bool = True) -> Zoo:
    """Open the zoo at ``out`` if it is finished, else build it (resuming a partial build)."""
    out = Path(out)
    if (out / "zoo.json").exists():
        _check_existing(out, recipe, resume=True)
        return Zoo(out)
    return build_zoo(recipe, out, resume=(out / "recipe.json").exists(), progress=progress)
