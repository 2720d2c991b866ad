"""Nearest-neighbour search over embeddings with Annoy, plus a sidecar that detects stale indices.

An embedding set is a directory::

    embeddings.parquet   one row per model: model_id, embedding, umap_2d_x/y, umap_3d_x/y/z, metadata
    index.ann            Annoy index (angular), item i = row i of embeddings.parquet
    baselines.npz        s(W) / raw-weight vectors and probe predictions the explorer compares with
    index.json           dimension, metric, trees, model ids in row order, the checksums of
                         the files above, and the run, encoder and zoo it was built
                         from (paths relative to the set's own directory, so it opens from anywhere)
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from annoy import AnnoyIndex

from peace.core.atomic import LOCK_NAME, atomic_path, is_temporary, locked, sha256_file, staged_dir, write_json
from peace.core.cluster import local_cores
from peace.core.errors import PeaceError

__all__ = ["METRIC", "EmbeddingSet", "build_annoy", "check_output_dir", "read_embeddings", "write_embedding_set"]

METRIC = "angular"
PARALLEL_BUILD = 100_000  # items from which an index is built on every core
SEARCH_EFFORT = 6  # nodes a query inspects per tree and result, in units of Annoy's default (trees * k)
WEAK_MARGIN = 0.1  # cosine below the set's typical nearest neighbour at which a query's nearest is a weak match
BASELINES = "baselines.npz"  # optional: what the explorer compares PEACE with (peace.serve.baseline_vectors)


def build_annoy(emb: np.ndarray, path: str | Path, trees: int = 50, seed: int = 0, n_jobs: int | None = None) -> None:
    """Write an angular Annoy index of ``emb`` rows to ``path`` atomically. ``n_jobs`` build threads; by
    default one below ``PARALLEL_BUILD`` items (the file is then the same on every machine) and every
    core above it, where the build takes minutes (the trees then depend on the number of threads)."""
    if emb.ndim != 2 or len(emb) == 0:
        raise PeaceError(f"need a non-empty (n, d) embedding matrix, got shape {emb.shape}")
    if n_jobs is None:
        n_jobs = 1 if len(emb) < PARALLEL_BUILD else local_cores()
    index = AnnoyIndex(emb.shape[1], METRIC)
    index.set_seed(seed)
    for i, v in enumerate(np.asarray(emb, dtype=np.float32)):
        index.add_item(i, v.tolist())  # a list converts faster than a numpy row
    index.build(trees, n_jobs=n_jobs)
    with atomic_path(Path(path)) as tmp:
        index.save(str(tmp))
    index.unload()


class EmbeddingSet:
    """A written embedding set: the table, the Annoy index and its provenance, checked on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        files = [self.path / n for n in ("embeddings.parquet", "index.ann", "index.json")]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise PeaceError(f"{self.path} is not a complete embedding set (missing {', '.join(missing)}); "
                             f"write it with `peace embed --run RUN --out {self.path}`")
        rebuild = f"rerun `peace embed --run RUN --out {self.path}` to rebuild the set"
        try:
            self.info = json.loads((self.path / "index.json").read_text())
        except (ValueError, OSError) as e:
            raise PeaceError(f"{self.path / 'index.json'} is not valid JSON ({e}); {rebuild}") from None
        need = {"dimension": int, "trees": int, "model_ids": list, "embeddings_sha256": str, "index_sha256": str}
        bad = [k for k, t in need.items() if not isinstance(self.info, dict) or not isinstance(self.info.get(k), t)]
        if bad:
            raise PeaceError(f"{self.path / 'index.json'} lacks {bad} (written by an older PEACE, or edited); {rebuild}")
        files = {"embeddings.parquet": "embeddings_sha256", "index.ann": "index_sha256"}
        if "baselines_sha256" in self.info:
            files[BASELINES] = "baselines_sha256"
        for name, key in files.items():
            if not (self.path / name).is_file() or sha256_file(self.path / name) != self.info[key]:
                raise PeaceError(f"{self.path / name} does not match the checksum in index.json (changed, truncated "
                                 f"or from another run); {rebuild}")
        self.dim = int(self.info["dimension"])
        try:
            self.table, self.embeddings = read_embeddings(self.path / "embeddings.parquet", self.dim)
        except PeaceError as e:
            raise PeaceError(f"{e}; {rebuild}") from None
        if list(self.table["model_id"]) != self.info["model_ids"]:
            raise PeaceError(f"rows of {self.path / 'embeddings.parquet'} are not the index's items; {rebuild}")
        self.index = AnnoyIndex(self.dim, METRIC)
        self.index.load(str(self.path / "index.ann"))
        if self.index.get_n_items() != len(self.table):
            raise PeaceError(f"{self.path / 'index.ann'} holds {self.index.get_n_items()} items but the table "
                             f"{len(self.table)}; {rebuild}")
        self.row_of = {m: i for i, m in enumerate(self.table["model_id"])}

    def __len__(self) -> int:
        return len(self.table)

    def source(self, key: str) -> Path:
        """The ``run`` or ``zoo`` the set was built from (stored relative to the set's directory)."""
        return (self.path / self.info[key]).resolve()

    def check_current(self, encoder_sha256: str | None = None, zoo_manifest_sha256: str | None = None) -> None:
        """Refuse an index built from another encoder or zoo than the ones in use."""
        for key, now, what in (("encoder_sha256", encoder_sha256, "encoder"),
                               ("zoo_manifest_sha256", zoo_manifest_sha256, "zoo")):
            if now is not None and self.info.get(key) != now:
                raise PeaceError(f"the embedding set {self.path} was built with another {what} than the one given "
                                 f"(stale index); rerun `peace embed` with this {what}")

    def query(self, vector: np.ndarray, k: int = 10, exclude: str | None = None) -> pd.DataFrame:
        """The ``k`` nearest models to ``vector``: their rows plus ``distance`` (angular) and ``cosine``."""
        n = len(self) - (exclude is not None)
        if k < 1 or k > n:
            raise PeaceError(f"k must be between 1 and {n} (models in the set{' besides the query' if exclude else ''}), "
                             f"got {k}")
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise PeaceError(f"query has dimension {vector.shape[0]} but the index {self.dim}: it was embedded by "
                             f"another encoder")
        # six times Annoy's default search effort: exact on small sets; at 1M clustered models with 50 trees,
        # recall@10 1.000 at 0.5 ms p50 (the sweep of benchmarks/bench_index.py in docs/benchmarks.md)
        search_k = SEARCH_EFFORT * self.info["trees"] * (k + 1)
        items, dist = self.index.get_nns_by_vector(vector.tolist(), k + 1, search_k=search_k, include_distances=True)
        pairs = [(i, d) for i, d in zip(items, dist) if exclude is None or self.table.model_id.iat[i] != exclude][:k]
        rows = self.table.iloc[[i for i, _ in pairs]].copy()
        rows.insert(1, "distance", [d for _, d in pairs])
        rows.insert(2, "cosine", [1 - d * d / 2 for _, d in pairs])
        return rows.reset_index(drop=True)

    @functools.cached_property
    def typical_nearest_cosine(self) -> float:
        """The median cosine between a model of the set and its nearest other model (exact, over a sample of up to
        300 models against the whole set): what a query that resembles the set gets."""
        if len(self) < 2:
            return 1.0
        unit = self.embeddings / np.maximum(np.linalg.norm(self.embeddings, axis=1, keepdims=True), 1e-12)
        rows = np.random.default_rng(0).choice(len(unit), min(300, len(unit)), replace=False)
        cos = unit[rows] @ unit.T
        cos[np.arange(len(rows)), rows] = -np.inf  # not itself
        return float(np.median(cos.max(1)))

    def weak_match(self, cosine: float) -> bool:
        """Whether a query's nearest model, at ``cosine``, is far by the set's own standard: more than
        ``WEAK_MARGIN`` below ``typical_nearest_cosine``."""
        return cosine < self.typical_nearest_cosine - WEAK_MARGIN

    @functools.cached_property
    def io_spaces(self) -> list[str]:
        """The input -> class spaces (``64->10``) of the set's models, from their recorded architectures."""
        from peace.nets.architectures import ArchSpec  # torch: not for the map, which opens without it
        from peace.nets.probes import io_space

        texts = self.table["arch_spec"].dropna().unique() if "arch_spec" in self.table else []
        spaces = {io_space(ArchSpec.from_dict(json.loads(t))) for t in texts}
        return sorted(spaces, key=lambda s: tuple(map(int, s.split("->"))))

    def neighbours(self, model_id: str, k: int = 10) -> pd.DataFrame:
        """The ``k`` nearest other models of a model in the set."""
        if model_id not in self.row_of:
            raise PeaceError(f"model {model_id!r} is not in the embedding set {self.path}")
        return self.query(self.index.get_item_vector(self.row_of[model_id]), k, exclude=model_id)


def check_output_dir(out: Path) -> None:
    """An embedding set may not be written over a file, into a zoo, or into a training run."""
    if out.exists() and not out.is_dir():
        raise PeaceError(f"--out {out} is a file; name a directory for the embedding set")
    for d in (out, *out.resolve().parents):
        if (d / "zoo.json").exists() or (d / "recipe.json").exists():
            raise PeaceError(f"--out {out} is inside the zoo {d}; write embedding sets to their own directory "
                             f"(e.g. artifacts/embeddings/NAME)")
    from peace.learn.run import RunDir

    if RunDir.looks_like(out):
        raise PeaceError(f"--out {out} is a training run; write embedding sets to their own directory")
    foreign = sorted(p.name for p in out.iterdir() if not _set_file(p.name)) if out.is_dir() else []
    if foreign:
        raise PeaceError(f"--out {out} holds files that are not part of an embedding set ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); a rebuilt set replaces the whole directory, so "
                         f"name a new or empty directory, or move those files away")


SET_FILES = {"embeddings.parquet", "index.ann", "index.json", BASELINES, LOCK_NAME, ".pipeline-step.json"}


def _set_file(name: str) -> bool:
    """A file an embedding set directory may hold: its own, or a temporary file of an interrupted write."""
    return name in SET_FILES or is_temporary(name)


def read_embeddings(path: Path, dim: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The table of ``embeddings.parquet`` without its ``embedding`` column, and that column as one
    (n, dim) float32 matrix, read straight from Arrow (no Python object per row: a million rows in seconds)."""
    t = pq.read_table(path)
    if "embedding" not in t.column_names or "model_id" not in t.column_names or t.num_rows == 0:
        raise PeaceError(f"{path} has no rows, or no model_id / embedding column")
    col = t.column("embedding").combine_chunks()
    values = col.flatten().to_numpy(zero_copy_only=False)
    if values.size != t.num_rows * dim:
        raise PeaceError(f"index.json says dimension {dim}, but {path} does not hold {t.num_rows} vectors of that size")
    return t.drop(["embedding"]).to_pandas(), values.astype(np.float32, copy=False).reshape(t.num_rows, dim)


def write_embedding_set(out: str | Path, table: pd.DataFrame, embeddings: np.ndarray, trees: int,
                        provenance: dict, baselines: dict[str, np.ndarray] | None = None) -> EmbeddingSet:
    """Write the table with its ``embeddings`` (row i, as a fixed-size list column) + index + sidecar into a
    new directory beside ``out`` that replaces ``out`` only once complete (a failed rebuild leaves the old set
    as it was), holding the set's writer lock. ``provenance`` paths (``run``, ``zoo``) are stored relative
    to ``out``."""
    out = Path(out)
    check_output_dir(out)
    target = out.resolve()
    provenance = {k: os.path.relpath(Path(v).resolve(), target) if k in ("run", "zoo") else v
                  for k, v in provenance.items()}
    with locked(target, "embedding set", beside=True), staged_dir(target) as new:
        _write_set_files(new, table, embeddings, trees, provenance, baselines)
    return EmbeddingSet(out)


def _write_set_files(out: Path, table: pd.DataFrame, embeddings: np.ndarray, trees: int, provenance: dict,
                     baselines: dict[str, np.ndarray] | None) -> None:
    """The files of an embedding set, into the empty directory ``out`` (the sidecar last)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(table):
        raise PeaceError(f"need one embedding per row: {len(table)} rows, embeddings of shape {emb.shape}")
    arrow = pa.Table.from_pandas(table.drop(columns=["embedding"], errors="ignore"), preserve_index=False)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    arrow = arrow.add_column(min(1, arrow.num_columns), "embedding", vectors)
    with atomic_path(out / "embeddings.parquet") as tmp:
        pq.write_table(arrow, tmp)
    build_annoy(emb, out / "index.ann", trees)
    if baselines is not None:
        with atomic_path(out / BASELINES) as tmp, open(tmp, "wb") as f:
            np.savez(f, **baselines)
        provenance["baselines_sha256"] = sha256_file(out / BASELINES)
    write_json(out / "index.json", {"dimension": int(emb.shape[1]), "metric": METRIC, "trees": trees,
                                    "n_items": len(table), "model_ids": list(table["model_id"]),
                                    "embeddings_sha256": sha256_file(out / "embeddings.parquet"),
                                    "index_sha256": sha256_file(out / "index.ann"), **provenance})
