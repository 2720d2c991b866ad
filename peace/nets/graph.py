"""Neural graphs: a network as a graph whose nodes are neurons and whose edges are weights.

Nodes, in order: the channels of each activation tensor of the spec's data flow (``tensor_sizes``):
the input units (features, or input channels), the hidden units, the outputs. A hidden unit is one
node shared by the layers that write it and the layers that read it, so relabelling hidden nodes is
exactly the network's permutation symmetry. Input and output nodes keep their identity
(``node_pos``: their index; -1 for hidden nodes).

In the spirit of Kofinas et al. (ICLR 2024): a BatchNorm is folded into the layer before it (the
eval-mode function: ``batchnorm.fold_norms``), and a ResNet's identity shortcut ``x -> x + f(x)``
is what it computes, a 1x1 convolution with weight 1 from each input channel to the same output
channel: one edge per channel carrying 1.0 (``edge_layer`` -1, since no weight layer holds it).
A node's bias is the sum of the biases its writers add (conv2's and the shortcut projection's).

Node features: ``[bias, depth / n_layers, role one-hot (input, hidden, output), activation one-hot,
LayerNorm scale, LayerNorm shift, LayerNorm flag]``: a LayerNorm (which depends on each sample, so
it cannot be folded) normalizes its layer's outputs jointly; its per-unit scale and shift live on the
units' nodes, the flag says which nodes it normalizes together.
Edge features: ``[weight values zero-padded to edge_dim, kind one-hot (linear, conv1d, conv2d, flatten)]``.
A conv kernel is one edge carrying its k (or k x k) values; at a conv -> linear flatten, the block of
columns that one channel feeds to one output is one edge carrying that block.

``NeuralGraph`` holds plain arrays (for the pure-torch backend); ``to_dgl`` / ``batch_dgl`` make DGL
graphs of the same data; ``graph_to_params`` inverts the construction exactly. Models of one
architecture share their graph's structure: ``population_graph`` builds P of them at once (one
structure, values with a leading population dimension), which ``batch_graphs`` batches like P graphs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from peace.core.errors import PeaceError
from peace.nets import transformer
from peace.nets.architectures import ACTIVATIONS, ArchSpec, check_params
from peace.nets.batchnorm import fold_norms, folded_spec

__all__ = [
    "ACTIVATION_NAMES", "DEFAULT_EDGE_DIM", "EDGE_KINDS", "NODE_DIM", "NORM_FEATURES", "ROLES", "DenseBlock", "GraphBatch",
    "GraphBuilder", "NeuralGraph", "batch_dgl", "batch_graphs", "edge_dim_needed", "graph_to_params", "neural_graph",
    "population_graph", "sparse_layers", "to_dgl"
]

ROLES = ("input", "hidden", "output")
EDGE_KINDS = ("linear", "conv1d", "conv2d", "flatten")
ACTIVATION_NAMES = tuple(ACTIVATIONS)
NORM_FEATURES = ("norm_scale", "norm_shift", "layer_norm")
NODE_DIM = 2 + len(ROLES) + len(ACTIVATION_NAMES) + len(NORM_FEATURES)
DEFAULT_EDGE_DIM = 25  # a 5x5 kernel, or a flatten block of 25 positions


@dataclass
class NeuralGraph:
    """One model's graph as tensors. ``node_layer``: 0 for inputs, i + 1 for the units layer i writes.
    A population graph (``population_graph``) has node and edge features of shape (P, N, .) and
    (P, E, .): P models sharing every other field."""

    src: Tensor          # (E,) int64
    dst: Tensor          # (E,) int64
    node_feat: Tensor    # (N, NODE_DIM), or (P, N, NODE_DIM)
    edge_feat: Tensor    # (E, edge_dim + len(EDGE_KINDS)), or (P, E, ...)
    node_layer: Tensor   # (N,) int64: the activation tensor a node belongs to
    node_pos: Tensor     # (N,) int64, -1 for hidden nodes
    edge_layer: Tensor   # (E,) int64: the weight layer an edge belongs to (-1: a residual identity)
    n_layers: int
    blocks: tuple[tuple[int, ...], ...] = ()  # dense layers: (first edge, n_out, n_in, src, dst, values, kind)

    @property
    def num_nodes(self) -> int:
        return self.node_layer.shape[0]

    @property
    def population(self) -> int | None:
        """P for a population graph, None for one model's graph."""
        return self.node_feat.shape[0] if self.node_feat.dim() == 3 else None

    @property
    def num_edges(self) -> int:
        return self.src.shape[0]


def edge_dim_needed(spec: ArchSpec) -> int:
    """Values one edge of this architecture carries at most."""
    need = 1
    for layer in spec.layers:
        need = max(need, math.prod(layer.kernel))
        if layer.flatten_from is not None:
            need = max(need, math.prod(layer.flatten_from[1:]))
    return need


def _layer_edges(layer, w: Tensor) -> tuple[Tensor, str]:
    """([P,] out, in, values) edge values of one weight layer, and its edge kind."""
    lead = w.shape[:w.dim() - len(layer.weight_shape)]
    if layer.flatten_from is not None:
        return w.reshape(*lead, layer.out_features, layer.flatten_from[0], -1), "flatten"
    return w.reshape(*lead, layer.out_features, layer.in_features, -1), layer.kind


def neural_graph(spec: ArchSpec, params: dict[str, Tensor], edge_dim: int = DEFAULT_EDGE_DIM,
                 oversize: str = "error", max_layer_edges: int | None = None) -> NeuralGraph:
    """Build the neural graph of one model.

    Edges carrying more than ``edge_dim`` values (big kernels, big flatten blocks) are an error with
    ``oversize="error"`` (the graph must be exactly invertible), or average-pooled down to
    ``edge_dim`` values with ``oversize="pool"`` (what the encoder does, so it reads any size).
    ``max_layer_edges``: a layer with more edges keeps, for each of its output units, only its
    ``ceil(max_layer_edges / outputs)`` strongest incoming edges (largest norm of the values; zero
    edges never), so an 11M-parameter resnet18 is read in seconds. The choice depends on values
    alone, so the sparse graph is still permutation-equivariant (ties between exactly equal norms
    aside); such a graph is not invertible.
    """
    check_params(spec, params)
    _check_edges(spec, edge_dim, oversize)
    if spec.family == "vit":
        return transformer.build_graph(spec, params, GraphBuilder(edge_dim, max_layer_edges))
    return _build(spec, params, GraphBuilder(edge_dim, max_layer_edges))


def population_graph(spec: ArchSpec, params: dict[str, Tensor], edge_dim: int = DEFAULT_EDGE_DIM,
                     oversize: str = "error") -> NeuralGraph:
    """The neural graphs of P models of one architecture at once (``params``: tensors of shape
    (P, *shape), as ``architectures.stack_params`` makes them): equal, graph by graph, to
    ``neural_graph`` of each model, for the cost of one. Vision Transformers and sparsified layers
    (``sparse_layers``) depend on each model's values for their structure: build those one by one."""
    check_params(spec, params, population=True)
    _check_edges(spec, edge_dim, oversize)
    if spec.family == "vit":
        raise PeaceError("a Transformer's graph is built model by model: use neural_graph")
    return _build(spec, params, GraphBuilder(edge_dim, population=next(iter(params.values())).shape[0]))


def sparse_layers(spec: ArchSpec, max_layer_edges: int | None) -> bool:
    """Whether ``max_layer_edges`` thins a layer of this architecture (its graph's structure then
    depends on each model's weights)."""
    return any(_thinned(layer.out_features, layer.flatten_from[0] if layer.flatten_from is not None
                        else layer.in_features, max_layer_edges) for layer in spec.layers)


def _thinned(n_out: int, n_in: int, max_layer_edges: int | None) -> bool:
    """Whether a dense layer of n_out x n_in edges keeps only each unit's strongest (``neural_graph``)."""
    return max_layer_edges is not None and n_out * n_in > max_layer_edges


def _check_edges(spec: ArchSpec, edge_dim: int, oversize: str) -> None:
    if oversize not in ("error", "pool"):
        raise PeaceError(f"oversize must be 'error' or 'pool', got {oversize!r}")
    if edge_dim_needed(spec) > edge_dim and oversize == "error":
        raise PeaceError(f"{spec.describe()} has edges carrying {edge_dim_needed(spec)} values but edge_dim is "
                         f"{edge_dim}; raise edge_dim to at least {edge_dim_needed(spec)}")


def _build(spec: ArchSpec, params: dict[str, Tensor], gb: "GraphBuilder") -> NeuralGraph:
    spec, params = fold_norms(spec, params)
    last = len(spec.tensor_sizes) - 1
    sets = [gb.nodes(n, i, "input" if i == 0 else "output" if i == last else "hidden",
                     None if i in (0, last) else spec.activation) for i, n in enumerate(spec.tensor_sizes)]
    for i, layer in enumerate(spec.layers):
        if layer.bias:
            gb.add_bias(sets[layer.dst], params[layer.bias_name])
        if layer.norm:  # a LayerNorm (BatchNorms are folded by now)
            n = layer.norm_names()
            gb.layer_norm(sets[layer.dst], params[n["weight"]], params[n["bias"]])
        vals, kind = _layer_edges(layer, params[layer.weight_name].float())
        gb.dense(sets[layer.src], sets[layer.dst], vals, kind, i)
    for a, b in spec.residuals:
        gb.identity(sets[a], sets[b], next(m.kind for m in spec.layers if m.dst == b))
    return gb.build(last)


class GraphBuilder:
    """Assembles a ``NeuralGraph`` from sets of nodes (one activation tensor's units, or any other
    kind of unit) and blocks of edges between them; node features are filled in ``build``.

    With ``population=P`` every value passed in (biases, norm parameters, edge values) has a leading
    dimension P and ``build`` returns a population graph; one model's values may also come without it.
    """

    def __init__(self, edge_dim: int = DEFAULT_EDGE_DIM, max_layer_edges: int | None = None,
                 population: int | None = None):
        self.edge_dim, self.max_layer_edges, self.population = edge_dim, max_layer_edges, population
        self.P = population or 1
        self.sets: list[tuple[int, int]] = []  # (offset, size)
        self.layer, self.role, self.act, self.pos = [], [], [], []
        self.bias: list[Tensor] = []  # (P, size) per set
        self.norm: dict[int, tuple[Tensor, Tensor]] = {}
        # feats: (values (P, E, k), kind column) per block, often views of the caller's weights until ``build``
        self.src, self.dst, self.feats, self.elayer = [], [], [], []
        self.blocks: list[tuple[int, ...]] = []
        self.n = self.n_edges = 0

    def _values(self, t: Tensor, dims: int) -> Tensor:
        """``t`` with the population dimension in front (float32)."""
        t = t.float()
        return t.expand(self.P, *t.shape) if t.dim() == dims else t

    def nodes(self, size: int, layer: int, role: str, activation: str | None = None, first_pos: int = 0) -> int:
        """A set of ``size`` nodes at depth ``layer``; input and output nodes keep their index (plus
        ``first_pos``) as ``node_pos``. Returns the set's id."""
        self.sets.append((self.n, size))
        self.layer.append(torch.full((size,), layer, dtype=torch.long))
        self.role.append(torch.full((size,), ROLES.index(role), dtype=torch.long))
        self.act.append(torch.full((size,), -1 if activation is None else ACTIVATION_NAMES.index(activation)))
        self.pos.append(torch.arange(size) + first_pos if role != "hidden" else torch.full((size,), -1, dtype=torch.long))
        self.bias.append(torch.zeros(self.P, size))
        self.n += size
        return len(self.sets) - 1

    def add_bias(self, node_set: int, bias: Tensor) -> None:
        self.bias[node_set] = self.bias[node_set] + self._values(bias, 1)

    def layer_norm(self, node_set: int, scale: Tensor, shift: Tensor) -> None:
        self.norm[node_set] = (self._values(scale, 1), self._values(shift, 1))

    def edges(self, src: Tensor, dst: Tensor, values: Tensor, kind: str, layer: int) -> None:
        """Edges between global node ids carrying ``values`` ([P,] E, k <= edge_dim)."""
        self.src.append(src), self.dst.append(dst)
        self.feats.append((self._values(values, 2), self.edge_dim + EDGE_KINDS.index(kind)))
        self.elayer.append(torch.full((len(src),), layer, dtype=torch.long))
        self.n_edges += len(src)

    def dense(self, src_set: int, dst_set: int, vals: Tensor, kind: str, layer: int) -> None:
        """Every (input, output) pair of two node sets, ``vals`` ([P,] n_out, n_in, k): pooled to edge_dim
        values, and sparsified beyond ``max_layer_edges`` (see ``neural_graph``)."""
        vals = self._values(vals, 3)
        P, n_out, n_in, k = vals.shape
        if k > self.edge_dim:
            vals = F.adaptive_avg_pool1d(vals.reshape(-1, 1, k), self.edge_dim).reshape(P, n_out, n_in, self.edge_dim)
            k = self.edge_dim
        s_idx, d_idx = torch.arange(n_in).repeat(n_out), torch.arange(n_out).repeat_interleave(n_in)
        vals = vals.reshape(P, -1, k)
        if _thinned(n_out, n_in, self.max_layer_edges):
            if self.population is not None:
                raise PeaceError("a sparsified layer's edges depend on each model: build such graphs one by one")
            keep = -(-self.max_layer_edges // n_out)
            top = vals[0].norm(dim=1).reshape(n_out, n_in).topk(keep, dim=1)
            flat = (top.indices + torch.arange(n_out).unsqueeze(1) * n_in).reshape(-1)[top.values.reshape(-1) > 0]
            s_idx, d_idx, vals = s_idx[flat], d_idx[flat], vals[:, flat]
        else:
            self.blocks.append((self.n_edges, n_out, n_in, self.sets[src_set][0], self.sets[dst_set][0], k,
                                EDGE_KINDS.index(kind)))
        self.edges(s_idx + self.sets[src_set][0], d_idx + self.sets[dst_set][0], vals, kind, layer)

    def identity(self, src_set: int, dst_set: int, kind: str, layer: int = -1, value: float = 1.0) -> None:
        """Node i of one set to node i of another, carrying ``value`` (a residual shortcut, a pairing)."""
        size = self.sets[dst_set][1]
        self.edges(torch.arange(size) + self.sets[src_set][0], torch.arange(size) + self.sets[dst_set][0],
                   torch.full((size, 1), value), kind, layer)

    def member_edges(self, group_set: int, member_set: int, group_of: Tensor, kind: str, layer: int = -1) -> None:
        """A 1.0 edge from node ``group_of[i]`` of one set to node i of another (a head to its channels)."""
        n = len(group_of)
        self.edges(group_of + self.sets[group_set][0], torch.arange(n) + self.sets[member_set][0], torch.ones(n, 1),
                   kind, layer)

    def build(self, n_layers: int) -> NeuralGraph:
        node_layer, role, act = torch.cat(self.layer), torch.cat(self.role), torch.cat(self.act)
        feat = torch.zeros(self.P, self.n, NODE_DIM)
        feat[..., 0] = torch.cat(self.bias, 1)
        feat[..., 1] = node_layer.float() / n_layers
        feat[:, torch.arange(self.n), 2 + role] = 1.0
        has_act = act >= 0
        feat[:, torch.nonzero(has_act).flatten(), 2 + len(ROLES) + act[has_act]] = 1.0
        ln = NODE_DIM - len(NORM_FEATURES)
        for i, (scale, shift) in self.norm.items():
            nodes = slice(self.sets[i][0], self.sets[i][0] + self.sets[i][1])
            feat[:, nodes, ln], feat[:, nodes, ln + 1], feat[:, nodes, ln + 2] = scale, shift, 1.0
        edge_feat = torch.zeros(self.P, self.n_edges, self.edge_dim + len(EDGE_KINDS))
        start = 0
        for values, kind in self.feats:  # written once, in place (no per-block tensor to concatenate)
            rows = edge_feat[:, start:start + values.shape[1]]
            rows[..., :values.shape[-1]], rows[..., kind] = values, 1.0
            start += values.shape[1]
        if self.population is None:
            feat, edge_feat = feat[0], edge_feat[0]
        return NeuralGraph(torch.cat(self.src), torch.cat(self.dst), feat, edge_feat, node_layer,
                           torch.cat(self.pos), torch.cat(self.elayer), n_layers, tuple(self.blocks))


def graph_to_params(spec: ArchSpec, g: NeuralGraph) -> dict[str, Tensor]:
    """The state dict a neural graph encodes (exact inverse of ``neural_graph``). For a network with
    BatchNorm these are the weights of its folded form (``batchnorm.folded_spec(spec)``); a tensor
    written by two layers (conv2 and a shortcut projection) gives its summed bias to the first.
    A Transformer's graph folds its LayerNorms into the layers after them: it has no inverse here."""
    if spec.family == "vit":
        raise PeaceError("a Transformer's neural graph folds its LayerNorms into qkv, fc1 and head; graph_to_params "
                         "cannot split them again")
    if spec.norm != "none":
        spec = folded_spec(spec)
    params, seen = {}, set()
    for i, layer in enumerate(spec.layers):
        mask = g.edge_layer == i
        f = g.edge_feat[mask]
        n_in = layer.flatten_from[0] if layer.flatten_from is not None else layer.in_features
        k = math.prod(layer.weight_shape) // (layer.out_features * n_in)
        params[layer.weight_name] = f[:, :k].reshape(layer.weight_shape).clone()
        if layer.bias:
            first = layer.dst not in seen
            bias = g.node_feat[g.node_layer == layer.dst, 0]
            params[layer.bias_name] = bias.clone() if first else torch.zeros_like(bias)
            seen.add(layer.dst)
        if layer.norm:
            feats = g.node_feat[g.node_layer == layer.dst]
            n, ln = layer.norm_names(), NODE_DIM - len(NORM_FEATURES)
            params[n["weight"]], params[n["bias"]] = feats[:, ln].clone(), feats[:, ln + 1].clone()
    return params


# --- batching -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DenseBlock:
    """One dense layer of P models batched together: every (input, output) pair of two node sets, in
    the same place of each model's graph. Model p's nodes are ``node_start + p * node_stride + ...``,
    its edges of this block ``edge_start + p * edge_stride + o * n_in + i`` for output o, input i.
    Message passing treats such a block as (P, n_out, n_in) arrays instead of gathering per edge."""

    P: int
    node_start: int
    node_stride: int
    edge_start: int
    edge_stride: int
    first_edge: int  # within one model's edges
    n_out: int
    n_in: int
    src: int  # first input node, within one model's nodes
    dst: int  # first output node
    values: int  # values each edge carries (the rest of its edge_dim slots are zero)
    kind: int  # index in EDGE_KINDS

    def _span(self, outputs: bool) -> tuple[int, int]:
        """(first node within a model, count) of the block's outputs or inputs."""
        return (self.dst, self.n_out) if outputs else (self.src, self.n_in)

    def nodes(self, x: Tensor, outputs: bool) -> Tensor:
        """(P, n, ...) view of per-node rows ``x`` (N_total, ...) for the block's outputs or inputs."""
        first, n = self._span(outputs)
        rows = x[self.node_start:self.node_start + self.P * self.node_stride]
        return rows.view(self.P, self.node_stride, *x.shape[1:])[:, first:first + n]

    def node_ids(self, outputs: bool, device: torch.device | str = "cpu") -> Tensor:
        """(P * n,) batch ids of the block's output (or input) nodes, model by model."""
        first, n = self._span(outputs)
        per_model = torch.arange(self.P, device=device).unsqueeze(1) * self.node_stride
        return (self.node_start + first + per_model + torch.arange(n, device=device)).reshape(-1)

    def edges(self, x: Tensor) -> Tensor:
        """(P, n_out, n_in, ...) view of per-edge rows ``x`` (E_total, ...)."""
        rows = x[self.edge_start:self.edge_start + self.P * self.edge_stride].view(self.P, self.edge_stride, *x.shape[1:])
        return rows[:, self.first_edge:self.first_edge + self.n_out * self.n_in].unflatten(1, (self.n_out, self.n_in))


@dataclass
class GraphBatch:
    """Many neural graphs concatenated, node ids offset; ``node_graph`` maps nodes to their graph.
    ``blocks``: the dense layers of populations (``DenseBlock``); ``rest``: the ids of all other edges."""

    graphs: NeuralGraph
    node_graph: Tensor  # (N_total,) int64
    n_layers: Tensor    # (G,) int64
    num_graphs: int
    blocks: tuple[DenseBlock, ...] = ()
    rest: Tensor | None = None  # (E_rest,) int64; None: every edge


def batch_graphs(graphs: Sequence[NeuralGraph], order: Sequence[int] | None = None) -> GraphBatch:
    """Concatenate graphs for the pure-torch backend (the equivalent of ``dgl.batch``); a population
    graph counts as its P graphs, in order. ``order``: the batch position of each of those graphs
    (default: as given), so that graphs built grouped by architecture keep their caller's order."""
    if not graphs:
        raise PeaceError("cannot batch an empty list of graphs")
    pops = [g.population or 1 for g in graphs]
    nodes = torch.tensor([g.num_nodes for g in graphs])
    counts = nodes.repeat_interleave(torch.tensor(pops))  # nodes per graph of the batch
    offs = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]]).split(pops)
    src, dst = [], []
    for g, o in zip(graphs, offs):
        src.append((g.src.unsqueeze(0) + o.unsqueeze(1)).reshape(-1))
        dst.append((g.dst.unsqueeze(0) + o.unsqueeze(1)).reshape(-1))
    cat = lambda name: torch.cat([getattr(g, name).repeat(p) for g, p in zip(graphs, pops)])
    feats = lambda name: torch.cat([getattr(g, name).reshape(-1, getattr(g, name).shape[-1]) for g in graphs])
    merged = NeuralGraph(torch.cat(src), torch.cat(dst), feats("node_feat"), feats("edge_feat"), cat("node_layer"),
                         cat("node_pos"), cat("edge_layer"), max(g.n_layers for g in graphs))
    position = torch.arange(len(counts)) if order is None else torch.as_tensor(order, dtype=torch.long)
    if sorted(position.tolist()) != list(range(len(counts))):
        raise PeaceError(f"order must be a permutation of the {len(counts)} graphs' positions")
    n_layers = torch.empty(len(counts), dtype=torch.long)
    n_layers[position] = torch.tensor([g.n_layers for g in graphs]).repeat_interleave(torch.tensor(pops))
    blocks, rest = _dense_blocks(graphs, merged.num_edges)
    return GraphBatch(merged, position.repeat_interleave(counts), n_layers, len(counts), blocks, rest)


def _dense_blocks(graphs: Sequence[NeuralGraph], n_edges: int) -> tuple[tuple[DenseBlock, ...], Tensor | None]:
    """The dense layers of the population graphs among ``graphs`` (as laid out by ``batch_graphs``),
    and the ids of the edges they do not cover. Single graphs keep per-edge message passing."""
    blocks, covered = [], torch.zeros(n_edges, dtype=torch.bool)
    node_start = edge_start = 0
    for g in graphs:
        P = g.population or 1
        if P > 1:
            for block in g.blocks:
                b = DenseBlock(P, node_start, g.num_nodes, edge_start, g.num_edges, *block)
                blocks.append(b)
                b.edges(covered).fill_(True)
        node_start, edge_start = node_start + P * g.num_nodes, edge_start + P * g.num_edges
    return tuple(blocks), (torch.nonzero(~covered).flatten() if blocks else None)


def to_dgl(g: NeuralGraph):
    """The same graph as a ``dgl.DGLGraph`` (ndata: feat, layer, pos; edata: feat, layer)."""
    import dgl

    dg = dgl.graph((g.src, g.dst), num_nodes=g.num_nodes)
    dg.ndata["feat"], dg.ndata["layer"], dg.ndata["pos"] = g.node_feat, g.node_layer, g.node_pos
    dg.edata["feat"], dg.edata["layer"] = g.edge_feat, g.edge_layer
    return dg


def batch_dgl(graphs: Sequence[NeuralGraph]):
    """A batched ``DGLGraph`` of many models."""
    import dgl

    return dgl.batch([to_dgl(g) for g in graphs])
