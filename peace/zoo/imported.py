"""Models made elsewhere added to a zoo, or made into one (`peace zoo add`, `--new`): measured rows, a shard each.

A model file's metadata fills manifest columns only where it fits the column's type and range, and
never the columns the zoo assigns itself (``IDENTITY``). The new shards are written first and the
manifest replaced last, under the zoo's writer lock, so an interrupted add leaves the zoo as it was.
"""
from __future__ import annotations

import hashlib
import math
import unicodedata
from pathlib import Path

import pandas as pd

from peace.core.atomic import atomic_path, locked, read_json_or_none, sha256_file, staged_dir, sync_all, write_json
from peace.core.errors import PeaceError
from peace.core.paths import SAFE_NAME
from peace.nets.architectures import stack_params
from peace.zoo.population import metric_rows, task_tensors
from peace.zoo.store import (MANIFEST_COLUMNS, SPEC_COLUMNS, Zoo, check_new_zoo_dir, model_id, save_shard,
                             spec_columns, typed_manifest, weights_checksum, write_zoo)
from peace.zoo.tasks import Task, load_task

__all__ = ["IDENTITY", "add_models"]

IDENTITY = ("model_id", "run_id", "population_id", "lineage_id", "parent_id", "status", "shard", "checksum",
            "arch_spec")  # what a model file's metadata may not claim: the zoo assigns these


def _metadata_columns(meta: dict, dtypes: dict, source: str) -> dict:
    """The metadata entries that fill manifest columns (``dtypes``: the manifest's, by column), each checked
    against the column's type and range (integers fit int64, numbers are finite, text is short and printable, a
    task is a plain name)."""
    out = {}
    for k, v in meta.items():
        if k in IDENTITY:
            raise PeaceError(f"{source}: metadata may not set {k!r} (the zoo assigns it); remove it from config.json")
        if k not in dtypes:
            continue
        kind = dtypes[k].kind
        need = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}.get(kind, (str,) if kind in "OSU" else (object,))
        noun = {"b": "true or false", "i": "an integer", "u": "an integer", "f": "a number"}.get(kind, "text")
        if not isinstance(v, need) or (isinstance(v, bool) and bool not in need):
            raise PeaceError(f"{source}: metadata {k!r} = {_shown(v)} must be {noun} (the zoo's column {k!r} holds "
                             f"{dtypes[k]}); fix config.json")
        problem = _out_of_range(k, v)
        if problem:
            raise PeaceError(f"{source}: metadata {k!r} = {_shown(v)} {problem}; fix config.json (nothing was added)")
        out[k] = v
    return out


def _shown(v: object) -> str:
    """A value as it may be printed to a terminal: escaped (no control or bidi characters) and short."""
    text = ascii(v) if not isinstance(v, int) or abs(v) < 10**30 else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= 60 else text[:57] + "..."


def _out_of_range(key: str, v: object) -> str | None:
    """Why a metadata value cannot go into the manifest, or None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int) and not -2**63 <= v < 2**63:
        return "does not fit a 64-bit integer"
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number"
    if isinstance(v, str):
        if len(v) > 200 or any(unicodedata.category(c)[0] == "C" for c in v):
            return "must be at most 200 printable characters (no control or text-direction characters)"
        if key == "task" and not SAFE_NAME.fullmatch(v):
            return "must be a task name: letters, digits, '.', '_' and '-' (starting with a letter or digit)"
    return None


def add_models(zoo: Zoo | str | Path, models: list, task: str | None = None, group: str = "imported",
               metadata: dict | None = None, new: bool = False, lineages: list[tuple[str, int]] | None = None) -> Zoo:
    """Append imported models (``peace.intake.model.ImportedModel``) to a built zoo; returns it reopened.
    ``new``: ``zoo`` is a new directory (absent or empty) that becomes a zoo of these models alone, with the
    columns of a built zoo, written beside it and moved into place when complete.

    Models get the id ``imported-<weights sha>-e000``, each a run of its own; ``lineages`` (a (run name, epoch)
    per model) makes the checkpoints of one named run one lineage instead, ``imported-<name sha>-eNNN``, kept in
    one shard (``peace.intake.tune``: the published zoos' trials). With a known ``task`` that fits their inputs
    and outputs, their loss, accuracy and F1 on its splits are measured like zoo models'. Writers
    take turns (the zoo's lock; the manifest is re-read under it, so concurrent adds all land).
    Crash-safe: the new shard is written first, then zoo.json (accepting the old manifest too), then
    the manifest.
    """
    path = zoo.path if isinstance(zoo, Zoo) else Path(zoo)
    if new:
        if (path / "zoo.json").is_file():
            raise PeaceError(f"{path} already holds a zoo; drop --new to add these models to it")
        check_new_zoo_dir(path, "a zoo of your models")
    elif not (path / "zoo.json").is_file():
        _missing(path)
    if not models:
        raise PeaceError("no models to add")
    the_task = load_task(task) if task else None
    if new:
        with locked(path, "zoo", beside=True), staged_dir(path) as stage:
            check_new_zoo_dir(path, "a zoo of your models")  # again under the lock: another writer may have finished
            _add(_empty_zoo(stage, path.name), models, task, the_task, group, metadata, lineages)
        return Zoo(path)
    with locked(path, "zoo"):
        return _add(Zoo(path), models, task, the_task, group, metadata, lineages)


def _missing(path: Path) -> None:
    """The error for adding to a directory that holds no zoo: build one, or make one of these models."""
    try:
        Zoo(path)
    except PeaceError as e:
        raise PeaceError(f"{e} To make a zoo of these models alone, pass --new (peace zoo add --new {path} ...).") \
            from None


def _empty_zoo(path: Path, name: str) -> Zoo:
    """A zoo with no models at ``path`` (a staging directory): a built zoo's manifest columns, no recipe."""
    write_zoo(path, pd.DataFrame({c: pd.Series(dtype=t) for c, t in MANIFEST_COLUMNS.items()}),
              name if SAFE_NAME.fullmatch(name) else "imported", None, imported=True)
    return Zoo(path)


def _add(zoo: Zoo, models: list, task: str | None, the_task: Task | None, group: str, metadata: dict | None,
         lineages: list[tuple[str, int]] | None) -> Zoo:
    rows, tensors, new_ids = [], {}, set()
    if lineages is not None and len(lineages) != len(models):
        raise ValueError(f"{len(lineages)} lineages for {len(models)} models")
    last: dict[str, int] = {}
    existing_runs = set(zoo.manifest["run_id"]) if lineages else set()  # named runs are written whole, once
    dtypes = zoo.manifest.dtypes.to_dict()
    for name, epoch in lineages or []:
        last[name] = max(epoch, last.get(name, 0))
    for i, m in enumerate(models):
        checksum = weights_checksum(m.params)
        name, epoch = lineages[i] if lineages else (None, 0)
        run_id = f"imported-{checksum[:12] if name is None else hashlib.sha256(name.encode()).hexdigest()[:12]}"
        mid = model_id(run_id, epoch)
        if mid in zoo.manifest.index or mid in new_ids or (name is not None and run_id in existing_runs):
            what = "the same weights are" if name is None else f"run {name!r} is"  # a run's shard is written whole, once
            raise PeaceError(f"{m.source}: {what} already in the zoo ({mid}); nothing was added")
        new_ids.add(mid)
        meta = _metadata_columns({**(metadata or {}), **m.metadata}, dtypes, m.source)
        row = {c: None for c in zoo.manifest.columns}
        row.update({"model_id": mid, "run_id": run_id, "population_id": run_id, "group": group,
                    "task": task or str(meta.get("task", "unknown")), "dataset": the_task.family if the_task else "unknown",
                    **spec_columns(m.spec), "epoch": epoch, "epochs": last.get(name, 0), "status": "ok", "lineage_id": run_id,
                    "shard": f"shards/{run_id}.safetensors", "checksum": checksum})
        row.update({k: v for k, v in meta.items() if k not in ("task", "dataset", *SPEC_COLUMNS)})
        if the_task is not None:
            if math.prod(m.spec.input_shape) != the_task.n_features or m.spec.n_classes != the_task.n_classes:
                raise PeaceError(f"{m.source}: {m.spec.describe()} does not fit task {task!r} "
                                 f"({the_task.n_features} inputs, {the_task.n_classes} classes)")
            data = task_tensors(the_task, m.spec.input_shape)
            measured = metric_rows(m.spec, the_task, stack_params([m.params]), 0, data)[0]
            row.update({k: v for k, v in measured.items() if k not in ("model_index", "epoch")})
        rows.append(row)
        tensors.setdefault(run_id, {}).update({f"{mid}/{k}": v.contiguous().float() for k, v in m.params.items()})
    manifest = pd.concat([m for m in (zoo.manifest.reset_index(drop=True), pd.DataFrame(rows)) if len(m)],
                         ignore_index=True)  # an empty manifest (a new zoo) adds only its columns' types, below
    manifest = typed_manifest(manifest.reindex(columns=list(dict.fromkeys([*zoo.manifest.columns, *manifest.columns]))))
    shards = [zoo.path / "shards" / f"{run_id}.safetensors" for run_id in tensors]
    try:
        for shard, (run_id, t) in zip(shards, tensors.items()):
            save_shard(shard, t, run_id, sync=False)  # a published zoo adds thousands: synced at once, below
        sync_all(shards)  # before the manifest that lists them
        with atomic_path(zoo.path / "manifest.parquet") as tmp:
            manifest.to_parquet(tmp)
            info = {**zoo.info, "manifest_sha256": sha256_file(tmp),
                    "previous_manifest_sha256": zoo.info["manifest_sha256"], "n_checkpoints": len(manifest),
                    "n_runs": int(manifest["run_id"].nunique())}
            write_json(zoo.path / "zoo.json", info)
    except BaseException:
        if (read_json_or_none(zoo.path / "zoo.json") or {}).get("manifest_sha256") == zoo.info["manifest_sha256"]:
            for shard in shards:  # the zoo still lists the old manifest: the new shards belong to nothing
                shard.unlink(missing_ok=True)
        raise
    return Zoo(zoo.path)
