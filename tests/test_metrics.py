"""Metrics agree with hand computations and with what they claim to measure."""
import numpy as np
import pandas as pd
import pytest

from peace.core.errors import PeaceError
from peace.evaluate.metrics import (
    clustering_scores,
    functional_similarity,
    hard_queries,
    invariance_ratio,
    linear_probe,
    retrieval_scores,
)


def test_retrieval_scores_by_hand():
    # 1-D-ish embeddings: a, a' close; b, b' close; a and b far
    emb = np.array([[1, 0.0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    labels = np.array(["a", "a", "b", "b"])
    r = retrieval_scores(emb, labels, ks=(1, 3))
    assert r["map"] == 1.0 and r["precision@1"] == 1.0 and r["recall@1"] == 1.0
    assert r["precision@3"] == pytest.approx(1 / 3) and r["n_queries"] == 4
    swapped = retrieval_scores(emb, np.array(["a", "b", "a", "b"]), ks=(1,))
    # the relevant model ranks 3rd, 2nd, 3rd, 2nd for the four queries: AP 1/3, 1/2, 1/3, 1/2
    assert swapped["precision@1"] == 0.0 and swapped["map"] == pytest.approx(5 / 12)
    assert retrieval_scores(emb, labels, query_mask=np.array([1, 0, 0, 0], bool))["n_queries"] == 1
    with pytest.raises(PeaceError, match="at least 2 models"):
        retrieval_scores(emb[:1], labels[:1])


def test_cross_architecture_retrieval_ranks_only_other_architectures():
    # an MLP (m) and a CNN (c) of task x, an MLP of task y; the MLPs are near-copies of each other
    emb = np.array([[1.0, 0.0], [0.99, 0.1], [0.6, 0.8], [0.0, 1.0]])
    task = np.array(["x", "y", "x", "y"])
    arch = np.array(["mlp", "mlp", "cnn", "cnn"])
    plain = retrieval_scores(emb, task, ks=(1,))
    cross = retrieval_scores(emb, task, ks=(1,), other_than=arch)
    # query 0 (mlp, x) ranks only the CNNs: the x CNN (cos 0.6) before the y CNN (0): AP 1
    # query 1 (mlp, y): CNN x (0.68) before CNN y (0.10): AP 1/2
    # query 2 (cnn, x): MLP y (0.68) before MLP x (0.60): AP 1/2; query 3 (cnn, y): MLP y (0.10) before MLP x (0): AP 1
    assert cross["map"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4) and cross["precision@1"] == 0.5
    assert plain["map"] < cross["map"]  # in plain retrieval the MLP copies find each other first
    only_one_arch = retrieval_scores(emb[:2], task[:2], other_than=arch[:2])
    assert only_one_arch["n_queries"] == 0 and np.isnan(only_one_arch["map"])


def test_hard_queries_are_shared_architectures():
    rows = pd.DataFrame({"arch": ["m1", "m1", "m2", "m2"], "task": ["x", "y", "x", "x"]})
    assert hard_queries(rows).tolist() == [True, True, False, False]


def test_clustering_probes_functional_and_invariance():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 5
    labels = np.repeat([0, 1, 2], 30)
    emb = centers[labels] + rng.normal(size=(90, 8))
    c = clustering_scores(emb, labels)
    assert c["nmi"] > 0.9 and c["silhouette"] > 0.3
    assert clustering_scores(rng.normal(size=(90, 8)), labels)["nmi"] < 0.2
    y = emb @ rng.normal(size=8)
    p = linear_probe(emb[:60], y[:60], emb[60:], y[60:])
    assert p["r2"] > 0.99 and p["kendall_tau"] > 0.9
    tr, te = np.arange(90) % 3 != 0, np.arange(90) % 3 == 0
    assert linear_probe(emb[tr], labels[tr], emb[te], labels[te], categorical=True)["accuracy"] > 0.9
    preds = rng.integers(0, 3, size=(20, 50))
    unrelated = rng.normal(size=(20, 8))
    onehot = np.eye(3)[preds].reshape(20, -1)  # embedding = the predictions themselves
    assert functional_similarity(onehot, preds) > 0.9
    assert abs(functional_similarity(unrelated, preds)) < 0.3
    inv = invariance_ratio(emb[:10], emb[:10] + 1e-6, emb)
    assert inv["ratio"] < 1e-3 and inv["distance_to_nearest_other"] > 0


def test_runs_aggregate_to_mean_and_spread():
    from peace.orchestrate.evaluation import aggregate, summary_markdown

    runs = [pd.DataFrame({"task mAP": [0.5, 0.3], "R2": [0.1, float("nan")]}, index=pd.Index(["peace", "raw"], name="method"))
            .assign(run=f"s{i}") for i in range(3)]
    for i, t in enumerate(runs):
        t.loc["peace", "task mAP"] = 0.5 + 0.1 * i  # 0.5, 0.6, 0.7
    s = aggregate(runs)
    row = s[(s.method == "peace") & (s.metric == "task mAP")].iloc[0]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1) and row["n"] == 3
    md = summary_markdown(s)
    assert "| peace | 0.600 ± 0.100 | 0.100 ± 0.000 |" in md and "| raw | 0.300 ± 0.000 | n/a |" in md


def test_average_precision_matches_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    from peace.evaluate.metrics import _average_precision

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 50))
        scores = np.round(rng.random(n), int(rng.integers(1, 4)))  # coarse rounding: many ties
        rel = rng.random(n) < 0.3
        rel[int(rng.integers(n))] = True
        order = np.argsort(-scores, kind="stable")
        assert _average_precision(rel[order], scores[order]) == pytest.approx(average_precision_score(rel, scores), abs=1e-12)
