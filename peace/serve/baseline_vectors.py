"""What the explorer compares PEACE's neighbours with, computed once per embedding set.

``peace embed`` reads the set's models shard by shard and writes them beside the embeddings
(``index.BASELINES``): s(W) vectors, raw-weight vectors (when the set is small enough to hold them) and each
model's predicted class on the shared probe inputs of its io-space. Function-space similarity is
then the share of equal predictions (the cosine of ``FunctionSpace`` fingerprints, exactly), and
the explorer's Neighbours page needs no weights at all. Reading needs numpy alone: what computing the
arrays needs (torch, scikit-learn: 1.5 s to import) is imported where they are computed, so that a link to
Neighbours opened on a cold explorer server does not wait for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from peace.core.errors import PeaceError

if TYPE_CHECKING:
    from peace.evaluate.baselines import WeightStats
    from peace.zoo.store import Zoo

__all__ = ["MAX_RAW", "METHODS", "BaselineVectors", "compute"]

MAX_RAW = 64_000_000  # raw-weight values stored at most (models x longest model); bigger sets skip raw neighbours
METHODS = ("function", "stats", "raw")
SHARD = 1024


def compute(zoo: Zoo, ids: list[str], progress: bool = False) -> dict[str, np.ndarray]:
    """The arrays of ``baselines.npz`` for the zoo models ``ids`` (row i = ``ids[i]``)."""
    from sklearn.preprocessing import StandardScaler
    from tqdm import tqdm

    from peace.core.cluster import chunks
    from peace.evaluate.baselines import Models, RawWeights, weight_stats
    from peace.evaluate.metrics import normalize_rows
    from peace.nets.probes import N_PROBES, io_space, responses

    rows = zoo.manifest.loc[ids]
    specs = [zoo.spec(m) for m in ids]
    spaces = sorted({io_space(s) for s in specs})
    depth = max(s.depth for s in specs)  # WeightStats' layer slots, as its fit would set them
    raw = RawWeights()
    raw.length_ = int(rows["n_params"].max())
    keep_raw = len(ids) * raw.length_ <= MAX_RAW
    out: dict[str, list] = {"stats": [], "raw": [], "predictions": []}
    for part in tqdm(chunks(range(len(ids)), SHARD), desc="baseline vectors", disable=not progress, leave=False):
        m = Models.from_zoo(zoo, [ids[i] for i in part])
        out["stats"].append(np.stack([weight_stats(s, p, depth) for s, p in zip(m.specs, m.params)]))
        if keep_raw:
            out["raw"].append(normalize_rows(raw.transform(m)).astype(np.float32))
        out["predictions"] += [r.argmax(-1).numpy().astype(np.int16) for r in responses(m.specs, m.params, N_PROBES)]
    stats = np.concatenate(out["stats"])  # standardized on every model, as WeightStats().fit on the set does
    scaler = StandardScaler().fit(stats)
    arrays = {"stats": normalize_rows(scaler.transform(stats)).astype(np.float32),
              "predictions": np.stack(out["predictions"]),
              "stats_depth": np.array(depth), "stats_mean": scaler.mean_, "stats_scale": scaler.scale_,
              "space": np.array([spaces.index(io_space(s)) for s in specs], np.int32),
              "spaces": np.array(spaces), "model_ids": np.array(ids)}
    if keep_raw:
        arrays["raw"] = np.concatenate(out["raw"])
    return arrays


class BaselineVectors:
    """The arrays of ``baselines.npz``, and exact nearest neighbours under each method."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.methods = [m for m in METHODS if m == "function" or m in arrays]

    @classmethod
    def read(cls, path: Path, model_ids: list[str]) -> BaselineVectors:
        """Read and check that its rows are the set's models (it was written with them)."""
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if list(arrays.get("model_ids", [])) != list(model_ids):
            raise PeaceError(f"{path} does not list the embedding set's models; re-run `peace embed`")
        return cls(arrays)

    def weight_stats(self) -> WeightStats:
        """The s(W) baseline as fitted for these vectors (to place other models among them)."""
        from sklearn.preprocessing import StandardScaler

        from peace.evaluate.baselines import WeightStats

        a, ws, scaler = self.arrays, WeightStats(), StandardScaler()
        scaler.mean_, scaler.scale_, scaler.var_ = a["stats_mean"], a["stats_scale"], a["stats_scale"] ** 2
        scaler.n_features_in_, scaler.n_samples_seen_ = len(a["stats_mean"]), len(a["stats"])
        ws.depth_, ws.scaler_ = int(a["stats_depth"]), scaler
        return ws

    def scores(self, method: str, i: int) -> np.ndarray:
        """Similarity of every model to model ``i``: cosine (s(W), raw), or the share of probe inputs
        on which both predict the same class (function; 0 between io-spaces, which share no inputs)."""
        if method not in self.methods:
            raise PeaceError(f"unknown or unavailable method {method!r}; this set has {', '.join(self.methods)}")
        if method == "function":
            a = self.arrays
            same = a["space"] == a["space"][i]
            return np.where(same, (a["predictions"] == a["predictions"][i]).mean(1), 0.0)
        v = self.arrays[method]
        return v @ v[i]

    def neighbours(self, method: str, i: int, k: int, table: pd.DataFrame) -> pd.DataFrame:
        """The ``k`` most similar other models: their rows of ``table`` with ``cosine``."""
        sims = self.scores(method, i).astype(np.float64)
        sims[i] = -np.inf
        top = np.argsort(-sims, kind="stable")[:min(k, len(sims) - 1)]  # never the model itself
        return table.iloc[top].assign(cosine=sims[top]).reset_index(drop=True)

    def agreement(self, i: int, others: list[int]) -> list[float]:
        """Share of shared probe inputs on which each other model predicts what model ``i`` does (NaN
        where their io-spaces differ)."""
        a = self.arrays
        return [float((a["predictions"][j] == a["predictions"][i]).mean()) if a["space"][j] == a["space"][i]
                else float("nan") for j in others]
