"""Zoos published as one weight matrix: the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights"), whose CIFAR10-GS, SVHN-GS, MNIST and Fashion-MNIST parts are the benchmarks of NFN,
ProbeGen and ScaleGMN. A zoo is a directory of three files::

    weights.npy       one row per checkpoint: all of the network's parameters, flattened (TensorFlow's layout)
    layout.csv        which columns hold which tensor: varname, start_idx, end_idx, shape (e.g. "(3, 3, 1, 16)")
    metrics.csv.gz    one row per checkpoint, in the matrix's order: config.* hyperparameters, modeldir (the
                      run), step (the epoch), train / test accuracy and loss (metrics.csv, uncompressed, too)

The networks are those of the zoo's training code (google-research ``dnn_predict_accuracy/train_network.py``):
``dnn_architecture`` "cnn" is Keras ``Conv2D(units, 3, strides=2)`` layers (unpadded: Keras' default) with the
activation, a global average pool and a dense layer; "fcn" is a flatten and dense layers. Keras keeps a conv kernel
as (height, width, in, out) and a dense kernel as (in, out); they are read into torch's (out, in, height, width)
and (out, in). The matrix's header is read (never unpickled) and its declared shape checked against the file's
size before any row is read; then only the rows asked for are. The metrics' ``step`` of a checkpoint becomes its
epoch (the zoo's code counts epochs: 0, 1, 2, 3, 20, 40, 60, 80, 86).
"""
from __future__ import annotations

import gzip
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peace.core.errors import PeaceError
from peace.intake.model import ImportedModel, Limits, exact_model, spec_from

__all__ = ["MatrixZoo", "is_matrix_zoo", "matrix_zoos_in", "read_matrix_zoo"]

DATASET_SIDE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}  # the zoo's images
CARD = {"config.random_seed": "seed", "config.learning_rate": "lr", "config.l2reg": "weight_decay",
        "config.dropout": "dropout", "config.optimizer": "optimizer", "config.w_init": "init",
        "config.epochs": "epochs", "config.batchsize": "batch_size", "train_accuracy": "train_acc",
        "train_loss": "train_loss", "test_accuracy": "test_acc", "test_loss": "test_loss"}  # column -> manifest's
ACTIVATION = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "linear": "identity", "gelu": "gelu"}
MAX_LAYOUT_BYTES, MAX_METRICS_BYTES = 2**20, 1024 * 2**20  # a layout is ~1 KiB; the largest metrics ~0.1 GiB
MAX_READ_BYTES = 2 * 2**30  # float32 weights copied out of the matrix in one add: use last_only / runs below it
_SHAPE = re.compile(r"[(\[]?\s*(\d{1,9}(?:\s*,\s*\d{1,9})*)\s*,?\s*[)\]]?")


@dataclass
class MatrixZoo:
    """What ``read_matrix_zoo`` read: the models, each one's (run, epoch) lineage, and notes for the user."""

    models: list[ImportedModel]
    lineages: list[tuple[str, int]]
    notes: list[str]


def is_matrix_zoo(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a weight matrix and its layout table."""
    path = Path(path)
    return path.is_dir() and (path / "weights.npy").is_file() and (path / "layout.csv").is_file()


def matrix_zoos_in(path: str | Path) -> list[Path]:
    """``path`` if it is a matrix zoo, else the matrix zoos directly inside it (the Small CNN Zoo's archives unpack to
    one directory per dataset), in name order; none: []."""
    path = Path(path)
    if is_matrix_zoo(path) or not path.is_dir():
        return [path] if is_matrix_zoo(path) else []
    return sorted(p for p in path.iterdir() if is_matrix_zoo(p))


def read_matrix_zoo(path: str | Path, config: dict | None = None, limits: Limits | None = None,
                    last_only: bool = False, runs: int | None = None) -> MatrixZoo:
    """The checkpoints of a matrix zoo as imported models. ``config`` overrides what the files say (an
    ``input_shape`` for datasets the zoo's code does not name, an ``activation``); ``last_only`` keeps each run's
    last checkpoint (what NFN and ProbeGen train on), ``runs`` the first N runs in the matrix's order."""
    path, limits = Path(path), limits or Limits()
    layers = _layout(path / "layout.csv")
    width = layers[-1][2] if layers else 0
    matrix = _matrix(path / "weights.npy", width)
    metrics = _metrics(path, len(matrix))
    rows, notes = _selected(metrics, last_only, runs)
    if len(rows) * width * 4 > MAX_READ_BYTES:
        raise PeaceError(f"{path}: {len(rows):,} checkpoints are {len(rows) * width * 4 / 2**30:.1f} GiB of weights, "
                         f"more than one add reads ({MAX_READ_BYTES // 2**30} GiB); add each run's last checkpoint "
                         f"(--last-only) or fewer runs (--runs N)")
    block = matrix.rows(rows)
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        notes.append(f"{len(bad)} checkpoint(s) with NaN or infinite weights left out (matrix rows "
                     f"{', '.join(str(rows[i]) for i in bad[:5])}{', ...' if len(bad) > 5 else ''}): diverged runs")
    tensors = _torch_tensors(block, layers)
    models, lineages, specs = [], [], {}
    label = path.resolve().name
    records = metrics.iloc[rows].to_dict("records") if len(metrics.columns) else [{} for _ in rows]
    for j, (r, row) in enumerate(zip(rows, records)):
        if not finite[j]:
            continue
        source = f"{path}/weights.npy row {r}"
        inferred = _architecture(layers, row, config or {}, source)
        key = repr(sorted(inferred.items()))
        if key not in specs:
            specs[key] = spec_from(dict(inferred), dict(config or {}), source)
        spec, metadata = specs[key]
        card = {CARD[c]: p for c, v in row.items() if c in CARD and (p := _plain(v)) is not None}
        task = str(row["config.dataset"]) if pd.notna(row.get("config.dataset")) else label
        m = exact_model(spec, {name: t[j] for name, t in tensors.items()}, "matrix zoo", source, limits,
                        {"task": task, **card, **metadata})
        if "config.activation" not in row and "activation" not in (config or {}):
            m.inferred["activation"] = "relu"
        models.append(m)
        run = str(row["modeldir"]) if pd.notna(row.get("modeldir")) else f"row-{r}"
        lineages.append((f"{label}/{run}", int(row["step"]) if "step" in row else 0))
    if not models:
        raise PeaceError(f"{path}: no checkpoint with finite weights to add")
    return MatrixZoo(models, lineages, notes)


def _layout(path: Path) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """layout.csv's tensors as (varname, start, end, shape), in column order, covering the matrix's columns
    exactly once, each a kernel or a bias."""
    if path.stat().st_size > MAX_LAYOUT_BYTES:
        raise PeaceError(f"{path}: over {MAX_LAYOUT_BYTES // 2**10} KiB; a layout table has a line per tensor")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as e:
        raise PeaceError(f"{path}: not a CSV table ({str(e)[:80]})") from None
    need = {"varname", "start_idx", "end_idx", "shape"}
    if not need <= set(table.columns):
        raise PeaceError(f"{path}: needs the columns {sorted(need)}, has {list(table.columns)[:8]}")
    out, end = [], 0
    for i, t in table.iterrows():
        m = _SHAPE.fullmatch(t["shape"].strip())
        if not m or not t["start_idx"].isdigit() or not t["end_idx"].isdigit():
            raise PeaceError(f"{path}, line {i + 2}: start_idx, end_idx must be integers and shape a tuple of them "
                             f"like (3, 3, 1, 16); got {t['start_idx'][:20]!r}, {t['end_idx'][:20]!r}, {t['shape'][:40]!r}")
        shape, start, stop = tuple(int(s) for s in m[1].split(",")), int(t["start_idx"]), int(t["end_idx"])
        if start != end or stop - start != math.prod(shape) or min(shape) < 1:
            raise PeaceError(f"{path}, line {i + 2}: {t['varname'][:60]!r} spans columns {start}..{stop} for shape "
                             f"{shape}; each tensor must follow the last (from column {end}) and hold its shape's size")
        if not t["varname"].endswith(("kernel:0", "bias:0")):
            raise PeaceError(f"{path}: {t['varname'][:60]!r} is neither a kernel nor a bias; PEACE reads conv and "
                             f"dense layers only (no batch normalization: the zoo's 'cnnbn' networks are not read)")
        out.append((t["varname"], start, stop, shape))
        end = stop
    if not out:
        raise PeaceError(f"{path}: lists no tensors")
    return out


@dataclass(frozen=True)
class _Matrix:
    """A .npy weight matrix on disk: where its rows start, how many, of what."""

    path: Path
    offset: int
    shape: tuple[int, int]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, rows: list[int]) -> np.ndarray:
        """Rows ``rows`` as float32, read one by one: nothing else of the file is loaded (a memory map would
        page in most of a multi-GiB file to copy a ninth of it)."""
        size = self.shape[1] * self.dtype.itemsize
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        with self.path.open("rb") as f:
            for i, r in enumerate(rows):
                f.seek(self.offset + r * size)
                out[i] = np.frombuffer(f.read(size), dtype=self.dtype)
        return out


def _matrix(path: Path, width: int) -> _Matrix:
    """The weight matrix's header: a 2-D float matrix, ``width`` wide, whose declared size the file holds."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise PeaceError(f"{path}: not a readable .npy matrix ({str(e)[:100]}); the file may be truncated or "
                         f"corrupted: download it again") from None
    if len(shape) != 2 or dtype.kind != "f" or fortran:
        raise PeaceError(f"{path}: holds an array of {dtype}, shape {shape}{' (Fortran order)' if fortran else ''}; "
                         f"a weight matrix is 2-D floats, one row per checkpoint")
    if path.stat().st_size != offset + math.prod(shape) * dtype.itemsize:
        raise PeaceError(f"{path}: declares {shape[0]:,} x {shape[1]:,} {dtype} but holds {path.stat().st_size:,} bytes; "
                         f"the file is truncated or corrupted: download it again")
    if shape[1] != width:
        raise PeaceError(f"{path}: rows of {shape[1]} weights, but layout.csv lays out {width}; the two files "
                         f"belong to different zoos")
    return _Matrix(path, offset, shape, dtype)


def _metrics(path: Path, n: int) -> pd.DataFrame:
    """metrics.csv.gz (or metrics.csv), one row per matrix row; without one, rows of nothing."""
    gz, plain = path / "metrics.csv.gz", path / "metrics.csv"
    if not gz.is_file() and not plain.is_file():
        return pd.DataFrame(index=range(n))
    source = gz if gz.is_file() else plain
    try:
        with (gzip.open(gz) if gz.is_file() else plain.open("rb")) as f:
            data = f.read(MAX_METRICS_BYTES + 1)  # a small file may decompress to anything: read no more than this
        table = None if len(data) > MAX_METRICS_BYTES else pd.read_csv(io.BytesIO(data), low_memory=False)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise PeaceError(f"{source}: not a readable metrics table ({str(e)[:80]})") from None
    if table is None:
        raise PeaceError(f"{source}: over {MAX_METRICS_BYTES // 2**20} MiB of text; the largest published metrics "
                         f"table is about 100 MiB")
    if len(table) != n:
        raise PeaceError(f"{path}: metrics has {len(table):,} rows but weights.npy {n:,}; they must describe the same "
                         f"checkpoints, row by row")
    if "step" in table and not pd.api.types.is_integer_dtype(table["step"]):
        raise PeaceError(f"{path}: metrics' 'step' column must hold integers (the epoch of each checkpoint)")
    return table


def _selected(metrics: pd.DataFrame, last_only: bool, runs: int | None) -> tuple[list[int], list[str]]:
    """The matrix rows to read: the first ``runs`` runs (by first appearance), their last checkpoints only."""
    run = metrics["modeldir"].astype(str) if "modeldir" in metrics else pd.Series(metrics.index.astype(str))
    order = list(dict.fromkeys(run))
    keep = set(order[:runs] if runs else order)
    rows = metrics.index[run.isin(keep)]
    if last_only and "step" in metrics:
        rows = metrics.loc[rows].sort_values("step", kind="stable").groupby(run.loc[rows], sort=False).tail(1).index
    if "step" in metrics:
        twice = pd.DataFrame({"run": run.loc[rows], "step": metrics.loc[rows, "step"]}).duplicated(keep=False)
        if twice.any():
            first = twice[twice].index[:2].tolist()
            raise PeaceError(f"metrics rows {first[0]} and {first[1]} are both run {run[first[0]][:80]!r} at step "
                             f"{metrics['step'][first[0]]}; each checkpoint appears once (remove the duplicate rows "
                             f"from weights.npy and metrics alike)")
    notes = [f"{len(keep):,} of {len(order):,} runs"] if runs and runs < len(order) else []
    return sorted(int(r) for r in rows), notes


def _torch_tensors(block: np.ndarray, layers: list) -> dict[str, torch.Tensor]:
    """Each layer's kernel and bias for every row of ``block`` under PEACE's names, in torch's layout."""
    out, i = {}, 0
    for name, start, stop, shape in layers:
        t = block[:, start:stop].reshape(len(block), *shape)
        if name.endswith("kernel:0"):
            if len(shape) not in (2, 4):
                raise PeaceError(f"layout.csv: {name!r} has shape {shape}; PEACE reads 2-D dense and 4-D conv kernels")
            t = t.transpose(0, 2, 1) if len(shape) == 2 else t.transpose(0, 4, 3, 1, 2)
            out[f"layers.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(t))
            i += 1
        else:
            if i == 0 or f"layers.{i - 1}.bias" in out:
                raise PeaceError(f"layout.csv: {name!r} follows no kernel; each bias comes after its layer's kernel")
            out[f"layers.{i - 1}.bias"] = torch.from_numpy(np.ascontiguousarray(t))
    return out


def _architecture(layers: list, row: dict, config: dict, source: str) -> dict:
    """The ``ArchSpec`` arguments of a matrix row: the kernels' shapes, its metrics' activation, dataset and stride."""
    kernels = [shape for name, _, _, shape in layers if name.endswith("kernel:0")]
    convs = [k for k in kernels if len(k) == 4]
    if kernels[:len(convs)] != convs or any(k[0] != k[1] for k in convs):
        raise PeaceError(f"{source}: a conv kernel after a dense one, or not square; the zoo's networks are square "
                         f"convs, then dense layers")
    channels = convs[0][2] if convs else None
    side = DATASET_SIDE.get(str(row.get("config.dataset", "")))
    shape = config.get("input_shape") or ([channels, side, side] if side and channels else None)
    if shape is None and side and not convs and kernels[0][0] == side * side:
        shape = [1, side, side]  # Keras flattens (height, width, channels): one channel is torch's order too
    if shape is None:
        raise PeaceError(f"{source}: the input shape is not known for dataset {str(row.get('config.dataset', '?'))[:40]!r}"
                         f" (known: {', '.join(DATASET_SIDE)}); pass it, e.g. --input-shape 1,32,32")
    act = str(row.get("config.activation", "relu")).lower()
    if act not in ACTIVATION and "activation" not in config:
        raise PeaceError(f"{source}: activation {act[:30]!r} is not one PEACE models ({', '.join(ACTIVATION)}); these "
                         f"models cannot be read")
    out = {"input_shape": list(shape), "n_classes": kernels[-1][-1], "activation": ACTIVATION.get(act, "relu")}
    dense = [k[1] for k in kernels[len(convs):-1]]
    if not convs:
        if len(shape) == 3 and shape[0] > 1:
            raise PeaceError(f"{source}: a dense network on {shape[0]}-channel images: Keras flattens them channels "
                             f"last, which PEACE does not read (the zoo's images are grayscale: 1 channel)")
        return {**out, "family": "mlp", "hidden": dense}
    if kernels[len(convs)][0] != convs[-1][3]:
        raise PeaceError(f"{source}: the first dense layer reads {kernels[len(convs)][0]} inputs, not the last conv's "
                         f"{convs[-1][3]} channels after a global average pool (the zoo's 'cnn' networks)")
    stride = int(row.get("config.cnn_stride", 2))
    return {**out, "family": "cnn2d", "hidden": [k[3] for k in convs], "fc_hidden": dense,
            "kernels": [k[0] for k in convs], "pool": "none", "padding": "valid", "strides": [stride] * len(convs),
            "global_pool": "avg"}


def _plain(v: object) -> object:
    """A metrics cell as a manifest value (numpy scalars as Python ones), None where missing or not finite."""
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    return str(v) if isinstance(v, str) else None
