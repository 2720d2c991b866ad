"""``peace rank``: order a zoo's models for a task nobody labelled: from the weights alone, by the probability each
model gives the classes of inputs that the better models write (``peace.evaluate.selection.written_score``), or
by how much each agrees with the others (``consensus``) on Gaussian probes, the user's unlabelled inputs or a
task's."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau

from peace.core.errors import PeaceError
from peace.evaluate.selection import MAX_INPUTS, consensus, written_score
from peace.nets.architectures import ArchSpec
from peace.nets.probes import io_space
from peace.zoo.query import select_ids
from peace.zoo.store import Zoo, usable
from peace.zoo.tasks import load_task

__all__ = ["MAX_RANKED", "agreement_with_record", "parent_tasks", "rank", "rank_models", "read_inputs"]

MAX_RANKED = 20_000  # models one ranking holds in memory (weights and predictions on up to 512 inputs each)


def read_inputs(path: str | Path, spec: ArchSpec) -> torch.Tensor:
    """Up to ``MAX_INPUTS`` unlabelled inputs from a ``.npy`` file (numbers only, never pickles; memory-mapped,
    so a huge or lying file costs its first rows), refused unless each row fits ``spec``'s inputs."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PeaceError(f"{path} is not a readable .npy array of numbers ({e}); save your inputs with "
                         f"numpy.save(path, array) as an (n, features) or (n, *input_shape) float array") from None
    want = int(np.prod(spec.input_shape))
    if arr.dtype.kind not in "fiu" or arr.ndim < 2 or len(arr) == 0 or int(np.prod(arr.shape[1:])) != want:
        raise PeaceError(f"{path} holds a {arr.dtype} array of shape {arr.shape}; the models read {want} features "
                         f"per input ({tuple(spec.input_shape)}): save an (n, {want}) float array")
    x = torch.from_numpy(np.array(arr[:MAX_INPUTS], dtype=np.float32)).reshape(-1, *spec.input_shape)
    if not torch.isfinite(x).all():
        raise PeaceError(f"{path} holds NaN or infinite values in its first {len(x)} rows; drop or impute them")
    return x


def _one_source(inputs: str | Path | None, task: str | None, probes: bool = False) -> None:
    if inputs is not None and task is not None:
        raise PeaceError("rank on your inputs (--inputs FILE.npy) or on a task's (--task NAME), not both")
    if probes and (inputs is not None or task is not None):
        raise PeaceError("--probes reads Gaussian probes when you have no inputs; with --inputs or --task the "
                         "models already read real inputs: drop --probes")


def _one_space(specs: Sequence[ArchSpec]) -> None:
    spaces = Counter(io_space(s) for s in specs)
    if len(spaces) > 1:
        shown = ", ".join(f"{k} ({v})" for k, v in spaces.most_common(6))
        raise PeaceError(f"the models read {len(spaces)} input -> class spaces ({shown}); models are compared on the "
                         f"same inputs: rank one space at a time (e.g. add \"and task == 'NAME'\" to a selection)")


def rank(specs: Sequence[ArchSpec], params: Sequence[dict[str, torch.Tensor]], rows: pd.DataFrame,
         inputs: str | Path | None = None, task: str | None = None, probes: bool = False) -> tuple[pd.DataFrame, str]:
    """``rows`` (one per model, ``model_id`` first) ordered best first by a ``score`` column: consensus (a
    model's agreement with the others, each weighted by its own centrality: ``agreement_scores``) on unlabelled
    inputs, ``inputs``, a ``.npy`` file of them, or ``task``, a PEACE task's test inputs; with neither, from the
    weights alone, ``written_score`` (the probability of the classes that inputs written by the better models
    were written for), or consensus on Gaussian probes if ``probes`` (quicker, less often right). The models
    must read one input -> class space. Returns the table and what the score read."""
    _one_source(inputs, task, probes)
    if not 3 <= len(specs) <= MAX_RANKED:
        raise PeaceError(f"a ranking without labels needs 3 to {MAX_RANKED:,} models, got {len(specs)}")
    _one_space(specs)
    spec, group = specs[0], ["selection"] * len(specs)  # one group: every model is compared with every other
    if inputs is not None:
        x = read_inputs(inputs, spec)
        scores, read = consensus(specs, params, group, x), f"consensus on {len(x)} unlabelled inputs of {inputs}"
    elif task is not None:
        t = load_task(task)
        if int(np.prod(t.input_shape)) != int(np.prod(spec.input_shape)) or t.n_classes != spec.n_classes:
            raise PeaceError(f"task {task!r} has inputs {t.input_shape} and {t.n_classes} classes; the models read "
                             f"{tuple(spec.input_shape)} into {spec.n_classes} classes")
        scores = consensus(specs, params, [task] * len(specs), "data")
        read = f"consensus on {min(len(t.X_test), MAX_INPUTS)} unlabelled test inputs of task {task!r} (its labels are not read)"
    elif probes:
        scores = consensus(specs, params, group, "probes")
        read = "consensus on Gaussian probe inputs (weights only: no data read)"
    else:
        scores = written_score(specs, params, group)
        read = ("the probability of the classes that inputs written by the better models were written for "
                "(weights only: no data read)")
    table = rows.assign(score=scores).sort_values("score", ascending=False, kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True), read


def rank_models(zoo: Zoo, selection: str, inputs: str | Path | None = None, task: str | None = None,
                probes: bool = False) -> tuple[pd.DataFrame, str]:
    """``rank`` for the usable models of a zoo that ``selection`` picks (ids or a manifest query)."""
    _one_source(inputs, task, probes)
    m = zoo.manifest[usable(zoo.manifest)]
    ids = [i for i in select_ids(m, selection) if i in m.index]
    if not 3 <= len(ids) <= MAX_RANKED:
        raise PeaceError(f"the selection {selection!r} picks {len(ids)} usable models of {zoo.path}; a ranking "
                         f"without labels needs 3 to {MAX_RANKED:,} (check it with `peace zoo info {zoo.path}`)")
    cols = [c for c in ("task", "arch", "epoch", "test_acc") if c in m.columns]
    specs = [zoo.spec(i) for i in ids]
    _one_space(specs)  # before reading any weights
    return rank(specs, zoo.load_many(ids), m.loc[ids, cols].rename_axis("model_id").reset_index(), inputs, task,
                probes)


def parent_tasks(zoo: Zoo, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` were fine-tuned from a model of another task, by that task: from the weights alone
    such models may still compute much of their parent's function, which the written score cannot tell from
    this task's (docs/benchmarks.md, model selection)."""
    m = zoo.manifest
    parents = m.loc[ids, "parent_id"].dropna() if "parent_id" in m else pd.Series(dtype=object)
    parents = parents[parents.isin(m.index)]
    other = m.loc[parents.to_numpy(), "task"].to_numpy() != m.loc[parents.index, "task"].to_numpy()
    return m.loc[parents.to_numpy()[other], "task"].value_counts().to_dict()


def agreement_with_record(table: pd.DataFrame) -> float | None:
    """Kendall tau between the ranking and the test accuracy the manifest records, where it records one."""
    known = table["test_acc"].notna() if "test_acc" in table else pd.Series(False, index=table.index)
    if known.sum() < 3 or table.loc[known, "test_acc"].nunique() < 2:
        return None
    return float(kendalltau(table.loc[known, "score"], table.loc[known, "test_acc"]).statistic)
