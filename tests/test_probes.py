"""Function space: probe inputs, responses, prediction agreement and the function-space baseline."""
import numpy as np
import pytest
import torch
from conftest import MODELS, random_model

from peace.core.errors import PeaceError
from peace.evaluate.baselines import FunctionSpace, Models
from peace.nets.architectures import ArchSpec
from peace.nets.probes import (
    PROBE_SEED,
    _projection,
    agreement,
    agreement_matrix,
    fingerprint,
    io_space,
    probe_inputs,
    responses,
    sketch,
    soft_sketch,
)
from peace.nets.symmetry import random_symmetry


def _linear(w: list[list[float]]) -> tuple[ArchSpec, dict]:
    """A bias-free one-layer model with the given (classes, features) weights."""
    w = torch.tensor(w)
    spec = ArchSpec("mlp", (w.shape[1],), w.shape[0], hidden=(), bias=False)
    return spec, {"layers.0.weight": w}


def test_agreement_of_two_models_is_the_fraction_of_probes_they_classify_alike():
    # A predicts class 0 where x0 > 0, B where x1 > 0: they agree where sign(x0) == sign(x1)
    spec, a = _linear([[1.0, 0.0], [-1.0, 0.0]])
    _, b = _linear([[0.0, 1.0], [0.0, -1.0]])
    x = probe_inputs(spec.input_shape, 256)
    expected = float(((x[:, 0] > 0) == (x[:, 1] > 0)).double().mean())
    ra, rb = responses([spec, spec], [a, b], 256)
    assert agreement(ra, rb) == pytest.approx(expected)
    assert 0.3 < expected < 0.7  # the probes really do separate the two functions
    assert agreement(ra, ra) == 1.0
    _, flipped = _linear([[-1.0, 0.0], [1.0, 0.0]])  # the opposite classifier
    assert agreement(ra, responses([spec], [flipped], 256)[0]) == 0.0
    # the matrix form agrees with the pairwise one; other io-spaces score 0
    m = agreement_matrix([ra, rb, ra[:, :1]], ["2->2", "2->2", "2->1"])
    assert m[0, 1] == pytest.approx(expected) and m[0, 0] == pytest.approx(1.0) and m[0, 2] == 0
    assert float(fingerprint(ra) @ fingerprint(rb)) == pytest.approx(expected)
    with pytest.raises(PeaceError, match="io-space"):
        agreement(ra, ra[:, :1])


def test_probes_are_shared_by_every_shape_with_as_many_features():
    flat, image = probe_inputs((64,), 8), probe_inputs((1, 8, 8), 8)
    assert torch.equal(flat, image.reshape(8, 64)) and not torch.equal(probe_inputs((63,), 8)[:, :8], flat[:, :8])
    assert torch.equal(probe_inputs((16,), 8, seed=1), probe_inputs((16,), 8, seed=1))
    assert not torch.equal(probe_inputs((16,), 8, seed=1), probe_inputs((16,), 8, seed=2))
    _, mlp, _ = random_model("digits", dict(family="mlp", hidden=(9,)))
    _, cnn, _ = random_model(*MODELS[3])
    assert io_space(mlp) == io_space(cnn) == "64->10"
    with pytest.raises(PeaceError, match=">= 1"):
        probe_inputs((4,), 0)


@pytest.mark.parametrize("case", range(len(MODELS)))
def test_responses_and_the_function_space_baseline_are_symmetry_invariant(case):
    _, spec, params = random_model(*MODELS[case], seed=case)
    moved = random_symmetry(spec, params, seed=case + 10)
    r, r2 = responses([spec, spec], [params, moved])
    assert r.shape == (256, spec.n_classes) and torch.allclose(r.sum(1), torch.ones(256), atol=1e-5)
    assert torch.allclose(r, r2, atol=1e-6) and agreement(r, r2) == 1.0
    rows = __import__("pandas").DataFrame({"model_id": ["a", "b"]})
    fs = FunctionSpace().fit(Models(rows, [spec, spec], [params, moved]))
    x = fs.transform(Models(rows, [spec, spec], [params, moved]))
    assert np.array_equal(x[0], x[1]) and np.linalg.norm(x[0]) == pytest.approx(1.0)


def test_function_space_baseline_blocks_by_io_space_and_names_unknown_spaces():
    import pandas as pd

    cases = [random_model(*MODELS[i], seed=i) for i in (0, 1, 3, 5)]  # 16->4 twice, 64->10, 40->10
    specs, params = [c[1] for c in cases], [c[2] for c in cases]
    models = Models(pd.DataFrame({"model_id": list("abcd")}), specs, params)
    fs = FunctionSpace(n_probes=32).fit(models)
    x = fs.transform(models)
    assert x.shape == (4, 32 * (4 + 10 + 10)) and np.allclose(np.linalg.norm(x, axis=1), 1)
    sim = x @ x.T
    assert sim[0, 2] == 0 and sim[2, 3] == 0 and sim[0, 1] > 0  # other spaces are orthogonal
    only_mlps = FunctionSpace(n_probes=32).fit(Models(models.rows[:2], specs[:2], params[:2]))
    with pytest.raises(PeaceError, match="64->10"):
        only_mlps.transform(models)
    wider = FunctionSpace(n_probes=32, spaces=["64->10", "40->10"]).fit(Models(models.rows[:2], specs[:2], params[:2]))
    assert np.array_equal(wider.transform(models), x)
    _, mlp, mlp_params = random_model(*MODELS[7], seed=7)  # a 64->10 MLP that answers several classes
    pair = Models(models.rows[:2], [specs[0], mlp], [params[0], mlp_params])
    own = {"64->10": 3 * torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
    gaussian, theirs = FunctionSpace(n_probes=32).fit(pair), FunctionSpace(n_probes=32, inputs=own).fit(pair)
    x, y = gaussian.transform(pair), theirs.transform(pair)
    assert theirs.name == "function (run's probes)" and gaussian.name == "function"
    assert np.array_equal(y[0], x[0]) and not np.array_equal(y[1], x[1])  # only the space it names moves
    a, b = theirs.offsets_["64->10"]
    np.testing.assert_array_equal(y[1, a:b], fingerprint(responses([mlp], [mlp_params], 32, inputs=own)[0]).numpy())


def test_sketches_approximate_agreement_and_keep_spaces_apart():
    cases = [random_model(*MODELS[i], seed=s) for i in (1, 2) for s in range(4)]  # eight 16->4 models
    specs, params = [c[1] for c in cases], [c[2] for c in cases]
    r = responses(specs, params, 128)
    spaces = [io_space(s) for s in specs]
    exact = agreement_matrix(r, spaces)
    sk = sketch(r, spaces, 4096)
    assert np.abs((sk @ sk.T).numpy() - exact).max() < 0.08  # JL: error about 1/sqrt(dim)
    assert torch.equal(sketch(r, spaces, 64), sketch(r, spaces, 64))  # fixed projections
    other = sketch(r[:1], ["64->4"], 4096)  # the same vector read as another space: nearly orthogonal
    assert abs(float(other[0] @ sk[0])) < 0.08


@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
def test_a_models_sketch_is_its_map_times_its_fingerprint_and_bitwise_the_same_in_any_batch(projection):
    g = torch.Generator().manual_seed(0)
    spaces = ["64->10", "16->4", "64->10", "8->2", "16->4"] * 7
    r = [torch.randn(48, int(s.split("->")[1]), generator=g) for s in spaces]
    together = sketch(r, spaces, 256, projection=projection)
    for i in (0, 3, 11, 34):
        f = fingerprint(r[i])
        defined = _projection(spaces[i], f.numel(), 256, PROBE_SEED, projection) @ f
        torch.testing.assert_close(together[i], defined, atol=1e-6, rtol=0)
        alone = sketch(r[i:i + 1], spaces[i:i + 1], 256, projection=projection)[0]
        behind = sketch(r[:5] + r[i:i + 1], spaces[:5] + spaces[i:i + 1], 256, projection=projection)[5]
        assert torch.equal(alone, together[i]) and torch.equal(behind, together[i])


def test_orthogonal_sketches_keep_agreement_exactly_where_they_have_room_and_approximate_it_elsewhere():
    cases = [random_model(*MODELS[i], seed=s) for i in (1, 2) for s in range(4)]  # eight 16->4 models
    specs, params = [c[1] for c in cases], [c[2] for c in cases]
    r = responses(specs, params, 32)  # 32 probes x 4 classes: 128 answers
    spaces = [io_space(s) for s in specs]
    exact = agreement_matrix(r, spaces)
    roomy = sketch(r, spaces, 128, projection="orthogonal")
    np.testing.assert_allclose((roomy @ roomy.T).numpy(), exact, atol=1e-6)  # orthonormal columns: no error at all
    gaussian = sketch(r, spaces, 128)
    assert np.abs((gaussian @ gaussian.T).numpy() - exact).max() > 0.05  # what the Gaussian map gets wrong
    tight = sketch(r, spaces, 64, projection="orthogonal")  # half the room: orthonormal rows, scaled
    err = np.abs((tight @ tight.T).numpy() - exact)
    assert 1e-3 < err.max() < 0.6 and np.abs(np.diag(err)).mean() < 0.4
    assert torch.equal(sketch(r, spaces, 64, projection="orthogonal"), tight)  # fixed, like the Gaussian one
    onehot = torch.stack([fingerprint(x).reshape(x.shape) * np.sqrt(32) for x in r])
    torch.testing.assert_close(soft_sketch(onehot, spaces[0], 128, projection="orthogonal"), roomy)
    with pytest.raises(PeaceError, match="unknown function-block projection 'qr'; valid: gaussian, orthogonal"):
        sketch(r, spaces, 64, projection="qr")


def test_the_soft_sketch_is_the_sketch_where_predictions_are_sure_and_has_a_gradient():
    cases = [random_model(*MODELS[1], seed=s) for s in range(3)]
    r = responses([c[1] for c in cases], [c[2] for c in cases], 64)
    space = io_space(cases[0][1])
    onehot = torch.stack([fingerprint(x).reshape(x.shape) * 8 for x in r])  # one-hot predictions (sqrt(64) = 8)
    torch.testing.assert_close(soft_sketch(onehot, space, 32), sketch(r, [space] * 3, 32))
    probs = torch.stack(r).requires_grad_()
    soft = soft_sketch(probs, space, 32)
    assert not torch.allclose(soft, sketch(r, [space] * 3, 32))  # unsure predictions give another point
    soft.sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_own_probe_inputs_replace_the_gaussian_ones_of_their_space_only():
    from peace.nets.probes import ProbeBank

    spec, a = _linear([[1.0, 0.0], [-1.0, 0.0]])  # class 0 where x0 > 0
    other = ArchSpec("mlp", (3,), 2, hidden=(), bias=False)
    b = {"layers.0.weight": torch.randn(2, 3)}
    x = torch.tensor([[1.0, 5.0], [2.0, -1.0], [-3.0, 0.0], [0.5, 0.5]])  # predictions 0, 0, 1, 0
    mine, theirs = responses([spec, other], [a, b], 4, inputs={"2->2": x})
    assert mine.argmax(-1).tolist() == [0, 0, 1, 0]
    assert torch.equal(theirs, responses([other], [b], 4)[0])  # 3->2 was not named: Gaussian probes
    with pytest.raises(PeaceError, match="probe set of io-space 2->2 holds 4 probes, not 8"):
        responses([spec], [a], 8, inputs={"2->2": x})
    bank = ProbeBank()
    bank.set({"2->2": x})
    fresh = ProbeBank()  # knows its spaces only from the saved state, as a reloaded encoder does
    fresh.load_state_dict(bank.state_dict())
    assert list(fresh.inputs()) == ["2->2"] and torch.equal(fresh.inputs()["2->2"], x.double())
    fresh.load_state_dict(ProbeBank().state_dict())  # an encoder without learned probes empties it
    assert fresh.inputs() == {}
