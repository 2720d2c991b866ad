import pytest
import torch
from torch import nn

from peace.core.errors import PeaceError
from peace.intake.importers import from_state_dict
from peace.intake.modules import from_module
from peace.nets.architectures import forward
from peace.nets.graph import neural_graph


@pytest.mark.parametrize("module, shape, family", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Dropout(0.1), nn.Linear(12, 10)), (1, 8, 8), "mlp"),
    (nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.LeakyReLU(0.01), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1),
                   nn.LeakyReLU(0.01), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 7), nn.LeakyReLU(0.01),
                   nn.Linear(7, 10)), (1, 8, 8), "cnn2d"),
    (nn.Sequential(nn.Conv1d(2, 3, 5, padding=2, bias=False), nn.GELU(), nn.AvgPool1d(2), nn.Flatten(),
                   nn.Linear(30, 4, bias=False)), (2, 20), "cnn1d"),
    # torch's tutorial CIFAR net: unpadded convolutions (torch's default)
    (nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
                   nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10)), (3, 32, 32), "cnn2d"),
    # the published zoos' CNN: kernels 5, 5, 2, each max-pooled before its activation but the last
    (nn.Sequential(nn.Conv2d(1, 8, 5), nn.MaxPool2d(2, 2), nn.Tanh(), nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), nn.Tanh(),
                   nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh(), nn.Linear(20, 10)),
     (1, 28, 28), "cnn2d"),
    # strided convolutions and a global pool before the head (the Small CNN Zoo's shape; a 1-D one with a max)
    (nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                   nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)), (1, 28, 28), "cnn2d"),
    (nn.Sequential(nn.Conv1d(2, 4, 5, stride=3), nn.Tanh(), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(4, 3)),
     (2, 40), "cnn1d"),
])
def test_modules_from_other_code_are_read_exactly(module, shape, family):
    spec, params = from_module(module, shape)
    assert spec.family == family
    x = torch.randn(5, *shape)
    module.eval()
    torch.testing.assert_close(forward(spec, {k: v[None] for k, v in params.items()}, x)[0], module(x))
    neural_graph(spec, params)


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


@pytest.mark.parametrize("module, shape, msg", [
    (nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)), (4,), r"layer '1' \(LSTM\) is not supported; supported layers: Linear"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)), (4,),
     r"'2' \(BatchNorm1d\) does not follow a Linear or Conv layer directly"),
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)), (4,),
     "keeps no running statistics"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), (4,), "mixed activations"),
    (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(6, 2)), (4,), "do not chain"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, stride=(2, 1)), nn.Flatten(), nn.Linear(2, 2)), (1, 5, 5),
     "one stride in every direction"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 2)), (1, 8, 8),
     r"'1' \(AdaptiveAvgPool2d\) is not supported"),
    (Skip(), (4,), "not a plain chain"),
    (nn.Sequential(nn.Conv2d(1, 2, 5), nn.AvgPool2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2)), (1, 8, 8),
     "not a plain chain"),  # an average before tanh is not tanh then the average: the function check refuses it
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, padding=1), nn.Flatten(), nn.Linear(18, 2)), (1, 5, 5),
     r"mixed paddings \['same', 'valid'\]"),
])
def test_unsupported_modules_name_the_problem(module, shape, msg):
    with pytest.raises(PeaceError, match=msg):
        from_module(module, shape)


def _trained_bn(module: nn.Module, shape) -> nn.Module:
    """Running statistics and affine parameters far from their defaults, then eval mode."""
    g = torch.Generator().manual_seed(1)
    module.train()
    with torch.no_grad():
        for _ in range(5):
            module(torch.randn(16, *shape, generator=g) * 3 + 1)
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return module.eval()


@pytest.mark.parametrize("make, shape, config", [
    (lambda: nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)), (6,),
     {"activation": "tanh"}),
    (lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(16, 5)), (1, 8, 8),
     {"activation": "relu", "pool": "max", "input_shape": [1, 8, 8]}),
])
def test_batchnorm_is_folded_into_the_layer_before_it_exactly(tmp_path, make, shape, config):
    """Module and state-dict file give the same chain, computing the eval-mode network's function."""
    from peace.intake.importers import load_model
    from peace.nets.architectures import forward

    module = _trained_bn(make(), shape)
    spec, params = from_module(module, shape)
    assert spec.bias and not any("running" in k for k in params)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    m = load_model(tmp_path / "m.pt", config)
    assert m.spec == spec and all(torch.allclose(m.params[k], params[k]) for k in params)
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(forward(spec, {k: v[None] for k, v in m.params.items()}, x)[0], module(x), atol=1e-5)
    with pytest.raises(PeaceError, match="batchnorm_eps must be a number"):
        load_model(tmp_path / "m.pt", {**config, "batchnorm_eps": "big"})


@pytest.mark.parametrize("norm, kw", [
    ("batch", dict(family="mlp", input_shape=(16,), hidden=(6, 5))),
    ("layer", dict(family="mlp", input_shape=(16,), hidden=(6, 5))),
    ("layer", dict(family="cnn2d", input_shape=(1, 8, 8), hidden=(3, 4), pool="avg")),
    ("batch", dict(family="cnn1d", input_shape=(1, 40), hidden=(3,), fc_hidden=(5,))),
], ids=["mlp-bn", "mlp-ln", "cnn2d-ln", "cnn1d-bn"])
def test_state_dicts_with_normalization_layers_keep_their_function(norm, kw):
    """PEACE's own layout (``layers.i`` then ``norms.i``): BatchNorms fold into the layer before them,
    LayerNorms (``"norm": "layer"`` in the config) stay LayerNorms."""
    from peace.nets.architectures import ArchSpec, build_module

    spec = ArchSpec(n_classes=4, norm=norm, activation="relu", **kw)
    torch.manual_seed(0)
    net = build_module(spec)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    if norm == "batch":
        for m in net.norms:
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 1.5)
    config = {"activation": "relu", **({"norm": "layer"} if norm == "layer" else {}),
              **({"input_shape": list(spec.input_shape), "pool": spec.pool} if spec.family != "mlp" else {})}
    m = from_state_dict(dict(net.state_dict()), config)
    assert m.spec.norm == ("layer" if norm == "layer" else "none")
    x = torch.randn(5, *spec.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(forward(m.spec, {k: v[None] for k, v in m.params.items()}, x)[0], net.eval()(x),
                                   atol=1e-5, rtol=1e-4)
    if norm == "layer":  # a LayerNorm missing after one hidden layer is named
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("norms.0.")}
        with pytest.raises(PeaceError, match="after every hidden layer"):
            from_state_dict(state, config)


def test_a_state_dict_says_strides_and_global_pool_through_its_config():
    """The weights of a strided CNN with a global average do not say either; the model config does, and a
    config that says neither is refused with the form PEACE reads CNNs in."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    cfg = {"activation": "relu", "input_shape": [1, 28, 28], "pool": "none"}
    m = from_state_dict(net.state_dict(), {**cfg, "strides": [2, 2], "global_pool": "avg"})
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(forward(m.spec, {k: v[None] for k, v in m.params.items()}, x)[0], net(x))
    with pytest.raises(PeaceError, match=r"needs \(10, 6272\).*\"strides\": \[2, 2, 2\].*\"global_pool\": \"avg\""):
        from_state_dict(net.state_dict(), cfg)
