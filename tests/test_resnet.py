"""Residual networks: torchvision's layout read exactly, trained in populations, transformed, graphed and
embedded invariantly. ``TVResNet`` below is written from torchvision's ``resnet.py`` (BasicBlock,
``_make_layer``), independently of ``peace.nets.resnet``: torchvision itself does not install with torch 2.2."""
import json
import time

import pytest
import torch
from conftest import MODELS, random_model
from safetensors.torch import save_file
from torch import nn

from peace.core.errors import PeaceError
from peace.intake.importers import from_state_dict, load_model
from peace.intake.modules import from_module
from peace.learn.encoder import EncoderConfig, PeaceEncoder, prepare
from peace.nets.alignment import align
from peace.nets.architectures import ArchSpec, forward
from peace.nets.batchnorm import calibrate_norms, fold_norms, folded_spec, unfold_norms
from peace.nets.graph import graph_to_params, neural_graph
from peace.nets.symmetry import RandomSymmetry, group_labels, random_symmetry, transform, unit_groups
from peace.zoo.population import HParams, Schedule, train_population, train_single
from peace.zoo.tasks import load_task


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class TVResNet(nn.Module):
    """torchvision.models.ResNet with BasicBlock: resnet18 by default."""

    def __init__(self, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=1000, in_ch=3):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_ch, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stages = len(layers)
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._make_layer(w, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _trained_statistics(net, shape, seed=0):
    """Running statistics as training leaves them (a few forward passes in train mode), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, *shape, generator=g) * 2 + 0.5)
    return net.eval()


def _out(spec, params, X):
    return forward(spec, {k: v.unsqueeze(0) for k, v in params.items()}, X)[0]


def test_a_torchvision_layout_module_and_file_are_read_with_the_same_function(tmp_path):
    torch.manual_seed(0)
    net = _trained_statistics(TVResNet((1, 2), (4, 8), num_classes=5), (3, 32, 32))
    X = torch.randn(6, 3, 32, 32)
    spec, params = from_module(net, (3, 32, 32))
    assert spec.family == "resnet" and spec.norm == "batch" and spec.blocks == (1, 2) and spec.stem_pool == "max"
    with torch.no_grad():
        ref = net(X)
    torch.testing.assert_close(_out(spec, params, X), ref, atol=1e-5, rtol=1e-4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if "num_batches" not in k},
              tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"input_shape": [3, 32, 32], "metadata": {"task": "x"}}))
    m = load_model(tmp_path)
    assert m.spec == spec and m.metadata == {"task": "x"}
    torch.testing.assert_close(_out(m.spec, m.params, X), ref, atol=1e-5, rtol=1e-4)


def test_population_training_equals_a_torch_module_trained_alone():
    task = load_task("digits")
    spec = ArchSpec("resnet", task.input_shape, task.n_classes, hidden=(4, 8), blocks=(1, 1), norm="batch", bias=False)
    hps = [HParams(seed=s, lr=0.01) for s in (1, 2, 3)]
    sched = Schedule(2, 64, checkpoints=(0, 2))
    pop = train_population(task, spec, hps, sched)
    alone = train_single(task, spec, hps[1], sched)
    for k, v in alone[2].items():  # weights and BatchNorm running statistics
        torch.testing.assert_close(pop.checkpoints[2][k][1], v, atol=1e-4, rtol=1e-3)
    final = [r["test_acc"] for r in pop.metrics if r["epoch"] == 2]
    assert min(final) > 0.3  # learns well above chance (0.1) in two epochs
    with pytest.raises(PeaceError, match="dropout"):
        train_population(task, spec, [HParams(seed=1, dropout=0.1)], Schedule(1, 64))


@pytest.mark.parametrize("kw", [dict(norm="batch", bias=False, activation="relu"),
                                dict(norm="none", activation="tanh"),
                                dict(norm="batch", activation="leaky_relu", stem_pool="max")], ids=str)
def test_residual_streams_share_one_permutation_and_transforms_keep_the_function(kw):
    task, spec, p = random_model("digits", dict(family="resnet", hidden=(3, 4), blocks=(2, 1), **kw))
    groups = unit_groups(spec)
    stream = groups[0]  # stem output and both first-stage block outputs: one residual stream
    assert stream.tensors == (1, 3, 5) and [m.name for m in stream.writers] == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    X = torch.from_numpy(task.X_test[:64]).reshape(-1, *spec.input_shape)
    for seed in range(3):
        q = random_symmetry(spec, p, seed)
        torch.testing.assert_close(_out(spec, q, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    # one group alone: the first block's inner units touch conv1's rows (and bn1) and conv2's columns only
    q = random_symmetry(spec, p, 0, RandomSymmetry(groups=(1,)))
    assert group_labels(spec)[1] == "outputs of layer1.0.conv1: 3 units"
    assert {k for k in p if not torch.equal(p[k], q[k])} <= {k for k in p if k.startswith(("layer1.0.conv", "layer1.0.bn1"))}
    torch.testing.assert_close(_out(spec, q, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    # permuting one tensor of a stream alone is not a symmetry: the residual addition mixes channels
    perm = torch.tensor([1, 2, 0])
    broken = dict(p)
    broken["layer1.0.conv2.weight"] = p["layer1.0.conv2.weight"][perm]
    assert not torch.allclose(_out(spec, broken, X), _out(spec, p, X), atol=1e-3)


def test_refused_transforms_name_the_reason():
    _, spec, p = random_model("digits", dict(family="resnet", hidden=(2, 3), blocks=(1, 1), norm="batch",
                                             activation="tanh", stem_pool="max"))
    with pytest.raises(PeaceError, match="max pooling"):
        random_symmetry(spec, p, 0, RandomSymmetry(flip=True))
    with pytest.raises(PeaceError, match="positively homogeneous"):
        transform(spec, p, None, [torch.full((2,), 2.0), None, None, None])


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_graph_folds_batchnorm_and_inverts_to_the_folded_network(norm):
    task, spec, p = random_model("digits", dict(family="resnet", hidden=(3, 4), blocks=(2, 1), norm=norm,
                                                bias=norm == "none"))
    X = torch.from_numpy(task.X_test[:64]).reshape(-1, *spec.input_shape)
    g = neural_graph(spec, p)
    layer_edges = sum(m.in_features * m.out_features for m in spec.layers)
    assert g.num_nodes == sum(spec.tensor_sizes) and g.num_edges == layer_edges + 3 + 3  # two identity shortcuts
    assert (g.edge_feat[g.edge_layer == -1, 0] == 1).all()
    back = graph_to_params(spec, g)
    torch.testing.assert_close(_out(folded_spec(spec), back, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_out(*fold_norms(spec, p), X), _out(spec, p, X), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("task,kw", [(t, kw) for t, kw in MODELS if kw.get("norm") == "batch"])
def test_calibrated_batchnorms_compute_the_same_and_train_from_it(task, kw):
    """``calibrate_norms``: evaluation unchanged, and a training-mode pass on the calibration inputs (batch
    statistics) computes what evaluation does, which neutral statistics do not."""
    task, spec, p = random_model(task, kw)
    X = torch.from_numpy(task.X_test[:128]).reshape(-1, *spec.input_shape)
    stacked = {k: v[None] for k, v in unfold_norms(spec, fold_norms(spec, p)[1]).items()}  # neutral, as decoded
    cal = calibrate_norms(spec, stacked, X)
    evaluated = forward(spec, stacked, X)
    torch.testing.assert_close(forward(spec, cal, X), evaluated, atol=1e-4, rtol=1e-4)
    trained = lambda q: forward(spec, {k: v.clone() for k, v in q.items()}, X, train=True)  # noqa: E731
    torch.testing.assert_close(trained(cal), evaluated, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(trained(stacked), evaluated, atol=1e-2)


def test_weight_matching_undoes_a_residual_network_permutation():
    _, spec, p = random_model("digits", dict(family="resnet", hidden=(3, 4), blocks=(2, 1), norm="batch", bias=False))
    q = random_symmetry(spec, p, 4, RandomSymmetry(scale=False))
    aligned, _ = align(spec, p, q)
    assert all(torch.allclose(aligned[k], p[k]) for k in p)


def test_resnet18_imports_graphs_and_embeds_invariantly(tmp_path):
    torch.manual_seed(0)
    state = {k: v for k, v in TVResNet().state_dict().items()}  # 11.7M parameters, random init
    torch.save(state, tmp_path / "resnet18.pt")
    (tmp_path / "config.json").write_text(json.dumps({"input_shape": [3, 32, 32]}))
    m = load_model(tmp_path)
    assert m.spec.describe() == "resnet c64-128-256-512/b2-2-2-2/k3 relu nobias bn" and m.spec.stem_stride == 2
    assert m.spec.n_params == sum(v.numel() for k, v in state.items() if "num_batches" not in k)
    config = EncoderConfig(backend="torch", hidden=32, function_tokens=True, probes=16)
    g = prepare(m.spec, m.params, config)
    assert g.num_edges < 2**19  # big layers keep each unit's strongest inputs (max_layer_edges), not 1.9M edges
    enc = PeaceEncoder(config).eval()
    start = time.perf_counter()
    with torch.no_grad():
        e = enc.embed([m.spec] * 2, [m.params, random_symmetry(m.spec, m.params, 1)])
    assert torch.allclose(e[0], e[1], atol=1e-4 * e.abs().max())
    assert time.perf_counter() - start < 120  # a guard against a blow-up, not a benchmark (benchmarks/bench_resnet.py)


@pytest.mark.parametrize("change, msg", [
    (lambda s: s.update({"layer1.0.conv3.weight": torch.zeros(4, 4, 1, 1)}), "bottleneck"),
    (lambda s: s.update({"layer1.0.extra.weight": torch.zeros(4)}), "do not belong"),
    (lambda s: s.pop("layer1.0.bn2.running_var"), "missing"),
    (lambda s: s.update({"fc.weight": torch.zeros(5, 7)}), "shape"),
    (lambda s: s.update({"layer1.0.conv1.weight": torch.tensor(1.0)}), "must have 4 dimensions"),  # not an IndexError
    (lambda s: s.update({"conv1.weight": torch.zeros(3)}), "must have 4 dimensions"),
])
def test_resnet_files_that_do_not_fit_are_refused_by_name(change, msg):
    state = dict(TVResNet((1, 1), (4, 8), num_classes=5).state_dict())
    change(state)
    with pytest.raises(PeaceError, match=msg):
        from_state_dict(state, {"input_shape": [3, 32, 32]})
    with pytest.raises(PeaceError, match="input size"):
        from_state_dict(dict(TVResNet((1, 1), (4, 8), num_classes=5).state_dict()), {})
    with pytest.raises(PeaceError, match="reads 3 channels"):
        from_state_dict(dict(TVResNet((1, 1), (4, 8), num_classes=5).state_dict()), {"input_shape": [1, 28, 28]})


def test_resnet_keys_are_refused_on_chains_and_chain_specs_keep_their_ids():
    with pytest.raises(PeaceError, match="resnet"):
        ArchSpec("mlp", (16,), 4, hidden=(5,), blocks=(1,))
    d = ArchSpec("mlp", (16,), 4, hidden=(5,)).to_dict()
    assert "blocks" not in d and "norm" not in d  # run ids and manifests of chain zoos are unchanged
