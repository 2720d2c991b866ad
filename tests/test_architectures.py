import pytest
import torch

from peace.core.errors import PeaceError
from peace.nets.architectures import ACTIVATIONS, ArchSpec, PeaceNet, forward, stack_params

SPECS = [
    ArchSpec("mlp", (16,), 4, hidden=(5,), activation="tanh", bias=False),
    ArchSpec("mlp", (1, 8, 8), 10, hidden=(8, 6), activation="gelu"),
    ArchSpec("cnn1d", (1, 40), 10, hidden=(3, 4), fc_hidden=(7,), activation="leaky_relu", pool="max"),
    ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(2, 3), activation="sigmoid", pool="avg"),
    ArchSpec("cnn2d", (2, 5, 5), 3, hidden=(2,), activation="identity", pool="none", bias=False, kernel_size=5),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_batched_forward_equals_each_module(spec):
    torch.manual_seed(0)
    nets = [PeaceNet(spec) for _ in range(3)]
    params = stack_params([n.state_dict() for n in nets])
    assert {k: tuple(v.shape[1:]) for k, v in params.items()} == spec.param_shapes()
    x = torch.randn(6, *spec.input_shape)
    out = forward(spec, params, x)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[i], net(x), atol=1e-5, rtol=1e-5)
    assert spec.n_params == sum(p.numel() for p in nets[0].parameters())


def test_flatten_boundary_recorded():
    spec = ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(2, 3))
    fc = spec.layers[2]
    assert fc.kind == "linear" and fc.flatten_from == (3, 2, 2) and fc.in_features == 12


@pytest.mark.parametrize("kw, msg", [
    (dict(family="transformer"), "unknown architecture family 'transformer'; valid: cnn1d, cnn2d, mlp"),
    (dict(activation="swish"), "unknown activation 'swish'; valid: .*gelu"),
    (dict(family="cnn2d", input_shape=(16,)), "cnn2d needs inputs shaped"),
    (dict(family="cnn2d", input_shape=(1, 4, 4), hidden=(2, 2, 2)), "impossible shape"),
    (dict(family="cnn1d", input_shape=(1, 40), kernel_size=4), "kernel_size must be odd"),
    (dict(hidden=(0,)), "must be positive"),
])
def test_bad_architectures_are_named(kw, msg):
    base = dict(family="mlp", input_shape=(16,), n_classes=4)
    with pytest.raises(PeaceError, match=msg):
        ArchSpec(**{**base, **kw})


def test_spec_round_trips_through_dict():
    for spec in SPECS:
        assert ArchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(PeaceError, match="unknown architecture key 'depth'"):
        ArchSpec.from_dict({**SPECS[0].to_dict(), "depth": 3})
    assert set(ACTIVATIONS) == {"relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity"}
