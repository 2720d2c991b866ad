import pytest
import torch
from torch import nn

from peace.architectures import forward
from peace.errors import PeaceError
from peace.graph import neural_graph
from peace.importers import from_module


@pytest.mark.parametrize("module, shape, family", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Dropout(0.1), nn.Linear(12, 10)), (1, 8, 8), "mlp"),
    (nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.LeakyReLU(0.01), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1),
                   nn.LeakyReLU(0.01), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 7), nn.LeakyReLU(0.01),
                   nn.Linear(7, 10)), (1, 8, 8), "cnn2d"),
    (nn.Sequential(nn.Conv1d(2, 3, 5, padding=2, bias=False), nn.GELU(), nn.AvgPool1d(2), nn.Flatten(),
                   nn.Linear(30, 4, bias=False)), (2, 20), "cnn1d"),
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
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), (4,), "BatchNorm1d"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), (4,), "mixed activations"),
    (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(6, 2)), (4,), "do not chain"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Flatten(), nn.Linear(2, 2)), (1, 5, 5), "stride 1"),
    (Skip(), (4,), "not a plain chain"),
])
def test_unsupported_modules_name_the_problem(module, shape, msg):
    with pytest.raises(PeaceError, match=msg):
        from_module(module, shape)
