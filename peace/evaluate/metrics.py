"""Evaluation metrics on embeddings (scikit-learn / scipy implementations wherever they exist)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    accuracy_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    r2_score,
    silhouette_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from peace.core.errors import PeaceError

__all__ = [
    "clustering_scores", "cosine_similarity_matrix", "functional_similarity", "hard_queries", "invariance_ratio",
    "linear_probe", "normalize_rows", "retrieval_map", "retrieval_scores", "ridge", "within_group_tau"
]


def normalize_rows(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    a = normalize_rows(a)
    return a @ (a if b is None else normalize_rows(b)).T


def retrieval_scores(emb: np.ndarray, labels: np.ndarray, query_mask: np.ndarray | None = None,
                     ks: tuple[int, ...] = (1, 5, 10), other_than: np.ndarray | None = None) -> dict[str, float]:
    """precision@k, recall@k and mAP of leave-one-out cosine retrieval, relevance = equal label.

    Every model (or those in ``query_mask``) queries all the others; with ``other_than`` (one value
    per model, e.g. its architecture) a query ranks only the models whose value differs from its
    own (cross-architecture retrieval). Queries with no relevant model, or nothing but relevant ones (a
    zoo of one task), are skipped: their ranking cannot be wrong; ``n_queries`` says how many counted.
    """
    labels = np.asarray(labels)
    if len(emb) < 2:
        raise PeaceError(f"retrieval needs at least 2 models, got {len(emb)} (is the split empty?)")
    sim = cosine_similarity_matrix(emb)
    queries = np.flatnonzero(np.ones(len(emb), bool) if query_mask is None else query_mask)
    other = None if other_than is None else np.asarray(other_than)
    prec: dict[int, list[float]] = {k: [] for k in ks}
    rec: dict[int, list[float]] = {k: [] for k in ks}
    aps = []
    for i in queries:
        keep = np.ones(len(labels), bool) if other is None else other != other[i]
        keep[i] = False
        s, rel = sim[i][keep], labels[keep] == labels[i]
        if not rel.any() or rel.all():
            continue
        top = np.argsort(-s, kind="stable")
        aps.append(_average_precision(rel[top], s[top]))
        for k in ks:
            hits = rel[top[:k]].sum()
            prec[k].append(hits / min(k, len(s)))
            rec[k].append(hits / rel.sum())
    out: dict[str, float] = {"map": float(np.mean(aps)) if aps else float("nan"), "n_queries": len(aps)}
    for k in ks:
        out[f"precision@{k}"] = float(np.mean(prec[k])) if aps else float("nan")
        out[f"recall@{k}"] = float(np.mean(rec[k])) if aps else float("nan")
    return out


def _average_precision(rel: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's average_precision_score for relevance and scores already sorted by descending
    score (tied scores form one threshold), without its per-call validation: validation on a big
    zoo ranks thousands of queries per epoch."""
    last = np.r_[scores[1:] != scores[:-1], True]  # the last position of each distinct score
    tp = np.cumsum(rel)[last]
    recall = tp / tp[-1]
    precision = tp / (np.flatnonzero(last) + 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def retrieval_map(emb: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out mean average precision, relevance = same label (the training-time validation metric)."""
    return retrieval_scores(emb, labels, ks=(1,))["map"]


def hard_queries(rows: pd.DataFrame) -> np.ndarray:
    """Models whose architecture is also trained on other tasks among ``rows``: metadata cannot tell them apart."""
    tasks_per_arch = rows.groupby("arch")["task"].agg(set)
    return np.array([len(tasks_per_arch[a] - {t}) > 0 for a, t in zip(rows["arch"], rows["task"])])


def clustering_scores(emb: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """k-means (k = number of labels) on unit-norm embeddings: NMI with the labels; silhouette (cosine) and
    Davies-Bouldin of the label partition itself."""
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    if k < 2 or len(emb) <= k:
        raise PeaceError(f"clustering needs at least 2 labels and more models than labels; got {k} and {len(emb)}")
    x = normalize_rows(emb)
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(labels, pred)),
            "silhouette": float(silhouette_score(x, labels, metric="cosine")),
            "davies_bouldin": float(davies_bouldin_score(x, labels))}


def ridge(X_train: np.ndarray, y_train: np.ndarray):
    """The regression probe: ridge with cross-validated alpha on standardized features, fit."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15))).fit(X_train, y_train)


def linear_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                 categorical: bool = False, subsets: dict[str, np.ndarray] | None = None,
                 rank_within: np.ndarray | None = None) -> dict[str, float]:
    """Ridge with cross-validated alpha (R^2, Kendall tau) or logistic regression (accuracy), on standardized X.
    ``subsets`` (name -> boolean mask over the test rows) adds ``r2_<name>`` for regression probes;
    ``rank_within`` (a group per test row, None for rows left out) adds ``within_group_tau``
    (:func:`within_group_tau` of the predictions: ranking inside groups, model selection)."""
    if categorical:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(X_train, y_train)
        return {"accuracy": float(accuracy_score(y_test, model.predict(X_test)))}
    pred = ridge(X_train, y_train).predict(X_test)
    out = {"r2": float(r2_score(y_test, pred)), "kendall_tau": float(kendalltau(y_test, pred).statistic)}
    for name, mask in (subsets or {}).items():
        mask = np.asarray(mask, bool)
        out[f"r2_{name}"] = float(r2_score(y_test[mask], pred[mask])) if mask.sum() > 1 else float("nan")
    if rank_within is not None:
        keep = np.array([g is not None for g in rank_within])
        out["within_group_tau"] = within_group_tau(np.asarray(y_test)[keep], pred[keep], np.asarray(rank_within)[keep])
    return out


def within_group_tau(y: Sequence[float], pred: Sequence[float], groups: Sequence, min_size: int = 3) -> float:
    """Mean over groups (each of ``min_size`` or more models, weighted equally) of the Kendall tau between
    ``pred`` and ``y`` inside the group: how well ``pred`` orders each task's models. NaN without such a group
    (and a group whose predictions or targets are all equal counts as tau 0: it orders nothing)."""
    y, pred, groups = np.asarray(y, float), np.asarray(pred, float), np.asarray(groups)
    taus = []
    for g in dict.fromkeys(groups.tolist()):
        idx = groups == g
        if idx.sum() >= min_size:
            tau = kendalltau(y[idx], pred[idx]).statistic
            taus.append(0.0 if np.isnan(tau) else float(tau))
    return float(np.mean(taus)) if taus else float("nan")


def functional_similarity(emb: np.ndarray, predictions: np.ndarray) -> float:
    """Spearman correlation between pairwise embedding cosine distance and prediction disagreement
    (models x probe samples class predictions, all on one shared probe set)."""
    if len(emb) < 3:
        return float("nan")
    dist = 1 - cosine_similarity_matrix(emb)
    dis = (predictions[:, None, :] != predictions[None, :, :]).mean(-1)
    iu = np.triu_indices(len(emb), 1)
    return float(spearmanr(dist[iu], dis[iu]).statistic)


def invariance_ratio(original: np.ndarray, transformed: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    """Cosine distance of each model to its symmetry transform, against its distance to the nearest
    other model of the gallery (a ratio far below 1: symmetry transforms are invisible)."""
    to_self = 1 - np.sum(normalize_rows(original) * normalize_rows(transformed), 1)
    sim = cosine_similarity_matrix(original, gallery)
    sim[sim > 1 - 1e-9] = -np.inf  # the model itself
    nearest = 1 - sim.max(1)
    return {"distance_to_transform": float(np.mean(to_self)), "distance_to_nearest_other": float(np.mean(nearest)),
            "ratio": float(np.mean(to_self) / max(np.mean(nearest), 1e-12))}
