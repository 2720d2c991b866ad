"""Evaluation metrics on embeddings (scikit-learn where it has them)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score


def cosine_similarity_matrix(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def retrieval_map(emb: np.ndarray, labels: np.ndarray) -> float:
    """Mean average precision of cosine retrieval, relevance = same label, each model querying all others.

    Queries without any relevant model are skipped; NaN when there is no valid query.
    """
    labels = np.asarray(labels)
    sim = cosine_similarity_matrix(emb)
    aps = []
    for i in range(len(labels)):
        rel = np.delete(labels == labels[i], i)
        if rel.any():
            aps.append(average_precision_score(rel, np.delete(sim[i], i)))
    return float(np.mean(aps)) if aps else float("nan")
