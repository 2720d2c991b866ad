import pytest
import torch
from torch import nn

from peace.core.errors import PeaceError
from peace.nets.architectures import ACTIVATIONS, ArchSpec, PeaceNet, forward, hidden_shapes, stack_params

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
    (dict(family="cnn1d", input_shape=(1, 40), kernel_size=4), r"kernel sizes must be positive and odd \(same padding\)"),
    (dict(family="cnn1d", input_shape=(1, 40), padding="full"), "unknown padding 'full'; valid: same, valid"),
    (dict(family="cnn1d", input_shape=(1, 40), hidden=(2, 2), pools=("max",)), "pools names one value per conv layer"),
    (dict(family="cnn1d", input_shape=(1, 40), hidden=(2,), pools=("min",)), "unknown pool in pools 'min'"),
    (dict(family="cnn2d", input_shape=(1, 8, 8), hidden=(2, 2), kernels=(5, 5), padding="valid"), "impossible shape"),
    (dict(kernels=(3,)), "kernels is not for a mlp"),
    (dict(family="cnn1d", input_shape=(1, 40), hidden=(2, 2), strides=(2,)), "strides names one value per conv layer"),
    (dict(family="cnn1d", input_shape=(1, 40), hidden=(2,), strides=(0,)), "strides must be positive"),
    (dict(family="cnn1d", input_shape=(1, 40), global_pool="sum"), "unknown global_pool 'sum'"),
    (dict(family="cnn1d", input_shape=(1, 4), kernels=(5,), padding="valid", global_pool="avg"), "impossible shape"),
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


def _computes_what_torch_computes(spec: ArchSpec, net: nn.Sequential) -> None:
    """``net``'s weights under ``spec``'s names: PEACE's population forward and its PeaceNet give torch's outputs."""
    weights = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = {k: v for layer, m in zip(spec.layers, weights)
              for k, v in ((layer.weight_name, m.weight.detach()), (layer.bias_name, m.bias.detach()))}
    x = torch.randn(4, *spec.input_shape)
    torch.testing.assert_close(forward(spec, {k: v[None] for k, v in params.items()}, x)[0], net(x), atol=1e-6, rtol=1e-6)
    peace = PeaceNet(spec)
    peace.load_state_dict(params)
    torch.testing.assert_close(peace(x), net(x), atol=1e-6, rtol=1e-6)


def test_cnns_made_elsewhere_unpadded_with_kernels_and_pools_per_layer():
    """The published zoos' CNN (and torch's default): unpadded convolutions of kernels 5, 5 and 2, each max-pooled
    before its activation but the last; PEACE's act-then-pool reading computes the same (max commutes with tanh)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.Tanh(), nn.Conv2d(8, 6, 5), nn.MaxPool2d(2), nn.Tanh(),
                        nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh(), nn.Linear(20, 10))
    spec = ArchSpec("cnn2d", (1, 28, 28), 10, hidden=(8, 6, 4), fc_hidden=(20,), activation="tanh", kernels=(5, 5, 2),
                    pools=("max", "max", "none"), padding="valid")
    assert spec.describe() == "cnn2d c8-6-4/20/k5-5-2/max-max-none/valid tanh" and spec.layers[3].flatten_from == (4, 3, 3)
    _computes_what_torch_computes(spec, net)
    assert ArchSpec.from_dict(spec.to_dict()) == spec and hidden_shapes(spec, 2)[:3] == [(2, 8, 12, 12), (2, 6, 4, 4),
                                                                                       (2, 4, 3, 3)]
    # at their defaults the new keys are left out: every spec written before (manifests, run ids) reads the same
    assert set(ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(4,)).to_dict()).isdisjoint({"padding", "kernels", "pools"})


def test_strided_cnns_with_a_global_average_before_the_head():
    """Small CNN Zoo's shape in torch: three 3x3 convolutions of stride 2, a global average, one linear layer
    (4,970 parameters); PEACE computes what torch does, and the new keys stay out of specs at their defaults."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 10))
    spec = ArchSpec("cnn2d", (1, 28, 28), 10, hidden=(16, 16, 16), pool="none", strides=(2, 2, 2), global_pool="avg")
    assert spec.n_params == 4970 and spec.describe() == "cnn2d c16-16-16/k3/none/s2-2-2/global-avg relu"
    assert spec.layers[3].flatten_from == (16, 1, 1) and hidden_shapes(spec, 1)[1] == (1, 16, 7, 7)
    _computes_what_torch_computes(spec, net)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert set(ArchSpec("cnn1d", (1, 8), 3, hidden=(2,)).to_dict()).isdisjoint({"strides", "global_pool"})
