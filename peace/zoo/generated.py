"""A zoo of generated models: written from weights (decoded samples), not trained from a recipe.

It has the layout of any zoo (``manifest.parquet``, ``shards/``, ``zoo.json``; no ``recipe.json``),
so `peace zoo info`, `peace embed`, `peace query`, the studies and the explorer read it like a built
one. Rows have status ``sampled``, their accuracy measured on the task like a trained model's, and a
``provenance`` column (JSON) saying where they came from (run, decoder, prompt, seed).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch import Tensor

from peace.core.atomic import locked, staged_dir
from peace.core.errors import PeaceError
from peace.core.paths import SAFE_NAME
from peace.nets.architectures import ArchSpec, check_params, stack_params
from peace.zoo.population import metric_rows, task_tensors
from peace.zoo.store import Zoo, check_new_zoo_dir, model_id, save_shard, spec_columns, weights_checksum, write_zoo
from peace.zoo.tasks import Task

__all__ = ["write_generated_zoo"]


def _rows(spec: ArchSpec, task: Task | str, params: Sequence[dict[str, Tensor]], stacked: dict[str, Tensor],
          group: str, provenance: dict, columns: Sequence[str]) -> tuple[list[dict], dict[str, Tensor]]:
    if isinstance(task, str):  # a task PEACE holds no data for: the models are written unmeasured
        measured, name, family = [{"status": "ok"}] * len(params), task, "unknown"
    else:
        measured, name, family = metric_rows(spec, task, stacked, 0, task_tensors(task, spec.input_shape)), task.name, task.family
    common = {**{c: None for c in columns}, "population_id": group, "group": group, "task": name,
              "dataset": family, **spec_columns(spec), "epoch": 0, "epochs": 0,
              "shard": f"shards/{group}.safetensors", "provenance": json.dumps(provenance, sort_keys=True)}
    rows, tensors = [], {}
    for p, m in zip(params, measured):
        checksum = weights_checksum(p)
        run_id = f"{group}-{checksum[:12]}"
        mid = model_id(run_id, 0)
        if mid in tensors:
            continue  # the same weights drawn twice: one model
        row = {**common, "model_id": mid, "run_id": run_id, "lineage_id": run_id, "checksum": checksum,
               **{k: v for k, v in m.items() if k not in ("model_index", "epoch")}}
        row["status"] = "sampled" if m["status"] == "ok" else m["status"]
        rows.append(row)
        tensors[mid] = p
    shard = {f"{mid}/{k}": v.detach().contiguous().float() for mid, p in tensors.items() for k, v in p.items()}
    return rows, shard


def write_generated_zoo(out: str | Path, name: str, spec: ArchSpec, task: Task | str,
                        params: Sequence[dict[str, Tensor]], provenance: dict, like: Zoo | None = None,
                        group: str = "sampled") -> Zoo:
    """Write generated models of one architecture and task as a new zoo at ``out`` (staged beside it
    and moved into place when complete), measured on the task (a task's name only, for one PEACE holds no data
    for: unmeasured). ``like``: a zoo whose manifest columns the new one copies, so tables of both line up;
    ``provenance`` goes into every row."""
    out = Path(out)
    if not SAFE_NAME.fullmatch(group) or not SAFE_NAME.fullmatch(name):
        raise PeaceError(f"zoo name {name!r} and group {group!r} must be plain names (letters, digits, '.', '_', '-')")
    if not params:
        raise PeaceError("no generated models to write")
    try:
        stacked = stack_params(list(params))
        fits = all(p.keys() == stacked.keys() for p in params)
    except (KeyError, RuntimeError):  # a model lacks a tensor, or shapes differ
        fits = False
    if not fits:
        for p in params:
            check_params(spec, p)  # names the model's tensor that does not fit
    check_params(spec, stacked, population=True)  # shapes, dtypes and NaN of all at once
    columns = list(like.manifest.columns) if like is not None else []
    rows, shard = _rows(spec, task, params, stacked, group, provenance, columns)
    manifest = pd.DataFrame(rows).astype({"epoch": "int64", "epochs": "int64"})
    check_new_zoo_dir(out, "the generated zoo")
    with locked(out, "zoo", beside=True), staged_dir(out) as stage:
        check_new_zoo_dir(out, "the generated zoo")  # again under the lock: another writer may have finished first
        (stage / "shards").mkdir()
        save_shard(stage / "shards" / f"{group}.safetensors", shard, group)
        write_zoo(stage, manifest, name, None, generated=provenance)
    return Zoo(out)
