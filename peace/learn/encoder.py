"""The PEACE encoder: neural graph -> message passing -> per-layer readout -> Transformer -> embedding.

Hidden neurons are interchangeable nodes, so relabelling them (a hidden-unit permutation) permutes
node states and leaves every per-layer readout unchanged: the embedding is exactly permutation
invariant. Scaling and sign symmetries are removed before the graph is built by
:func:`peace.nets.symmetry.canonicalize` (``EncoderConfig.canonicalize``). Input and output neurons keep
their identity through a sinusoidal encoding of their position.

Message passing has two backends with one set of parameters: DGL (``apply_edges`` / ``update_all``
on a batched graph; CPU, torch <= 2.2) and pure torch (gather + ``index_add_``; any device).

With ``function_tokens`` the Transformer also reads a token made from the network's class
probabilities on fixed probe inputs of its io-space (``peace.nets.probes``): a function-space view
that every weight-space symmetry leaves exactly unchanged. The probes are Gaussian, or
(``probe_source="learned"``) generated the ProbeGen way for the training io-spaces before training
(``peace.learn.probegen.learn_probes``), or (``probe_source="inverted"``) written by the training tasks'
own models (``peace.learn.inversion``), and then held fixed in the encoder's ``probe_bank``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peace.core.errors import PeaceError, unknown
from peace.core.grouping import positions
from peace.learn.message_passing import GatedMessagePassing, MessagePassing, mlp
from peace.nets.architectures import ArchSpec, stack_params
from peace.nets.graph import (
    EDGE_KINDS,
    NODE_DIM,
    NORM_FEATURES,
    GraphBatch,
    NeuralGraph,
    batch_graphs,
    neural_graph,
    population_graph,
    sparse_layers,
)
from peace.nets.probes import PROJECTIONS, ProbeBank, io_space, sketch
from peace.nets.probes import responses as probe_responses
from peace.nets.symmetry import canonicalize

__all__ = [
    "AGGREGATIONS", "BACKENDS", "DGL_MAX_EDGES", "ENCODER_FORMAT", "KINDS", "POOLINGS", "PROBE_SOURCES", "Embedder",
    "EncoderConfig", "ModelBatch", "PeaceEncoder", "dgl_available", "pad_responses", "prepare",
    "prepare_batch", "resolve_backend", "sinusoid", "to_device", "upgrade_state"
]

KINDS = ("gnn", "mlp")
BACKENDS = ("auto", "dgl", "torch")
POOLINGS = ("mean", "attention", "cls")
AGGREGATIONS = ("mean", "sum")
MESSAGES = {"mlp": MessagePassing, "gated": GatedMessagePassing}
PROBE_SOURCES = ("gaussian", "learned", "inverted")
_POS_FREQS, _POS_SCALE = 10, 512.0  # input/output neuron index: distinct up to 1024 positions
_DEPTH_FREQS = 6                     # normalized depth in [0, 1]
DGL_MAX_EDGES = 2**20  # bigger graphs (a resnet18 has 1.9M edges) take the chunked pure-torch path on any backend


@dataclass
class EncoderConfig:
    """Shape and options of the encoder (saved with every trained encoder)."""

    kind: str = "gnn"             # gnn (PEACE) or mlp (the non-equivariant control on flattened weights)
    hidden: int = 64              # node / token width
    rounds: int = 3               # message-passing rounds
    aggregation: str = "mean"     # of incoming messages: mean (width-robust) or sum
    message: str = "mlp"          # message function: mlp of both ends and the edge, or gated (edge-gated, linear)
    transformer_layers: int = 2   # across the layer sequence; 0 skips the Transformer
    heads: int = 4
    pooling: str = "attention"    # over layer tokens: mean, attention or cls
    embedding_dim: int = 64
    projection_dim: int = 64      # contrastive projection head output; 0: no head, the loss reads the embedding
    canonicalize: bool = True     # remove scaling / sign symmetries before the graph
    edge_dim: int = 25            # values one edge carries (a 5x5 kernel); longer edges are average-pooled
    max_layer_edges: int = 2**15  # bigger layers keep each unit's strongest incoming edges (graph.neural_graph)
    backend: str = "auto"         # message passing: auto (DGL when importable), dgl or torch
    aux_targets: list[str] = field(default_factory=lambda: ["test_acc", "gen_gap"])
    aux_linear: bool = False      # a linear metric head: the metrics must be linearly readable from the embedding
    max_params: int = 4096        # mlp kind only: flattened weights are padded / truncated to this
    function_tokens: bool = False  # add a token of the class probabilities on fixed probe inputs
    probes: int = 128             # probe inputs per io-space (function tokens, sketch, the trainer's functional targets)
    probe_source: str = "gaussian"  # gaussian; learned: ProbeGen probes fit on the training io-spaces; inverted: written
    # by the training tasks' models (peace.learn.inversion); both fixed before training
    function_block: int = 0       # append a fixed function-space sketch of this size to the embedding (0: off)
    function_block_weight: float = 0.75  # its share of the embedding's cosine similarity
    function_block_projection: str = "gaussian"  # or orthogonal (exact where probes x classes <= function_block)

    @property
    def output_dim(self) -> int:
        """Size of the embedding the encoder outputs (learned part plus function block)."""
        return self.embedding_dim + self.function_block

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown("encoder kind", self.kind, KINDS)
        if self.backend not in BACKENDS:
            raise unknown("encoder backend", self.backend, BACKENDS)
        if self.pooling not in POOLINGS:
            raise unknown("pooling", self.pooling, POOLINGS)
        if self.aggregation not in AGGREGATIONS:
            raise unknown("aggregation", self.aggregation, AGGREGATIONS)
        if self.message not in MESSAGES:
            raise unknown("message function", self.message, tuple(MESSAGES))
        if self.probe_source not in PROBE_SOURCES:
            raise unknown("probe source", self.probe_source, PROBE_SOURCES)
        if self.function_block_projection not in PROJECTIONS:
            raise unknown("function-block projection", self.function_block_projection, PROJECTIONS)
        if min(self.hidden, self.rounds + 1, self.embedding_dim, self.projection_dim + 1, self.heads, self.edge_dim,
               self.probes, self.max_layer_edges) < 1:
            raise PeaceError("hidden, embedding_dim, heads, edge_dim, probes and max_layer_edges must be >= 1, rounds "
                             "and projection_dim >= 0")
        if self.kind == "mlp" and (self.function_tokens or self.function_block):
            raise PeaceError("the flat MLP encoder is the weights-only control: it takes no function tokens or "
                             "function block; add encoder.function_tokens=false encoder.function_block=0")
        if self.function_block < 0 or not 0 < self.function_block_weight < 1:
            raise PeaceError(f"function_block must be >= 0 and function_block_weight in (0, 1), got "
                             f"{self.function_block} and {self.function_block_weight}")
        if self.hidden % self.heads:
            raise PeaceError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        self.aux_targets = list(self.aux_targets)


ENCODER_FORMAT = 2  # 2: node features gained the LayerNorm slots (graph.NORM_FEATURES)


def upgrade_state(state: dict[str, Tensor], format_version: int) -> dict[str, Tensor]:
    """An encoder state saved in an older format, made loadable. Format 1 had no LayerNorm node
    features: zero input weights for them leave its embeddings exactly as they were."""
    w = state.get("node_in.weight")
    old = NODE_DIM - len(NORM_FEATURES)
    if format_version < 2 and w is not None and w.shape[1] == old + 2 * _POS_FREQS + 1:
        state = {**state, "node_in.weight": torch.cat([w[:, :old], w.new_zeros(w.shape[0], len(NORM_FEATURES)),
                                                       w[:, old:]], 1)}
    return state


def dgl_available() -> bool:
    try:
        import dgl  # noqa: F401
    except Exception:  # noqa: BLE001 - DGL fails with ImportError, OSError or FileNotFoundError by torch version
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "dgl" if dgl_available() else "torch"
    if backend == "dgl" and not dgl_available():
        raise PeaceError("backend 'dgl' asked for but DGL cannot be imported here (it needs torch <= 2.2.1, "
                         "CPU); use backend 'torch' (same parameters, any device)")
    return backend


def sinusoid(x: Tensor, freqs: int) -> Tensor:
    """(..., 2 * freqs) sin/cos features of a real-valued position, frequencies pi * 2^k."""
    w = torch.exp2(torch.arange(freqs, device=x.device, dtype=torch.float32))
    a = x.float().unsqueeze(-1) * w * math.pi
    return torch.cat([a.sin(), a.cos()], -1)


def prepare(spec: ArchSpec, params: dict[str, Tensor], config: EncoderConfig) -> NeuralGraph:
    """The graph the encoder reads for one model (canonical form first when configured)."""
    if config.canonicalize:
        params = canonicalize(spec, params)
    return neural_graph(spec, params, config.edge_dim, oversize="pool", max_layer_edges=config.max_layer_edges)


def prepare_batch(specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]], config: EncoderConfig) -> GraphBatch:
    """The batched graphs of many models, in order: the graphs ``prepare`` makes, with the models of
    one architecture built as one population (``graph.population_graph``: one structure for all)."""
    groups = positions(specs)
    graphs, order = [], []
    for spec, idx in groups.items():
        if len(idx) > 1 and spec.family != "vit" and not sparse_layers(spec, config.max_layer_edges):
            group = stack_params([params[i] for i in idx])
            if config.canonicalize:
                group = canonicalize(spec, group, population=True)
            graphs.append(population_graph(spec, group, config.edge_dim, oversize="pool"))
        else:
            graphs += [prepare(spec, params[i], config) for i in idx]
        order += idx
    return batch_graphs(graphs, order)


@dataclass
class ModelBatch:
    """What the encoder reads for a batch of models: their graphs and, with function tokens, their
    class probabilities on the probe inputs (zero-padded to the batch's largest class count)."""

    graphs: GraphBatch
    responses: Tensor | None = None  # (G, probes, C_max)
    classes: Tensor | None = None    # (G, C_max) bool: which columns are real classes
    sketch: Tensor | None = None     # (G, function_block) function-space sketches


def pad_responses(responses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(G, K, C_max) zero-padded responses and the (G, C_max) mask of real classes."""
    c_max = max(r.shape[1] for r in responses)
    out = torch.zeros(len(responses), responses[0].shape[0], c_max)
    mask = torch.zeros(len(responses), c_max, dtype=torch.bool)
    for i, r in enumerate(responses):
        out[i, :, :r.shape[1]] = r
        mask[i, :r.shape[1]] = True
    return out, mask


class Embedder(nn.Module):
    """What every encoder shares: the embedding / projection / auxiliary heads, their buffers and
    ``embed``. Subclasses define ``batch(specs, params, device)`` and ``encode(batch) -> (G, hidden)``."""

    def _init_heads(self, c: EncoderConfig) -> None:
        H, n_aux = c.hidden, max(1, len(c.aux_targets))
        self.to_embedding = mlp(H, H, c.embedding_dim)
        self.projection = mlp(c.embedding_dim, H, c.projection_dim) if c.projection_dim else None
        self.aux_head = nn.Linear(c.embedding_dim, n_aux) if c.aux_linear \
            else mlp(c.embedding_dim, H, n_aux)
        self.register_buffer("aux_mean", torch.zeros(n_aux))
        self.register_buffer("aux_std", torch.ones(n_aux))
        self.probe_bank = ProbeBank()  # learned probe inputs per io-space (empty: Gaussian probes everywhere)

    def responses(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]]) -> list[Tensor]:
        """Class probabilities of the models on the probes this encoder reads (``config.probes`` per
        io-space: its probe bank's where it holds some, Gaussian ones elsewhere)."""
        return probe_responses(specs, params, self.config.probes, inputs=self.probe_bank.inputs())

    def forward(self, batch) -> dict[str, Tensor]:
        """``embedding`` (G, output_dim): the learned embedding, followed by the function-space sketch
        when the config has a function block (both unit norm, weighted so that the sketch carries
        ``function_block_weight`` of the cosine); ``learned`` (G, embedding_dim): the learned part alone;
        ``projection`` (G, projection_dim, unit norm: what the contrastive loss reads; the normalized
        learned embedding without a head); ``aux`` (G, n_aux)."""
        emb = self.to_embedding(self.encode(batch))
        proj = emb if self.projection is None else self.projection(emb)
        out = {"embedding": emb, "learned": emb, "projection": F.normalize(proj.float(), dim=-1), "aux": self.aux_head(emb)}
        c = self.config
        if c.function_block:
            a = c.function_block_weight
            out["embedding"] = torch.cat([math.sqrt(1 - a) * F.normalize(emb.float(), dim=-1),
                                          math.sqrt(a) * F.normalize(batch.sketch.float(), dim=-1)], -1)
        return out

    @torch.no_grad()
    def _outputs(self, key: str, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]],
                 batch_size: int) -> Tensor | None:
        """``forward(...)[key]`` of every model in eval mode, on CPU, in the given order; computed in
        batches of models sorted by architecture (each batch's graphs then share a few structures)."""
        if not len(specs):
            return None
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        first: dict[ArchSpec, int] = {}
        order = sorted(range(len(specs)), key=lambda i: (first.setdefault(specs[i], len(first)), i))
        out = []
        for s in range(0, len(order), batch_size):
            part = order[s:s + batch_size]
            out.append(self(self.batch([specs[i] for i in part], [params[i] for i in part], device))[key].float().cpu())
        self.train(was)
        res = torch.cat(out)
        return res[torch.argsort(torch.tensor(order))]

    def embed(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]], batch_size: int = 128) -> Tensor:
        """(n, output_dim) embeddings of models, on CPU, computed in eval mode."""
        out = self._outputs("embedding", specs, params, batch_size)
        return torch.zeros(0, self.config.output_dim) if out is None else out

    def predict(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]], batch_size: int = 128) -> Tensor:
        """(n, len(aux_targets)) the auxiliary head's predictions of the metrics it was trained on
        (``config.aux_targets``, e.g. test accuracy), in their own units."""
        out = self._outputs("aux", specs, params, batch_size)
        return torch.zeros(0, len(self.aux_mean)) if out is None else out * self.aux_std.cpu() + self.aux_mean.cpu()


class PeaceEncoder(Embedder):
    """Neural graphs of any supported architecture -> embeddings (plus projection and metric heads).

    Buffers hold the weight-standardization statistics (fit on the training zoo with
    :meth:`fit_standardization`) so a saved encoder reads new models exactly as it read its training zoo.
    """

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = c = config or EncoderConfig()
        H = c.hidden
        edge_in = c.edge_dim + len(EDGE_KINDS)
        self.node_in = nn.Linear(NODE_DIM + 2 * _POS_FREQS + 1, H)
        self.rounds = nn.ModuleList(MESSAGES[c.message](H, edge_in, c.aggregation) for _ in range(c.rounds))
        self.readout = mlp(2 * H, H, H)
        self.depth_in = nn.Linear(2 * _DEPTH_FREQS, H)
        self.transformer = (nn.TransformerEncoder(
            nn.TransformerEncoderLayer(H, c.heads, 2 * H, dropout=0.0, batch_first=True, norm_first=True),
            c.transformer_layers, enable_nested_tensor=False) if c.transformer_layers else None)
        self.cls = nn.Parameter(torch.zeros(1, 1, H)) if c.pooling == "cls" else None
        self.attn = nn.Linear(H, 1) if c.pooling == "attention" else None
        if c.function_tokens:  # one token per network from its per-class response columns
            self.fn_in = mlp(c.probes + 2 * _POS_FREQS, H, H)
            self.fn_readout = mlp(2 * H, H, H)
            self.fn_type = nn.Parameter(torch.zeros(H))
        self._init_heads(c)
        self.register_buffer("edge_scale", torch.ones(len(EDGE_KINDS)))
        self.register_buffer("bias_mean", torch.zeros(()))
        self.register_buffer("bias_std", torch.ones(()))
        self.backend = resolve_backend(c.backend)

    # --- inputs ---------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_standardization(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]]) -> None:
        """Weight scale per edge kind (zero padding stays zero) and bias mean/std from training models."""
        graphs = [prepare(s, p, self.config) for s, p in zip(specs, params)]
        k = self.config.edge_dim
        edges = torch.cat([g.edge_feat for g in graphs])
        for i in range(len(EDGE_KINDS)):
            v = edges[edges[:, k + i] == 1, :k]
            v = v[v != 0]
            self.edge_scale[i] = v.pow(2).mean().sqrt().clamp_min(1e-6) if v.numel() else 1.0
        b = torch.cat([g.node_feat[g.node_layer > 0, 0] for g in graphs])
        self.bias_mean.fill_(b.mean() if b.numel() else 0.0)
        self.bias_std.fill_(b.std().clamp_min(1e-6) if b.numel() > 1 else 1.0)

    def _node_inputs(self, g: NeuralGraph) -> Tensor:
        x = g.node_feat.clone()
        x[:, 0] = torch.where(g.node_layer > 0, (x[:, 0] - self.bias_mean) / self.bias_std, x[:, 0])
        known = (g.node_pos >= 0).float().unsqueeze(1)
        return torch.cat([x, sinusoid(g.node_pos.clamp_min(0).float() / _POS_SCALE, _POS_FREQS) * known, known], 1)

    def _edge_inputs(self, feat: Tensor) -> Tensor:
        """Edge features ``feat`` (rows of ``NeuralGraph.edge_feat``) with values divided by their kind's scale."""
        k = self.config.edge_dim
        kind = feat[:, k:]
        return torch.cat([feat[:, :k] / (kind @ self.edge_scale).unsqueeze(1), kind], 1)

    # --- forward --------------------------------------------------------------------------------

    def node_states(self, graphs: GraphBatch) -> Tensor:
        """(N, hidden): every neuron's state after message passing, before any pooling (equivariant)."""
        g = graphs.graphs
        h = self.node_in(self._node_inputs(g))
        return self._message_passing(h, graphs) if self.rounds else h

    def encode(self, batch: ModelBatch) -> Tensor:
        """(G, hidden): message passing, per-layer readout, Transformer across layers (and the
        function token), pooling."""
        h = self.node_states(batch.graphs)
        tokens, valid, depth = self._layer_tokens(h, batch.graphs.graphs, batch.graphs)
        x = tokens + self.depth_in(sinusoid(depth, _DEPTH_FREQS))
        if self.config.function_tokens:
            if batch.responses is None:
                raise PeaceError("this encoder reads function tokens: build its input with encoder.batch(...)")
            f = self._function_token(batch.responses, batch.classes) + self.fn_type
            x = torch.cat([x, f.unsqueeze(1).to(x.dtype)], 1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
        return self._pool(x, valid)

    def _function_token(self, r: Tensor, classes: Tensor) -> Tensor:
        """(G, hidden) from (G, K, C) responses: each class's column of probabilities with its
        position encoding, through an MLP, then mean + max over the real classes."""
        G, K, C = r.shape
        pos = sinusoid(torch.arange(C, device=r.device).float() / _POS_SCALE, _POS_FREQS)
        h = self.fn_in(torch.cat([r.transpose(1, 2), pos.expand(G, C, -1)], -1)).float()
        m = classes.unsqueeze(-1)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1)
        mx = h.masked_fill(~m, float("-inf")).amax(1)
        return self.fn_readout(torch.cat([mean, mx], -1))

    def _message_passing(self, h: Tensor, batch: GraphBatch) -> Tensor:
        g, blocks = batch.graphs, batch.blocks
        ones = torch.ones(g.num_edges, device=h.device)
        deg_in = torch.zeros(g.num_nodes, device=h.device).index_add_(0, g.dst, ones).unsqueeze(1)
        deg_out = torch.zeros(g.num_nodes, device=h.device).index_add_(0, g.src, ones).unsqueeze(1)
        # the edges outside dense blocks, gathered and scaled once for every round; the blocks read theirs
        # unscaled (``g.edge_feat``) and fold their kind's scale into the message's weights
        src, dst, e_rest = (g.src, g.dst, g.edge_feat) if batch.rest is None else (
            g.src[batch.rest], g.dst[batch.rest], g.edge_feat[batch.rest])
        e_rest = self._edge_inputs(e_rest)
        if self.backend == "dgl" and g.num_edges <= DGL_MAX_EDGES:
            if h.device.type != "cpu":
                raise PeaceError("the DGL backend runs on CPU only here; use backend 'torch' on GPU")
            import dgl

            dg = dgl.graph((src, dst), num_nodes=g.num_nodes)
            rg = dgl.graph((dst, src), num_nodes=g.num_nodes)
            for layer in self.rounds:
                h = layer.forward_dgl(h, e_rest, dg, rg, deg_in, deg_out, blocks, g.edge_feat, self.edge_scale)
            return h
        for layer in self.rounds:
            h = layer.forward_torch(h, e_rest, src, dst, deg_in, deg_out, blocks, g.edge_feat, self.edge_scale)
        return h

    def _layer_tokens(self, h: Tensor, g: NeuralGraph, batch: GraphBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(G, T, H) per-layer readouts z_l (mean and max over the layer's nodes), padding mask, depth l / L."""
        T = int(batch.n_layers.max()) + 1
        G, H = batch.num_graphs, h.shape[1]
        seg = batch.node_graph * T + g.node_layer
        h = h.float()
        count = torch.zeros(G * T, device=h.device).index_add_(0, seg, torch.ones_like(seg, dtype=torch.float))
        mean = torch.zeros(G * T, H, device=h.device).index_add_(0, seg, h) / count.clamp_min(1).unsqueeze(1)
        mx = torch.zeros(G * T, H, device=h.device).scatter_reduce(0, seg.unsqueeze(1).expand(-1, H), h, "amax",
                                                                   include_self=False)
        tokens = self.readout(torch.cat([mean, mx], 1)).reshape(G, T, H)
        valid = (count > 0).reshape(G, T)
        depth = torch.arange(T, device=h.device).float() / batch.n_layers.to(h.device).float().unsqueeze(1)
        return tokens, valid, depth

    def _pool(self, x: Tensor, valid: Tensor) -> Tensor:
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)
            valid = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
        if self.transformer is not None:
            x = self.transformer(x, src_key_padding_mask=~valid)
        if self.config.pooling == "cls":
            return x[:, 0]
        if self.config.pooling == "attention":
            w = self.attn(x).squeeze(-1).float().masked_fill(~valid, float("-inf")).softmax(1)
            return (w.unsqueeze(-1) * x.float()).sum(1)
        v = valid.float().unsqueeze(-1)
        return (x.float() * v).sum(1) / v.sum(1)

    # --- convenience ----------------------------------------------------------------------------

    def batch(self, specs: Sequence[ArchSpec], params: Sequence[dict[str, Tensor]],
              device: torch.device | str = "cpu", responses: Sequence[Tensor] | None = None) -> ModelBatch:
        """Prepare and batch models for :meth:`forward`, on ``device``. ``responses`` (from
        :meth:`responses`) saves recomputing them."""
        c = self.config
        graphs = prepare_batch(specs, params, c)
        r = classes = sk = None
        if (c.function_tokens or c.function_block) and responses is None:
            responses = self.responses(specs, params)
        if c.function_tokens:
            r, classes = pad_responses(responses)
        if c.function_block:
            spaces = [io_space(s) for s in specs]
            sk = sketch(responses, spaces, c.function_block, projection=c.function_block_projection)
        return to_device(ModelBatch(graphs, r, classes, sk), device)

    def describe(self) -> dict:
        return {"config": asdict(self.config), "backend": self.backend,
                "parameters": sum(p.numel() for p in self.parameters())}


def to_device(batch: ModelBatch, device: torch.device | str) -> ModelBatch:
    gb = batch.graphs
    if torch.device(device).type == "cpu" and gb.node_graph.device.type == "cpu":
        return batch
    g = gb.graphs
    moved = NeuralGraph(*(getattr(g, f).to(device) for f in ("src", "dst", "node_feat", "edge_feat", "node_layer",
                                                              "node_pos", "edge_layer")), g.n_layers)
    graphs = GraphBatch(moved, gb.node_graph.to(device), gb.n_layers.to(device), gb.num_graphs, gb.blocks,
                        None if gb.rest is None else gb.rest.to(device))
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return ModelBatch(graphs, move(batch.responses), move(batch.classes), move(batch.sketch))
