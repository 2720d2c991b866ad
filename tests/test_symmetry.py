"""Exact symmetries on every family, with and without biases, on real task inputs."""
import pytest
import torch
from conftest import MODELS
from conftest import random_model as _model

from peace.core.errors import PeaceError
from peace.nets.alignment import align
from peace.nets.architectures import forward
from peace.nets.symmetry import RandomSymmetry, allowed, canonicalize, random_symmetry, transform


def _out(spec, params, X):
    return forward(spec, {k: v.unsqueeze(0) for k, v in params.items()}, X)[0]


@pytest.mark.parametrize("task_name, kw", MODELS, ids=lambda v: str(v))
def test_random_symmetries_preserve_function_and_change_weights(task_name, kw):
    task, spec, p = _model(task_name, kw)
    X = torch.from_numpy(task.X_test[:200])
    for seed in range(3):
        q = random_symmetry(spec, p, seed)
        torch.testing.assert_close(_out(spec, q, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
        assert max((p[k] - q[k]).abs().max() for k in p) > 0.1


@pytest.mark.parametrize("task_name, kw", MODELS, ids=lambda v: str(v))
def test_canonical_form_is_orbit_invariant_and_function_preserving(task_name, kw):
    task, spec, p = _model(task_name, kw)
    X = torch.from_numpy(task.X_test[:200])
    cp = canonicalize(spec, p)
    torch.testing.assert_close(_out(spec, cp, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    for seed in range(3):
        cq = canonicalize(spec, random_symmetry(spec, p, seed))
        aligned, _ = align(spec, cp, cq)  # remove the permutation; scale and sign must already agree
        for k in cp:
            torch.testing.assert_close(aligned[k], cp[k], atol=1e-5, rtol=1e-4)


def test_flatten_boundary_moves_whole_blocks():
    task, spec, p = _model("digits", dict(family="cnn2d", hidden=(3,), activation="relu", pool="avg"))
    perm = torch.tensor([2, 0, 1])
    q = transform(spec, p, [perm], None)
    fc = spec.layers[1]
    block = fc.in_features // 3
    assert torch.equal(q[fc.weight_name][:, :block], p[fc.weight_name][:, 2 * block:3 * block])


def test_disallowed_transforms_are_errors():
    _, tanh_spec, tanh_p = _model("tetris", dict(family="mlp", hidden=(5,), activation="tanh"))
    _, relu_spec, relu_p = _model("tetris", dict(family="mlp", hidden=(5,), activation="relu"))
    _, sig_spec, sig_p = _model("tetris", dict(family="mlp", hidden=(5,), activation="sigmoid"))
    _, maxp_spec, maxp_p = _model("digits", dict(family="cnn2d", hidden=(3,), activation="tanh", pool="max"))
    with pytest.raises(PeaceError, match="scaling hidden units needs a positively homogeneous activation.*uses tanh"):
        random_symmetry(tanh_spec, tanh_p, 0, RandomSymmetry(scale=True))
    with pytest.raises(PeaceError, match="sign flips need an odd activation.*activation relu"):
        random_symmetry(relu_spec, relu_p, 0, RandomSymmetry(flip=True))
    with pytest.raises(PeaceError, match="scaling.*uses sigmoid"):
        transform(sig_spec, sig_p, None, [torch.full((5,), 2.0)])
    with pytest.raises(PeaceError, match="max pooling"):
        transform(maxp_spec, maxp_p, None, [torch.tensor([-1.0, 1.0, 1.0])])
    with pytest.raises(PeaceError, match="not a permutation"):
        transform(relu_spec, relu_p, [torch.tensor([0, 0, 1, 2, 3])], None)
    assert allowed(sig_spec) == {"permute": True, "scale": False, "flip": False}


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st


@settings(max_examples=60, deadline=None)
@given(data=st.data(), activation=st.sampled_from(["relu", "leaky_relu", "tanh", "identity"]),
       hidden=st.lists(st.integers(1, 6), min_size=1, max_size=3), bias=st.booleans())
def test_property_canonical_form_absorbs_any_allowed_transform(data, activation, hidden, bias):
    task, spec, p = _model("synth-1", dict(family="mlp", hidden=tuple(hidden), activation=activation, bias=bias))
    ok = allowed(spec)
    perms, factors = [], []
    for n in hidden:
        perms.append(torch.tensor(data.draw(st.permutations(list(range(n))))))
        mags = data.draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n)) if ok["scale"] else [1.0] * n
        signs = data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)) if ok["flip"] else [1.0] * n
        factors.append(torch.tensor(mags) * torch.tensor(signs))
    q = transform(spec, p, perms, factors)
    X = torch.from_numpy(task.X_test[:100])
    torch.testing.assert_close(_out(spec, q, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    cp, cq = canonicalize(spec, p), canonicalize(spec, q)
    expected = transform(spec, cp, perms, None)  # the canonical form of the orbit, permuted alike
    for k in cp:
        torch.testing.assert_close(cq[k], expected[k], atol=1e-4, rtol=1e-4)
    aligned, _ = align(spec, cp, cq)  # and weight matching finds that permutation
    for k in cp:
        torch.testing.assert_close(aligned[k], cp[k], atol=1e-4, rtol=1e-4)


def test_regression_all_signs_flipped_tanh_with_dead_unit():
    """Found by hypothesis in CI: weight matching used to stop in a local optimum here."""
    task, spec, p = _model("synth-1", dict(family="mlp", hidden=(2, 3, 2), activation="tanh", bias=False))
    perms = [torch.tensor([0, 1]), torch.tensor([1, 2, 0]), torch.tensor([0, 1])]
    factors = [-torch.ones(2), -torch.ones(3), -torch.ones(2)]
    cp, cq = canonicalize(spec, p), canonicalize(spec, transform(spec, p, perms, factors))
    aligned, found = align(spec, cp, cq)
    for k in cp:
        torch.testing.assert_close(aligned[k], cp[k], atol=1e-5, rtol=1e-4)


def test_regression_units_with_equal_incoming_weights():
    """Found by hypothesis in CI: units 1 and 2 of the second layer have the same (canonical)
    incoming weights, so only their outgoing weights tell them apart; the first pass matched on
    incoming weights alone and the refinement stopped in a local optimum."""
    task, spec, p = _model("synth-1", dict(family="mlp", hidden=(2, 4, 4), activation="relu", bias=False))
    cp = canonicalize(spec, p)
    perms = [torch.tensor([0, 1]), torch.tensor([0, 2, 1, 3]), torch.arange(4)]
    aligned, found = align(spec, cp, transform(spec, cp, perms, None))
    for k in cp:
        torch.testing.assert_close(aligned[k], cp[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [dict(family="mlp", hidden=(7, 6), norm="layer", activation="relu"),
                                dict(family="cnn1d", hidden=(3, 4), norm="layer", activation="tanh", pool="avg")],
                         ids=["mlp", "cnn1d"])
def test_layernorm_ignores_what_every_unit_shares_and_the_canonical_form_removes_it(kw):
    from peace.learn.encoder import EncoderConfig, PeaceEncoder

    task, spec, p = _model("synth-1" if kw["family"] == "mlp" else "mnist1d", kw)
    X = torch.from_numpy(task.X_test[:100]).reshape(-1, *spec.input_shape)
    w = spec.layers[0].weight_name
    shared = dict(p)  # the same input weights and bias added to every unit before the first LayerNorm
    shared[w] = p[w] + torch.randn(1, *p[w].shape[1:])
    shared[spec.layers[0].bias_name] = p[spec.layers[0].bias_name] + 0.7
    torch.testing.assert_close(_out(spec, shared, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    cp, cs = canonicalize(spec, p), canonicalize(spec, shared)
    for k in cp:
        torch.testing.assert_close(cs[k], cp[k], atol=1e-5, rtol=1e-4)
    torch.manual_seed(0)
    enc = PeaceEncoder(EncoderConfig(backend="torch", hidden=32)).eval()
    e = enc.embed([spec] * 3, [p, shared, random_symmetry(spec, shared, 2)])
    assert (e - e[0]).abs().max() < 1e-4 * e.abs().max()
