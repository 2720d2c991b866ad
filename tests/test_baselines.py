"""Baselines: one interface, fit on training models, transform any models; the s(W) definition."""
import numpy as np
import torch
from conftest import MODELS, random_model

from peace.evaluate.baselines import (
    MetadataSearch,
    Models,
    RawWeights,
    WeightPCA,
    WeightStats,
    flatten_weights,
    weight_stats,
)


def test_weight_stats_is_per_layer_mean_variance_quantiles():
    _, spec, params = random_model(*MODELS[1])
    s = weight_stats(spec, params, max_depth=4).reshape(4, 2, 7)
    w = params["layers.1.weight"].double().flatten()
    assert np.allclose(s[1, 0, :2], [w.mean(), w.var(unbiased=False)])
    assert np.allclose(s[1, 0, 2:], torch.quantile(w, torch.tensor([0, .25, .5, .75, 1.0], dtype=torch.float64)))
    assert (s[3] == 0).all()  # no fourth layer


def test_flatten_pads_and_truncates():
    _, spec, params = random_model(*MODELS[1])
    f = flatten_weights(spec, params, spec.n_params + 5)
    assert f.shape == (spec.n_params + 5,) and (f[-5:] == 0).all()
    assert torch.equal(flatten_weights(spec, params, 3), params["layers.0.weight"].flatten()[:3])


def test_every_baseline_fits_and_transforms_unseen_models(tiny_zoo):
    ids = list(tiny_zoo.manifest.index)
    train, test = Models.from_zoo(tiny_zoo, ids[::2]), Models.from_zoo(tiny_zoo, ids[1::2])
    for b in (MetadataSearch(), RawWeights(), WeightStats(), WeightPCA(n_components=8)):
        x = b.fit(train).transform(test)
        assert x.shape[0] == len(test) and np.isfinite(x).all(), b.name
    card = MetadataSearch().cards(test.rows)[0]
    assert "task" not in card and test.rows.task[0] not in card.split()  # never the label being evaluated
