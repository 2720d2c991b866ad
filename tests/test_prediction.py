"""The NFN peer (Neural Functional Networks): its invariances, its training, the accuracy study."""
import numpy as np
import pytest
import torch
from conftest import random_model

from peace.core.errors import PeaceError
from peace.evaluate.prediction import NFNPredictor, PredictorConfig, fit_nfn, nfn_readable, predict_nfn
from peace.nets.architectures import ArchSpec, PeaceNet
from peace.nets.symmetry import RandomSymmetry, random_symmetry

MLP = ("synth-1", dict(family="mlp", hidden=(7, 6), activation="relu"))


@pytest.mark.parametrize("mode", ["hnp", "np"])
def test_nfn_is_invariant_to_hidden_permutations_but_not_to_scaling(mode):
    _, spec, params = random_model(*MLP, seed=3)
    torch.manual_seed(0)
    model = NFNPredictor(spec, mode, PredictorConfig(channels=8, layers=2, head=16)).eval()
    permuted = random_symmetry(spec, params, seed=1, kind=RandomSymmetry(permute=True, scale=False, flip=False))
    scaled = random_symmetry(spec, params, seed=1, kind=RandomSymmetry(permute=False, scale=True, flip=False))
    with torch.no_grad():
        y, y_perm, y_scaled = model([params, permuted, scaled])
    assert not torch.equal(permuted["layers.0.weight"], params["layers.0.weight"])
    assert abs(float(y - y_perm)) < 1e-5 * max(1.0, abs(float(y)))
    assert abs(float(y - y_scaled)) > 1e-4  # NFN has no scaling invariance (PEACE's canonical form does)


def test_nfn_reads_mlps_and_globally_pooled_cnns_only():
    _, cnn, _ = random_model("digits", dict(family="cnn2d", hidden=(3,), activation="relu"))
    assert not nfn_readable(cnn) and nfn_readable(ArchSpec("mlp", (16,), 4, hidden=(5,)))
    assert nfn_readable(ArchSpec("mlp", (1, 8, 8), 4, hidden=(5,)))
    with pytest.raises(PeaceError, match="MLPs .* and CNNs whose channels meet the dense layers"):
        NFNPredictor(cnn)
    with pytest.raises(PeaceError, match="mode"):
        NFNPredictor(ArchSpec("mlp", (16,), 4, hidden=(5,)), mode="xyz")


@pytest.mark.parametrize("mode", ["hnp", "np"])
def test_nfn_reads_the_small_cnn_zoos_networks_invariantly_to_hidden_channel_permutations(mode):
    """The Small CNN Zoo's networks (unpadded stride-2 convs, a global average, a dense layer): NFN's conv layers
    carry each kernel as features; permuting hidden channels leaves the prediction alone, as for MLPs."""
    spec = ArchSpec("cnn2d", (1, 16, 16), 10, hidden=(6, 5), activation="tanh", pool="none", padding="valid",
                    strides=(2, 2), global_pool="avg")
    assert nfn_readable(spec)
    torch.manual_seed(0)
    params = {k: v.detach().clone() for k, v in PeaceNet(spec).state_dict().items()}
    model = NFNPredictor(spec, mode, PredictorConfig(channels=8, layers=2, head=16)).eval()
    permuted = random_symmetry(spec, params, seed=1, kind=RandomSymmetry(permute=True, scale=False, flip=False))
    with torch.no_grad():
        y, y_perm = model([params, permuted])
    assert not torch.equal(permuted["layers.0.weight"], params["layers.0.weight"])
    assert abs(float(y - y_perm)) < 1e-5 * max(1.0, abs(float(y)))


@pytest.mark.slow
def test_fit_nfn_learns_a_property_of_the_weights():
    """Target: the Frobenius norm of the first layer, which a permutation-invariant network can read."""
    spec = ArchSpec("mlp", (6,), 3, hidden=(5,), activation="tanh")
    rng = torch.Generator().manual_seed(0)
    models = []
    for i in range(160):
        net = PeaceNet(spec)
        scale = 0.2 + 2 * torch.rand((), generator=rng)
        models.append({k: v.detach() * (scale if k == "layers.0.weight" else 1.0) for k, v in net.state_dict().items()})
    y = np.array([float(m["layers.0.weight"].norm()) for m in models])
    model = fit_nfn(spec, models[:100], y[:100], models[100:130], y[100:130], "hnp",
                    PredictorConfig(channels=8, layers=2, head=16, epochs=60, patience=15))
    pred = predict_nfn(model, models[130:])
    assert np.corrcoef(pred, y[130:])[0, 1] > 0.9


def test_accuracy_study_compares_nfn_with_probes_on_one_architecture(tiny_zoo):
    from peace.evaluate.baselines import Models, RawWeights, WeightStats
    from peace.evaluate.prediction import accuracy_study

    m = tiny_zoo.manifest
    mlp = m[(m["family"] == "mlp") & (m["status"] == "ok")]
    rows = mlp[mlp["arch"] == mlp.groupby("arch").size().idxmax()]
    lineages = sorted(rows["lineage_id"].unique())  # split by lineage, as runs do, and deterministically
    train, val, test = (Models.from_zoo(tiny_zoo, list(rows.loc[rows["lineage_id"].isin(lineages[i::3]), "model_id"]))
                        for i in range(3))
    methods = [RawWeights().fit(train), WeightStats().fit(train)]
    out = accuracy_study(train, val, test, methods, config=PredictorConfig(channels=4, layers=1, head=8, epochs=2),
                         min_models=3, extra={"constant": lambda m: np.full(len(m), 0.5)})
    assert out["arch"].startswith("mlp") and out["n_train"] >= 3
    assert set(out["methods"]) == {"raw + ridge", "stats + ridge", "stats + gradient boosting", "constant", "nfn-hnp",
                                   "nfn-np", "probegen", "probegen, free probes"}
    assert all(np.isfinite(r["r2"]) for r in out["methods"].values())
    assert out["methods"]["constant"]["r2"] <= 0  # a constant predicts nothing
    assert "skipped" in accuracy_study(train, val, test, methods, min_models=10_000)


def test_renamed_copies_keep_each_models_accuracy_on_its_own_renamed_task():
    """``with_renamed``: the training models, then ``copies`` copies of each with its classes renamed and its
    target kept. A copy answers the task with its labels renamed alike exactly as its original answers the task."""
    from peace.evaluate.prediction import with_renamed
    from peace.nets.architectures import forward

    task, spec, params = random_model(*MLP)
    _, _, other = random_model(*MLP)
    models, y = with_renamed(spec, [params, other], np.array([0.9, 0.4]), copies=3, seed=1)
    assert len(models) == 8 and y.tolist() == [0.9, 0.4] + [0.9] * 3 + [0.4] * 3
    assert models[0] is params and models[1] is other
    last = spec.layers[-1]
    x = torch.as_tensor(task.X_test[:200], dtype=torch.float32)
    original = forward(spec, {k: v[None] for k, v in params.items()}, x)[0]
    for copy in models[2:5]:
        assert all(torch.equal(copy[k], params[k]) for k in params if k not in (last.weight_name, last.bias_name))
        order = [int(torch.nonzero((copy[last.weight_name][i] == params[last.weight_name]).all(1))[0])
                 for i in range(spec.n_classes)]
        assert sorted(order) == list(range(spec.n_classes)) and order != list(range(spec.n_classes))
        renamed = forward(spec, {k: v[None] for k, v in copy.items()}, x)[0]
        torch.testing.assert_close(renamed, original[:, order])  # class k of the copy is class order[k]
    again, _ = with_renamed(spec, [params, other], np.array([0.9, 0.4]), copies=3, seed=1)
    assert all(torch.equal(a[last.weight_name], b[last.weight_name]) for a, b in zip(models, again))
    assert len(with_renamed(spec, [params], np.array([0.5]), copies=0)[0]) == 1
    with pytest.raises(PeaceError, match="renamed copies >= 0"):
        PredictorConfig(renamed=-1)


@pytest.mark.parametrize("name", ["nfn-hnp", "probegen", "peace fine-tuned"])
def test_fit_predictor_depends_on_its_seed_not_on_the_global_random_state(tiny_zoo, tiny_run, name):
    """torch's global generator starts from a different seed in every process; a predictor whose new layers
    drew from it gave a different ranking on each identical run."""
    from peace.evaluate.baselines import Models
    from peace.evaluate.prediction import fit_predictor, predict_regressor
    from peace.learn.run import load_encoder

    m = tiny_zoo.manifest
    rows = m[(m["family"] == "mlp") & (m["status"] == "ok")]
    rows = rows[rows["arch"] == rows.groupby("arch").size().idxmax()]
    models = Models.from_zoo(tiny_zoo, list(rows["model_id"]))
    y = models.rows["test_acc"].to_numpy(float)
    config = PredictorConfig(channels=4, layers=1, head=8, epochs=1, finetune_epochs=1)
    encoder = load_encoder(tiny_run.path)

    def predictions(global_seed: int, seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)
        model = fit_predictor(name, models.specs[0], models.params, y, models.params, y, config, seed, encoder)
        return predict_regressor(model, models.params)

    first = predictions(1, seed=0)
    np.testing.assert_array_equal(first, predictions(2, seed=0))
    assert not np.array_equal(first, predictions(1, seed=1))
