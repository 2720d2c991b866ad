"""Transformers (family vit): timm's layout read exactly, trained in populations, transformed (stream,
heads, query/key pairs, values, MLP units), graphed and embedded invariantly. ``TimmViT`` below is
written from timm's ``vision_transformer.py`` (PatchEmbed, Attention, Mlp, Block), independently of
``peace.nets.transformer``; timm itself is not a dependency."""
import json

import pytest
import torch
from conftest import random_model
from safetensors.torch import save_file
from torch import nn

from peace.core.errors import PeaceError
from peace.intake.importers import from_state_dict, load_model
from peace.intake.modules import from_module
from peace.learn.encoder import EncoderConfig, PeaceEncoder
from peace.nets.architectures import ArchSpec, forward
from peace.nets.graph import graph_to_params, neural_graph
from peace.nets.symmetry import (
    RandomSymmetry,
    ViTSymmetry,
    allowed,
    canonicalize,
    group_labels,
    random_symmetry,
    vit_transform,
)
from peace.zoo.population import HParams, Schedule, train_population, train_single
from peace.zoo.tasks import load_task


class TimmAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class TimmBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    """timm.models.VisionTransformer(img_size, patch_size, in_chans, num_classes, embed_dim, depth,
    num_heads, mlp_ratio, qkv_bias, class_token=True, global_pool='token')."""

    def __init__(self, img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=48, depth=2, num_heads=3,
                 mlp_ratio=2, qkv_bias=True):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[TimmBlock(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def _randomized(net, std=0.3):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn_like(p))
    return net.eval()


def _out(spec, params, X):
    return forward(spec, {k: v.unsqueeze(0) for k, v in params.items()}, X)[0]


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_a_timm_layout_module_and_file_are_read_with_the_same_function(tmp_path, qkv_bias):
    net = _randomized(TimmViT(qkv_bias=qkv_bias))
    X = torch.randn(5, 3, 32, 32)
    spec, params = from_module(net, (3, 32, 32))
    assert (spec.family, spec.heads, spec.blocks, spec.pool, spec.kernel_size) == ("vit", 3, (2,), "cls", 4)
    with torch.no_grad():
        ref = net(X)
    torch.testing.assert_close(_out(spec, params, X), ref, atol=1e-5, rtol=1e-4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 3}))
    m = load_model(tmp_path)  # input shape: a square grid of as many patches as pos_embed has positions
    assert m.spec == spec
    torch.testing.assert_close(_out(m.spec, m.params, X), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("change, msg", [
    (lambda s: s.update({"blocks.0.ls1.gamma": torch.ones(48)}), "LayerScale"),
    (lambda s: s.update({"fc_norm.weight": torch.ones(48)}), "fc_norm"),
    (lambda s: s.pop("blocks.1.norm2.bias"), "missing"),
    (lambda s: s.update({"head.weight": torch.zeros(10, 40)}), "shape"),
    (lambda s: s.update({"pos_embed": torch.zeros(5)}), "must have 3 dimensions"),  # not an IndexError
    (lambda s: s.update({"head.weight": torch.tensor(2.0)}), "must have 2 dimensions"),
    (lambda s: s.update({"pos_embed": torch.zeros(1, 1, 48)}), "no patch position"),  # not a complex square root
])
def test_timm_files_that_do_not_fit_are_refused_by_name(change, msg):
    state = dict(TimmViT().state_dict())
    change(state)
    with pytest.raises(PeaceError, match=msg):
        from_state_dict(state, {"num_heads": 3})
    with pytest.raises(PeaceError, match="num_heads"):
        from_state_dict(dict(TimmViT().state_dict()), {})


def test_population_training_equals_a_torch_module_trained_alone():
    task = load_task("digits")
    spec = ArchSpec("vit", task.input_shape, task.n_classes, hidden=(8,), fc_hidden=(16,), blocks=(2,), heads=2,
                    kernel_size=2, pool="cls", norm="layer", activation="gelu")
    hps = [HParams(seed=s, lr=0.05) for s in (1, 2)]
    sgd = Schedule(2, 64, optimizer="sgd", checkpoints=(0, 2))
    pop, alone = train_population(task, spec, hps, sgd), train_single(task, spec, hps[1], sgd)
    for k, v in alone[2].items():
        torch.testing.assert_close(pop.checkpoints[2][k][1], v, atol=1e-5, rtol=1e-4)
    # under Adam the key biases differ: their gradient is exactly zero in theory (softmax ignores what a
    # query adds to every key's logit), Adam scales rounding noise up to lr-sized steps; the function agrees
    adam = Schedule(3, 64, checkpoints=(3,))
    hps = [HParams(seed=s, lr=0.003) for s in (1, 2)]
    pop, alone = train_population(task, spec, hps, adam), train_single(task, spec, hps[1], adam)
    X = torch.from_numpy(task.X_test).reshape(-1, *spec.input_shape)
    mine = {k: v[1] for k, v in pop.checkpoints[3].items()}
    torch.testing.assert_close(_out(spec, mine, X).softmax(1), _out(spec, alone[3], X).softmax(1), atol=1e-3, rtol=0)
    assert max(r["test_acc"] for r in pop.metrics) > 0.25  # learning (chance 0.1)
    with pytest.raises(PeaceError, match="dropout"):
        train_population(task, spec, [HParams(seed=1, dropout=0.1)], Schedule(1, 64))


@pytest.mark.parametrize("case", [("digits", "cls", "gelu", True), ("mnist1d", "avg", "relu", False)], ids=str)
def test_every_symmetry_keeps_the_function_and_the_embedding(case):
    task_name, pool, act, bias = case
    patch = 4 if task_name == "digits" else 8
    task, spec, p = random_model(task_name, dict(family="vit", hidden=(8,), fc_hidden=(12,), blocks=(2,), heads=2,
                                                 kernel_size=patch, pool=pool, norm="layer", activation=act, bias=bias))
    X = torch.from_numpy(task.X_test[:64]).reshape(-1, *spec.input_shape)
    assert allowed(spec) == {"permute": True, "scale": True, "flip": True}
    torch.manual_seed(0)
    enc = PeaceEncoder(EncoderConfig(backend="torch", hidden=32, function_tokens=True, probes=16)).eval()
    base = enc.embed([spec], [p])
    for i, part in enumerate(group_labels(spec)):  # each kind alone, then all together
        moved = (random_symmetry(spec, p, seed, RandomSymmetry(groups=(i,))) for seed in range(20))
        q = next(q for q in moved if any(not torch.equal(p[k], q[k]) for k in p))  # (a draw can be the identity)
        torch.testing.assert_close(_out(spec, q, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
        assert (enc.embed([spec], [q]) - base).abs().max() < 1e-4 * base.abs().max(), part
    cp = canonicalize(spec, p)
    torch.testing.assert_close(_out(spec, cp, X), _out(spec, p, X), atol=1e-4, rtol=1e-4)
    q = random_symmetry(spec, p, 9)
    assert (enc.embed([spec], [q]) - base).abs().max() < 1e-4 * base.abs().max()


def test_broken_transforms_change_the_function_or_are_refused():
    task, spec, p = random_model("digits", dict(family="vit", hidden=(8,), fc_hidden=(12,), blocks=(1,), heads=2,
                                                kernel_size=4, pool="cls", norm="layer", activation="gelu"))
    X = torch.from_numpy(task.X_test[:64]).reshape(-1, *spec.input_shape)
    # permuting queries without their keys is no symmetry
    q = dict(p)
    q["blocks.0.attn.qkv.weight"] = p["blocks.0.attn.qkv.weight"][torch.cat([torch.tensor([1, 0]), torch.arange(2, 24)])]
    assert not torch.allclose(_out(spec, q, X), _out(spec, p, X), atol=1e-3)
    with pytest.raises(PeaceError, match="positively homogeneous"):  # gelu MLP units cannot be scaled
        vit_transform(spec, p, ViTSymmetry(mlp_factor=[torch.full((12,), 2.0)]))
    with pytest.raises(PeaceError, match="nonzero"):
        vit_transform(spec, p, ViTSymmetry(v_factor=[torch.zeros(2, 4)]))
    with pytest.raises(PeaceError, match="cannot split"):
        graph_to_params(spec, neural_graph(spec, p))


def test_the_graph_has_stream_head_and_channel_nodes():
    _, spec, p = random_model("digits", dict(family="vit", hidden=(8,), fc_hidden=(12,), blocks=(2,), heads=2,
                                             kernel_size=4, pool="cls", norm="layer", activation="gelu"))
    g = neural_graph(spec, p)
    tokens = 4 + 1
    # inputs + positions, 5 stream states, per block q/k/v + heads + MLP, outputs
    assert g.num_nodes == 1 + tokens + 5 * 8 + 2 * (3 * 8 + 2 + 12) + 10
    assert g.n_layers == 10 and (g.node_pos >= 0).sum() == 1 + tokens + 10
