"""What the Streamlit explorer shows, computed here so tests can see it (the app only lays it out).

An ``Explorer`` opens one embedding set with its zoo and encoder run: filters for the map, PEACE
neighbours next to the ones s(W), raw weights and function space would return, prediction agreement, interpolation
in embedding and weight space, symmetry-lab comparisons, and queries for uploaded model files.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .alignment import interpolate
from .baselines import FunctionSpace, Models, RawWeights, WeightStats
from .errors import PeaceError
from .index import EmbeddingSet
from .metrics import normalize_rows
from .probes import agreement, io_space, responses
from .run import RunDir, load_encoder
from .symmetry import RandomSymmetry
from .teaching import interpolation_demo, symmetry_demo
from .zoo import Zoo

__all__ = ["Explorer", "filter_table", "find_ablation_summaries", "find_embedding_sets"]


def find_embedding_sets(root: str | Path) -> list[Path]:
    """Embedding-set directories under ``root/embeddings`` (complete or not: opening one says what is wrong)."""
    base = Path(root) / "embeddings"
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "embeddings.parquet").exists()) if base.is_dir() else []


def find_ablation_summaries(root: str | Path) -> list[Path]:
    base = Path(root) / "ablations"
    return sorted(base.glob("*/summary.parquet")) if base.is_dir() else []


def filter_table(table: pd.DataFrame, tasks=None, archs=None, activations=None, acc=None, epochs=None) -> pd.DataFrame:
    """Rows matching every given filter (None or empty: no filter)."""
    keep = np.ones(len(table), dtype=bool)
    for col, values in (("task", tasks), ("arch", archs), ("activation", activations)):
        if values:
            keep &= table[col].isin(list(values)).to_numpy()
    for col, rng in (("test_acc", acc), ("epoch", epochs)):
        if rng is not None:
            keep &= table[col].between(*rng).to_numpy()
    return table[keep]


@dataclass
class Explorer:
    """One embedding set, its zoo and its encoder run, opened and checked together."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.es = EmbeddingSet(self.path)
        self.zoo = Zoo(self.es.source("zoo"))
        self.run = self.es.source("run")
        sha = RunDir(self.run).encoder_sha256() if RunDir(self.run).has_encoder() else None
        self.es.check_current(encoder_sha256=sha, zoo_manifest_sha256=self.zoo.info["manifest_sha256"])
        self.table = self.es.table
        self.embeddings = self.es.embeddings

    @cached_property
    def encoder(self):
        return load_encoder(self.run)

    def models(self, ids) -> Models:
        return Models.from_zoo(self.zoo, list(ids))

    @cached_property
    def _all(self) -> Models:
        return self.models(self.table["model_id"])

    @cached_property
    def stats(self) -> WeightStats:
        return WeightStats().fit(self._all)

    @cached_property
    def baseline_vectors(self) -> dict[str, np.ndarray]:
        """Unit-norm s(W), raw-weight and function-space vectors of every model of the set (fit on the set)."""
        out = {}
        for b in (self.stats, RawWeights().fit(self._all), FunctionSpace().fit(self._all)):
            out[b.name] = normalize_rows(b.transform(self._all))
        return out

    def neighbours(self, model_id: str, k: int = 10) -> pd.DataFrame:
        """PEACE's k nearest models (Annoy) with distance, cosine and metadata."""
        return self.es.neighbours(model_id, k)

    def baseline_neighbours(self, model_id: str, method: str, k: int = 10) -> pd.DataFrame:
        """The k nearest models by cosine of s(W) (``stats``), raw weights (``raw``) or predictions on
        shared probe inputs (``function``), exact search."""
        if method not in self.baseline_vectors:
            raise PeaceError(f"unknown method {method!r}; choose one of {', '.join(self.baseline_vectors)}")
        v = self.baseline_vectors[method]
        i = self.es.row_of[model_id]
        sims = v @ v[i]
        sims[i] = -np.inf
        top = np.argsort(-sims, kind="stable")[:k]
        return self.table.iloc[top].assign(cosine=sims[top]).reset_index(drop=True)

    def agreement(self, model_id: str, others: list[str]) -> list[float]:
        """Share of shared probe inputs on which each other model predicts what the query does
        (NaN where they do not share the query's io-space)."""
        space, ref = io_space(self.zoo.spec(model_id)), self._response(model_id)
        return [agreement(self._response(o), ref) if io_space(self.zoo.spec(o)) == space else float("nan")
                for o in others]

    def _response(self, model_id: str):
        """A model's class probabilities on its io-space's probes (cached: the page reruns often)."""
        cache = self.__dict__.setdefault("_response_cache", {})
        if model_id not in cache:
            cache[model_id] = responses([self.zoo.spec(model_id)], [self._all.params[self.es.row_of[model_id]]])[0]
        return cache[model_id]

    def embedding_path(self, a: str, b: str, steps: int = 9) -> pd.DataFrame:
        """Along the straight line between two embeddings (renormalized), the nearest zoo model at each step."""
        ea, eb = self.embeddings[self.es.row_of[a]], self.embeddings[self.es.row_of[b]]
        rows = []
        for t in np.linspace(0, 1, steps):
            v = (1 - t) * ea + t * eb
            hit = self.es.query(v / max(np.linalg.norm(v), 1e-12), 1).iloc[0]
            rows.append({"t": t, **hit.to_dict()})
        return pd.DataFrame(rows)

    def weight_path(self, a: str, b: str, n_points: int = 11) -> dict:
        """Linear interpolation in weight space between two models of one architecture, without and
        with permutation alignment: loss and accuracy on the task's test split, and where each
        interpolated model lands on the 2-D map (mean position of its 5 nearest zoo models).
        Cached per pair: aligning, evaluating and embedding the path is the app's slowest step."""
        cache = self.__dict__.setdefault("_path_cache", {})
        if (a, b, n_points) not in cache:
            cache[(a, b, n_points)] = self._weight_path(a, b, n_points)
        return cache[(a, b, n_points)]

    def _weight_path(self, a: str, b: str, n_points: int) -> dict:
        paths = interpolation_demo(self.zoo, a, b, n_points)
        spec, pa = self.zoo.spec(a), self.zoo.weights(a)
        for path in paths.values():
            mids = [interpolate(pa, path["end"], t) for t in path["alpha"]]
            emb = self.encoder.embed([spec] * len(mids), mids).numpy()
            path["map_xy"] = np.stack([self.map_position(e) for e in emb])
        return paths

    def map_position(self, vector: np.ndarray, k: int = 5) -> np.ndarray:
        """2-D map coordinates of an embedding that UMAP never saw: the mean of its k nearest models'."""
        hits = self.es.query(vector, k)
        xy = hits[["umap_2d_x", "umap_2d_y"]].dropna()  # big sets: neighbours off the map's sample do not count
        return xy.to_numpy().mean(0) if len(xy) else self.es.query(vector, min(len(self.es), 50 * k))[
            ["umap_2d_x", "umap_2d_y"]].dropna().to_numpy()[:k].mean(0)

    def symmetry_lab(self, model_id: str, permute: bool, scale: bool, flip: bool, seed: int,
                     groups: tuple[int, ...] | None = None) -> dict:
        """A random symmetry transform of a model (of the unit groups ``groups``, default all): output
        change on its test inputs (``teaching.symmetry_demo``), and how far raw weights, s(W) and PEACE
        say it moved (cosine distances)."""
        demo = symmetry_demo(self.zoo, model_id, seed, RandomSymmetry(permute=permute, scale=scale, flip=flip,
                                                                      groups=groups))
        spec, p, q = self.zoo.spec(model_id), demo.before, demo.after
        m = Models(pd.DataFrame({"model_id": [model_id, model_id + "*"]}), [spec, spec], [p, q])
        cos = lambda v: float(1 - normalize_rows(v)[0] @ normalize_rows(v)[1])  # noqa: E731
        return {"transformed": q, "max_output_change": demo.max_output_change,
                "raw": cos(RawWeights().fit(m).transform(m)), "stats": cos(self.stats.transform(m)),
                "peace": cos(self.encoder.embed([spec, spec], [p, q]).numpy())}

    def query_file(self, path: str | Path, config: dict, k: int = 10) -> tuple[object, pd.DataFrame, np.ndarray]:
        """An uploaded model file: (the imported model, its k nearest zoo models, its map position).
        The file is parsed in a resource-limited child process, never in the server's own."""
        from .sandbox import load_model_isolated

        m = load_model_isolated(path, config)
        vector = self.encoder.embed([m.spec], [m.params]).numpy()[0]  # __post_init__ checked it made this set
        hits = self.es.query(vector, k)
        return m, hits, self.map_position(vector)
