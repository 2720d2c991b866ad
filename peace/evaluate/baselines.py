"""What PEACE is measured against, behind one scikit-learn-style interface.

Every baseline is ``fit`` on the training split's models and then ``transform``s any models into
vectors compared by cosine similarity:

- ``MetadataSearch``: TF-IDF over a model card written from metadata, without the label under
  evaluation (the way people search model hubs today);
- ``RawWeights``: flattened weights, zero-padded;
- ``WeightStats``: s(W) of Unterthiner et al. (2020), per-layer mean, variance and quantiles;
- ``WeightPCA``: PCA of the flattened weights;
- ``FunctionSpace``: the model's responses to shared random probe inputs (``peace.nets.probes``), one
  block per io-space: training-free, exactly invariant to every weight-space symmetry, and the
  ceiling for same-task retrieval among models that share an input space;
- the trained control, a non-equivariant MLP on flattened weights (``encoder.kind: mlp``), lives in
  ``peace.learn.flat_encoder``; ``evaluate`` compares it through ``--mlp-run``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets.architectures import ArchSpec
from peace.nets.probes import N_PROBES, PROBE_SEED, fingerprint, io_space, responses

__all__ = [
    "CARD_COLUMNS", "QUANTILES", "Baseline", "FunctionSpace", "MetadataSearch", "Models", "RawWeights", "WeightPCA",
    "WeightStats", "flatten_weights", "space_blocks", "weight_baselines", "weight_stats"
]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
CARD_COLUMNS = ("family", "arch", "activation", "bias", "depth", "width", "n_params", "init", "optimizer", "lr",
                "weight_decay", "dropout", "batch_size", "epochs", "epoch")


@dataclass
class Models:
    """Models to fit on or transform: manifest rows with their architectures and weights, aligned."""

    rows: pd.DataFrame
    specs: list[ArchSpec]
    params: list[dict[str, Tensor]]

    def __post_init__(self) -> None:
        if not (len(self.rows) == len(self.specs) == len(self.params)):
            raise PeaceError("rows, specs and params must have the same length")

    @classmethod
    def from_zoo(cls, zoo, model_ids: Sequence[str]) -> Models:
        ids = list(model_ids)
        return cls(zoo.manifest.loc[ids].reset_index(drop=True), [zoo.spec(m) for m in ids], zoo.load_many(ids))

    def __len__(self) -> int:
        return len(self.specs)


def flatten_weights(spec: ArchSpec, params: dict[str, Tensor], length: int) -> Tensor:
    """All parameters in layer order (weight, then bias), zero-padded or truncated to ``length``."""
    flat = torch.cat([params[n].reshape(-1).float() for n in spec.param_shapes()])
    return F.pad(flat, (0, max(0, length - flat.numel())))[:length]


def weight_stats(spec: ArchSpec, params: dict[str, Tensor], max_depth: int) -> np.ndarray:
    """s(W): for each of ``max_depth`` layer slots, mean, variance and quantiles of its weights and
    of its biases (zeros where a network has no such layer or bias)."""
    k = 2 + len(QUANTILES)
    out = np.zeros((max_depth, 2, k), dtype=np.float64)
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    for i, layer in enumerate(spec.layers[:max_depth]):
        for j, name in enumerate((layer.weight_name, layer.bias_name if layer.bias else None)):
            if name is None:
                continue
            v = params[name].reshape(-1).double()
            out[i, j] = torch.cat([v.mean().reshape(1), v.var(unbiased=False).reshape(1), torch.quantile(v, q)]).numpy()
    return out.reshape(-1)


class Baseline:
    """fit(models) -> self; transform(models) -> (n, d) float array compared by cosine."""

    name = "baseline"

    def fit(self, models: Models) -> Baseline:
        return self

    def transform(self, models: Models) -> np.ndarray:
        raise NotImplementedError

    def fit_transform(self, models: Models) -> np.ndarray:
        return self.fit(models).transform(models)


class MetadataSearch(Baseline):
    """TF-IDF over model cards built from ``columns`` (never the task or dataset being evaluated)."""

    name = "metadata"

    def __init__(self, columns: Sequence[str] = CARD_COLUMNS):
        self.columns = [c for c in columns if c not in ("task", "dataset", "group", "run_id", "lineage_id")]
        from sklearn.feature_extraction.text import TfidfVectorizer  # here: scikit-learn costs the CLI 1.5 s to import

        self.vectorizer = TfidfVectorizer(token_pattern=r"[^\s]+")

    def cards(self, rows: pd.DataFrame) -> list[str]:
        cols = [c for c in self.columns if c in rows.columns]
        return [" ".join(f"{c}={v}" for c, v in zip(cols, vals)) for vals in rows[cols].astype(str).to_numpy()]

    def fit(self, models: Models) -> MetadataSearch:
        self.vectorizer.fit(self.cards(models.rows))
        return self

    def transform(self, models: Models) -> np.ndarray:
        return self.vectorizer.transform(self.cards(models.rows)).toarray()


class RawWeights(Baseline):
    """Flattened weights, zero-padded to the longest training model."""

    name = "raw"

    def fit(self, models: Models) -> RawWeights:
        self.length_ = max(s.n_params for s in models.specs)
        return self

    def transform(self, models: Models) -> np.ndarray:
        return torch.stack([flatten_weights(s, p, self.length_) for s, p in zip(models.specs, models.params)]).numpy()


class WeightStats(Baseline):
    """s(W) per layer slot, standardized on the training models."""

    name = "stats"

    def fit(self, models: Models) -> WeightStats:
        self.depth_ = max(s.depth for s in models.specs)
        from sklearn.preprocessing import StandardScaler

        self.scaler_ = StandardScaler().fit(self._raw(models))
        return self

    def _raw(self, models: Models) -> np.ndarray:
        return np.stack([weight_stats(s, p, self.depth_) for s, p in zip(models.specs, models.params)])

    def transform(self, models: Models) -> np.ndarray:
        return self.scaler_.transform(self._raw(models))


class WeightPCA(Baseline):
    """PCA of flattened weights (as many components as the data allow, up to ``n_components``)."""

    name = "pca"

    def __init__(self, n_components: int = 64):
        self.n_components = n_components

    def fit(self, models: Models) -> WeightPCA:
        from sklearn.decomposition import PCA

        self.raw_ = RawWeights().fit(models)
        X = self.raw_.transform(models)
        self.pca_ = PCA(n_components=min(self.n_components, *X.shape), random_state=0).fit(X)
        return self

    def transform(self, models: Models) -> np.ndarray:
        return self.pca_.transform(self.raw_.transform(models))


def space_blocks(spaces: Iterable[str], n_probes: int) -> tuple[dict[str, tuple[int, int]], int]:
    """Where each io-space's fingerprints (``n_probes`` x its classes) sit in one vector, spaces in sorted
    order, and the vector's width: models of different spaces share no inputs, so their blocks do not
    overlap and their cosine is 0."""
    blocks, start = {}, 0
    for sp in sorted(set(spaces)):
        width = n_probes * int(sp.split("->")[1])
        blocks[sp], start = (start, start + width), start + width
    return blocks, start


class FunctionSpace(Baseline):
    """Fingerprints of the responses to shared Gaussian probes, each io-space in its own block of
    the vector (models of different spaces are orthogonal: they share no inputs).

    Nothing is learned: ``fit`` only fixes the block layout, from the io-spaces of the models it is
    given and of ``spaces`` (pass every space you will transform; an unknown one is refused). ``inputs``
    (io-space -> (n_probes, features)) replaces the Gaussian probes of the spaces it names, e.g. by a
    run's own probes (``Embedder.probe_bank``), read under the name ``"function (run's probes)"``.
    """

    name = "function"

    def __init__(self, n_probes: int = N_PROBES, seed: int = PROBE_SEED, spaces: Sequence[str] = (),
                 inputs: Mapping[str, Tensor] | None = None):
        self.n_probes, self.seed, self.spaces, self.inputs = n_probes, seed, list(spaces), dict(inputs or {})
        if self.inputs:
            self.name = "function (run's probes)"

    def fit(self, models: Models) -> FunctionSpace:
        self.offsets_, self.width_ = space_blocks({*self.spaces, *(io_space(s) for s in models.specs)}, self.n_probes)
        return self

    def transform(self, models: Models) -> np.ndarray:
        out = np.zeros((len(models), self.width_), np.float32)
        for i, (spec, r) in enumerate(zip(models.specs, responses(models.specs, models.params, self.n_probes,
                                                                  self.seed, inputs=self.inputs))):
            space = io_space(spec)
            if space not in self.offsets_:
                raise PeaceError(f"io-space {space} was not among those FunctionSpace was fit with "
                                 f"({', '.join(self.offsets_)}); pass spaces=[...] listing every space to compare")
            a, b = self.offsets_[space]
            out[i, a:b] = fingerprint(r).numpy()
        return out


def weight_baselines() -> list[Baseline]:
    """The untrained weight-space baselines, fresh."""
    return [MetadataSearch(), RawWeights(), WeightStats(), WeightPCA()]
