"""Vision and sequence Transformers (family ``vit``) in timm's layout and parameter names.

A patch embedding (a conv whose kernel and stride are the patch size: 2-D patches of an image, 1-D
patches of a sequence) makes tokens of width D; a class token is prepended (``pool: cls``) and a
learned position embedding added. Then ``blocks`` pre-LayerNorm blocks:
``x = x + proj(attention(qkv(norm1(x))))``, ``x = x + fc2(act(fc1(norm2(x))))``, with ``heads``
heads of width D / heads, then a final LayerNorm, the class token (or the mean over tokens) and a
linear ``head``. Names: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``,
``blocks.N.attn.qkv`` (rows: q, k, v, each head-major), ``blocks.N.attn.proj``, ``blocks.N.norm2``,
``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm``, ``head``.

Symmetries (exact, :func:`peace.nets.symmetry.vit_transform`): one permutation of the residual stream's D channels shared by
everything that reads or writes it (patch embedding, class token, position embedding, every
LayerNorm's scale and shift, qkv and fc1 columns, proj and fc2 rows, head columns); per block, a
permutation of the MLP's hidden units (with scales / flips where the activation allows), a
permutation of whole heads, and inside a head a joint permutation of query and key channels with a
nonzero factor on each query channel and its inverse on the key channel, and a permutation of value
channels with a nonzero factor pushed into proj's columns. The stream cannot be scaled (LayerNorm).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peace.core import rng
from peace.core.errors import PeaceError
from peace.nets.layers import ACTIVATIONS, Layer, conv

if TYPE_CHECKING:
    from peace.nets.architectures import ArchSpec

__all__ = [
    "LN_EPS", "POOLS", "Attention", "Block", "Mlp", "PatchEmbed", "ViT", "build_graph", "build_layers", "forward",
    "geometry", "init_extras"
]

LN_EPS = 1e-6  # timm's LayerNorm eps for ViTs
POOLS = ("cls", "avg")


def geometry(spec: ArchSpec) -> tuple[int, int, int, int, int]:
    """(channels, patch, tokens, width, MLP width) after checking the spec."""
    if len(spec.input_shape) not in (2, 3):
        raise PeaceError(f"a vit needs inputs shaped (channels, length) or (channels, height, width), got "
                         f"{spec.input_shape}")
    if len(spec.hidden) != 1 or len(spec.fc_hidden) != 1 or len(spec.blocks) != 1 or spec.blocks[0] < 1:
        raise PeaceError(f"a vit takes one width in hidden, one MLP width in fc_hidden and its depth in blocks, "
                         f"got hidden={list(spec.hidden)}, fc_hidden={list(spec.fc_hidden)}, blocks={list(spec.blocks)}")
    p, d = spec.kernel_size, spec.hidden[0]
    if p < 1 or any(s % p for s in spec.input_shape[1:]):
        raise PeaceError(f"the patch size (kernel_size={p}) must divide the input's {spec.input_shape[1:]}")
    if spec.heads < 1 or d % spec.heads:
        raise PeaceError(f"the width {d} must be divisible by heads={spec.heads}")
    if spec.pool not in POOLS or spec.norm != "layer":
        raise PeaceError(f"a vit pools with 'cls' or 'avg' and normalizes with 'layer', got pool={spec.pool!r}, "
                         f"norm={spec.norm!r}")
    tokens = math.prod(s // p for s in spec.input_shape[1:])
    return spec.input_shape[0], p, tokens, d, spec.fc_hidden[0]


def build_layers(spec: ArchSpec) -> tuple[tuple[Layer, ...], list[int], list, dict[str, tuple[int, ...]]]:
    """Weight layers, tensor sizes (input, stream, logits), no chain residuals, and the other
    parameters (class token, position embedding, LayerNorms) of a vit spec."""
    c, p, t, d, m = geometry(spec)
    nd = len(spec.input_shape) - 1
    layers = [Layer(0, f"conv{nd}d", c, d, (p,) * nd, spec.bias, name="patch_embed.proj", stride=p)]
    extras: dict[str, tuple[int, ...]] = {}
    if spec.pool == "cls":
        extras["cls_token"] = (1, 1, d)
    extras["pos_embed"] = (1, t + (spec.pool == "cls"), d)
    for b in range(spec.blocks[0]):
        pre = f"blocks.{b}"
        for name, n_in, n_out in (("attn.qkv", d, 3 * d), ("attn.proj", d, d), ("mlp.fc1", d, m), ("mlp.fc2", m, d)):
            layers.append(Layer(len(layers), "linear", n_in, n_out, bias=spec.bias, name=f"{pre}.{name}"))
        for norm in ("norm1", "norm2"):
            extras[f"{pre}.{norm}.weight"] = extras[f"{pre}.{norm}.bias"] = (d,)
    extras["norm.weight"] = extras["norm.bias"] = (d,)
    layers.append(Layer(len(layers), "linear", d, spec.n_classes, bias=True, name="head"))
    return tuple(layers), [c, d, spec.n_classes], [], extras


def init_extras(spec: ArchSpec, seeds: Tensor) -> dict[str, Tensor]:
    """Class token and position embedding ~ N(0, 0.02^2) keyed by each model's seed (timm's scale);
    LayerNorm scales 1, shifts 0."""
    out = {}
    for i, (name, shape) in enumerate(spec.extra_shapes.items()):
        if name in ("cls_token", "pos_embed"):
            out[name] = 0.02 * rng.normal(seeds, (5, i), shape)
        else:
            out[name] = torch.full((len(seeds), *shape), 1.0 if name.endswith("weight") else 0.0)
    return out


def _linear(h: Tensor, params: dict[str, Tensor], name: str) -> Tensor:
    """h (P, ..., in) through P linear layers ``name`` at once."""
    w = params[f"{name}.weight"]
    P = h.shape[0]
    out = torch.bmm(h.reshape(P, -1, h.shape[-1]), w.transpose(1, 2))
    if f"{name}.bias" in params:
        out = out + params[f"{name}.bias"].unsqueeze(1)
    return out.reshape(*h.shape[:-1], w.shape[1])


def _layer_norm(h: Tensor, params: dict[str, Tensor], name: str) -> Tensor:
    shape = (h.shape[0], *[1] * (h.dim() - 2), h.shape[-1])
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS) * params[f"{name}.weight"].reshape(shape) \
        + params[f"{name}.bias"].reshape(shape)


def forward(spec: ArchSpec, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits (P, B, n_classes) of P Transformers on x (P, B, *input_shape)."""
    c, p, t, d, m = geometry(spec)
    P, B = x.shape[:2]
    pe = spec.layers[0]
    h = conv(x, params[pe.weight_name], params[pe.bias_name] if pe.bias else None, stride=p, padding=0)
    h = h.reshape(P, B, d, t).transpose(2, 3)  # (P, B, tokens, width)
    if spec.pool == "cls":
        h = torch.cat([params["cls_token"].expand(P, B, 1, d), h], 2)
    h = h + params["pos_embed"]
    act, heads = ACTIVATIONS[spec.activation], spec.heads
    n = h.shape[2]
    for b in range(spec.blocks[0]):
        pre = f"blocks.{b}"
        qkv = _linear(_layer_norm(h, params, f"{pre}.norm1"), params, f"{pre}.attn.qkv")
        q, k, v = qkv.reshape(P * B, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # each (PB, heads, n, dh)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), -1) @ v
        h = h + _linear(att.transpose(1, 2).reshape(P, B, n, d), params, f"{pre}.attn.proj")
        h = h + _linear(act(_linear(_layer_norm(h, params, f"{pre}.norm2"), params, f"{pre}.mlp.fc1")), params,
                        f"{pre}.mlp.fc2")
    h = _layer_norm(h, params, "norm")
    return _linear(h[:, :, 0] if spec.pool == "cls" else h.mean(2), params, "head")


# --- the single-model module, timm's structure --------------------------------------------------

class Attention(nn.Module):
    def __init__(self, d: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=bias)
        self.proj = nn.Linear(d, d, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // self.heads), -1) @ v
        return self.proj(att.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, d: int, m: int, bias: bool, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d, m, bias=bias), nn.Linear(m, d, bias=bias), act

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, m: int, bias: bool, act):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=LN_EPS), nn.LayerNorm(d, eps=LN_EPS)
        self.attn, self.mlp = Attention(d, heads, bias), Mlp(d, m, bias, act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, c: int, d: int, p: int, nd: int, bias: bool):
        super().__init__()
        self.proj = (nn.Conv1d if nd == 1 else nn.Conv2d)(c, d, p, p, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """One model of a ``vit`` spec as an ``nn.Module`` (timm's names; same function)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        c, p, t, d, m = geometry(spec)
        self.spec = spec
        self.patch_embed = PatchEmbed(c, d, p, len(spec.input_shape) - 1, spec.bias)
        if spec.pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(*spec.extra_shapes["pos_embed"]))
        act = ACTIVATIONS[spec.activation]
        self.blocks = nn.ModuleList(Block(d, spec.heads, m, spec.bias, act) for _ in range(spec.blocks[0]))
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.head = nn.Linear(d, spec.n_classes)

    def forward(self, x: Tensor, dropout_masks=None) -> Tensor:
        x = self.patch_embed(x)
        if self.spec.pool == "cls":
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.spec.pool == "cls" else x.mean(1))


# --- neural graph -------------------------------------------------------------------------------

def _folded(f: dict[str, Tensor], name: str, norm: str) -> tuple[Tensor, Tensor]:
    """A layer's weight and bias with the LayerNorm before it folded in: ``W diag(scale)``, ``b + W shift``."""
    w, b = f[f"{name}.weight"], f.get(f"{name}.bias", torch.zeros(f[f"{name}.weight"].shape[0]))
    return w * f[f"{norm}.weight"], b + w @ f[f"{norm}.bias"]


def _block_graph(gb, spec: ArchSpec, f: dict[str, Tensor], index: dict[str, int], b: int, x: int) -> int:
    """Block ``b``'s nodes and edges after stream state ``x``; returns the stream state after it."""
    pre, base = f"blocks.{b}", 1 + 4 * b
    d = f[f"{pre}.attn.proj.weight"].shape[0]
    w, bias = _folded(f, f"{pre}.attn.qkv", f"{pre}.norm1")
    qkv = [gb.nodes(d, base + 1, "hidden", "identity") for _ in range(3)]
    heads = gb.nodes(spec.heads, base + 1, "hidden", "identity")
    for i, node_set in enumerate(qkv):
        gb.dense(x, node_set, w[i * d:(i + 1) * d].unsqueeze(-1), "linear", index[f"{pre}.attn.qkv"])
        gb.add_bias(node_set, bias[i * d:(i + 1) * d])
        gb.member_edges(heads, node_set, torch.arange(d) // (d // spec.heads), "linear")
    gb.identity(qkv[0], qkv[1], "linear")  # query channel i meets key channel i in the dot product
    x1 = gb.nodes(d, base + 2, "hidden", "identity")
    gb.dense(qkv[2], x1, f[f"{pre}.attn.proj.weight"].unsqueeze(-1), "linear", index[f"{pre}.attn.proj"])
    if spec.bias:
        gb.add_bias(x1, f[f"{pre}.attn.proj.bias"])
    gb.identity(x, x1, "linear")
    w, bias = _folded(f, f"{pre}.mlp.fc1", f"{pre}.norm2")
    hidden = gb.nodes(w.shape[0], base + 3, "hidden", spec.activation)
    gb.dense(x1, hidden, w.unsqueeze(-1), "linear", index[f"{pre}.mlp.fc1"])
    gb.add_bias(hidden, bias)
    x2 = gb.nodes(d, base + 4, "hidden", "identity")
    gb.dense(hidden, x2, f[f"{pre}.mlp.fc2.weight"].unsqueeze(-1), "linear", index[f"{pre}.mlp.fc2"])
    if spec.bias:
        gb.add_bias(x2, f[f"{pre}.mlp.fc2.bias"])
    gb.identity(x1, x2, "linear")
    return x2


def build_graph(spec: ArchSpec, params: dict[str, Tensor], gb) -> "NeuralGraph":  # noqa: F821
    """The neural graph of a vit (``graph.neural_graph`` calls this with its ``GraphBuilder``).

    Nodes: input channels and token positions (inputs), then per residual-stream state its D channels
    (one set after the embedding and after each attention and MLP, joined by identity edges), per
    block the query, key and value channels and one node per head, the MLP's hidden units, and the
    outputs. Edges: patch kernels (input channel -> stream channel), position embeddings (position ->
    stream channel; the class token added to position 0), qkv / fc1 / head weights with the LayerNorm
    before them folded in (``W diag(scale)``, bias ``b + W shift``: exact), proj and fc2 weights, a
    1.0 edge from each query channel to its key channel and from each head to its query, key and value
    channels. A stream permutation relabels every stream set, a head permutation a head's nodes, a
    query/key or value permutation those channels: the graph is equivariant to every symmetry of
    ``transform``; scales and signs are removed by ``canonicalize`` before it is built.
    """
    c, p, t, d, m = geometry(spec)
    cls, nd, depth = spec.pool == "cls", len(spec.input_shape) - 1, spec.blocks[0]
    index = {layer.name: layer.index for layer in spec.layers}
    top = 4 * depth + 2
    f = {k: v.float() for k, v in params.items()}
    inputs = gb.nodes(c, 0, "input")
    positions = gb.nodes(t + cls, 0, "input", first_pos=c)
    x = gb.nodes(d, 1, "hidden", "identity")
    gb.dense(inputs, x, f["patch_embed.proj.weight"].reshape(d, c, -1), f"conv{nd}d", 0)
    if spec.bias:
        gb.add_bias(x, f["patch_embed.proj.bias"])
    pos = f["pos_embed"][0].clone()
    if cls:
        pos[0] += f["cls_token"][0, 0]
    gb.dense(positions, x, pos.T.unsqueeze(-1), "linear", -1)
    for b in range(depth):
        x = _block_graph(gb, spec, f, index, b, x)
    out = gb.nodes(spec.n_classes, top, "output")
    w, bias = _folded(f, "head", "norm")
    gb.dense(x, out, w.unsqueeze(-1), "linear", index["head"])
    gb.add_bias(out, bias)
    return gb.build(top)

