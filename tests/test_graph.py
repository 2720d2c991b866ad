import pytest
import torch
from conftest import MODELS, random_model

from peace.core.errors import PeaceError
from peace.learn.encoder import dgl_available
from peace.nets.architectures import ArchSpec, PeaceNet, stack_params
from peace.nets.graph import (
    EDGE_KINDS,
    NODE_DIM,
    batch_dgl,
    batch_graphs,
    edge_dim_needed,
    graph_to_params,
    neural_graph,
    population_graph,
    sparse_layers,
)
from peace.nets.symmetry import canonicalize, hidden_sizes, transform

SPECS = [
    ArchSpec("mlp", (16,), 4, hidden=(5,), activation="tanh", bias=False),
    ArchSpec("mlp", (1, 8, 8), 10, hidden=(8, 6), activation="relu"),
    ArchSpec("cnn1d", (1, 40), 10, hidden=(3, 4), fc_hidden=(7,), activation="gelu", pool="max"),
    ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(2, 3), activation="leaky_relu", kernel_size=5),
]


def _params(spec, seed=0):
    torch.manual_seed(seed)
    return {k: v.detach() for k, v in PeaceNet(spec).state_dict().items()}


def _expected_edges(spec):
    n = 0
    for layer in spec.layers:
        n_in = layer.flatten_from[0] if layer.flatten_from else layer.in_features
        n += layer.out_features * n_in
    return n


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_counts_and_round_trip(spec):
    p = _params(spec)
    g = neural_graph(spec, p)
    assert g.num_nodes == spec.layers[0].in_features + sum(layer.out_features for layer in spec.layers)
    assert g.num_edges == _expected_edges(spec)
    assert g.node_feat.shape[1] == NODE_DIM and g.edge_feat.shape[1] == 25 + len(EDGE_KINDS)
    back = graph_to_params(spec, g)
    assert back.keys() == p.keys() and all(torch.equal(back[k], p[k]) for k in p)
    g2 = neural_graph(spec, back)
    for f in ("src", "dst", "node_feat", "edge_feat", "node_layer", "node_pos", "edge_layer"):
        assert torch.equal(getattr(g, f), getattr(g2, f))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_permuted_model_gives_the_same_graph_up_to_relabelling(spec):
    p = _params(spec)
    g = torch.Generator().manual_seed(1)
    perms = [torch.randperm(n, generator=g) for n in hidden_sizes(spec)]
    gp, gq = neural_graph(spec, p), neural_graph(spec, transform(spec, p, perms, None))
    # node relabelling: new hidden node j of layer i is old node perms[i][j]
    sizes = [spec.layers[0].in_features] + [layer.out_features for layer in spec.layers]
    offs = torch.tensor([0] + sizes).cumsum(0)
    new_to_old = torch.arange(gq.num_nodes)
    for i, perm in enumerate(perms):
        new_to_old[offs[i + 1]:offs[i + 2]] = perm + offs[i + 1]
    assert torch.equal(gq.node_feat, gp.node_feat[new_to_old])
    assert torch.equal(gq.node_pos, gp.node_pos[new_to_old])
    edges_p = {(int(s), int(d)): f for s, d, f in zip(gp.src, gp.dst, gp.edge_feat)}
    for s, d, f in zip(gq.src, gq.dst, gq.edge_feat):
        assert torch.equal(edges_p[(int(new_to_old[s]), int(new_to_old[d]))], f)
    assert not torch.equal(gp.edge_feat, gq.edge_feat)  # the raw arrays did change


@pytest.mark.skipif(not dgl_available(), reason="DGL is not installed (GPU machine); CI runs this")
def test_batches_agree_between_dgl_and_plain_arrays():
    graphs = [neural_graph(s, _params(s, i)) for i, s in enumerate(SPECS)]
    b = batch_graphs(graphs)
    dg = batch_dgl(graphs)
    assert dg.batch_size == len(graphs) and dg.num_nodes() == b.graphs.num_nodes == int(b.node_graph.numel())
    src, dst = dg.edges()
    assert torch.equal(src, b.graphs.src) and torch.equal(dst, b.graphs.dst)
    assert torch.equal(dg.ndata["feat"], b.graphs.node_feat) and torch.equal(dg.edata["feat"], b.graphs.edge_feat)
    assert torch.equal(dg.batch_num_nodes(), torch.bincount(b.node_graph))


@pytest.mark.parametrize("case", [m for m in MODELS if m[1]["family"] != "vit"],
                         ids=lambda m: f"{m[0]}-{m[1]['family']}-{m[1].get('norm', 'none')}")
def test_a_population_is_built_at_once_exactly_as_model_by_model(case):
    """Canonical forms and graphs of P models of one architecture, built as one population, equal
    those built one by one (BatchNorm folding, LayerNorm centring, dead units, pooled edges)."""
    models = [random_model(*case, seed=s)[1:] for s in range(3)]
    spec, ps = models[0][0], [p for _, p in models]
    ps[1] = {k: v * 3 if k.endswith("weight") else v for k, v in ps[1].items()}  # other norms, other factors
    canon = canonicalize(spec, stack_params(ps), population=True)
    for i, p in enumerate(ps):
        for k, v in canonicalize(spec, p).items():
            assert torch.equal(canon[k][i], v), k
    one_by_one = batch_graphs([neural_graph(spec, canonicalize(spec, p), 9, oversize="pool") for p in ps])
    at_once = batch_graphs([population_graph(spec, canon, 9, oversize="pool")])
    for f in ("src", "dst", "node_feat", "edge_feat", "node_layer", "node_pos", "edge_layer"):
        assert torch.equal(getattr(at_once.graphs, f), getattr(one_by_one.graphs, f)), f
    assert torch.equal(at_once.node_graph, one_by_one.node_graph) and torch.equal(at_once.n_layers, one_by_one.n_layers)
    assert not sparse_layers(spec, 2**15) and sparse_layers(spec, 4)
    with pytest.raises(PeaceError, match="one leading dimension"):
        population_graph(spec, {**canon, spec.layers[0].weight_name: canon[spec.layers[0].weight_name][:2]}, 9, "pool")


def test_a_batch_keeps_its_callers_order_whatever_order_graphs_are_built_in():
    graphs = [neural_graph(s, _params(s, i)) for i, s in enumerate(SPECS)]
    order = [2, 0, 3, 1]
    shuffled = batch_graphs([graphs[i] for i in order], order)
    plain = batch_graphs(graphs)
    assert torch.equal(shuffled.n_layers, plain.n_layers)
    for i, g in enumerate(graphs):  # graph i's nodes carry label i, whichever block holds them
        assert torch.equal(shuffled.graphs.node_feat[shuffled.node_graph == i], g.node_feat)
    with pytest.raises(PeaceError, match="permutation"):
        batch_graphs(graphs, [0, 0, 1, 2])


def test_bad_parameters_are_refused_before_graph_construction():
    spec = SPECS[1]
    p = _params(spec)
    for bad in (float("nan"), float("inf")):
        q = dict(p)
        q["layers.1.weight"] = q["layers.1.weight"].clone()
        q["layers.1.weight"][0, 0] = bad
        with pytest.raises(PeaceError, match="layers.1.weight contains NaN or Inf"):
            neural_graph(spec, q)
    with pytest.raises(PeaceError, match="missing \\['layers.2.bias'\\]"):
        neural_graph(spec, {k: v for k, v in p.items() if k != "layers.2.bias"})
    with pytest.raises(PeaceError, match="layers.0.weight has shape"):
        neural_graph(spec, {**p, "layers.0.weight": torch.zeros(3, 3)})
    with pytest.raises(PeaceError, match="dtype torch.int64"):
        neural_graph(spec, {**p, "layers.0.bias": torch.zeros(8, dtype=torch.long)})
    big = ArchSpec("cnn2d", (1, 8, 8), 10, hidden=(2,), kernel_size=7)
    assert edge_dim_needed(big) == 49
    with pytest.raises(PeaceError, match="raise edge_dim to at least 49"):
        neural_graph(big, _params(big))
