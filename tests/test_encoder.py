"""The encoder: both message-passing backends agree, embeddings are exactly symmetry invariant."""
import pytest
import torch
import torch.nn.functional as F
from conftest import MODELS, random_model

from peace.core.errors import PeaceError
from peace.learn.encoder import EncoderConfig, ModelBatch, PeaceEncoder, dgl_available, prepare
from peace.learn.runconfig import load_config
from peace.nets.graph import batch_graphs
from peace.nets.probes import agreement
from peace.nets.symmetry import RandomSymmetry, allowed, random_symmetry

IDS = [f"{t}-{kw['family']}-{kw['activation']}" for t, kw in MODELS]


def _encoder(seed=0, **kw):
    torch.manual_seed(seed)
    return PeaceEncoder(EncoderConfig(backend="torch", hidden=32, **kw)).eval()


def _models(n_seeds=2):
    out = []
    for i, (t, kw) in enumerate(MODELS):
        for s in range(n_seeds):
            _, spec, params = random_model(t, kw, seed=10 * i + s)
            out.append((spec, params))
    return out


@pytest.mark.skipif(not dgl_available(), reason="DGL is not installed (GPU machine); CI runs this")
@pytest.mark.parametrize("kw", [{}, {"aggregation": "sum", "pooling": "cls"}, {"pooling": "mean", "canonicalize": False},
                                {"function_tokens": True, "probes": 16, "projection_dim": 0}, {"message": "gated"}])
def test_dgl_and_torch_backends_agree(kw):
    models = _models()
    torch_enc = _encoder(**kw)
    torch_enc.fit_standardization(*zip(*models))
    dgl_enc = PeaceEncoder(EncoderConfig(backend="dgl", hidden=32, **kw)).eval()
    dgl_enc.load_state_dict(torch_enc.state_dict())
    assert dgl_enc.backend == "dgl" and torch_enc.backend == "torch"
    specs, params = zip(*models)
    a, b = torch_enc.embed(specs, params), dgl_enc.embed(specs, params)
    assert (a - b).abs().max() <= 1e-5
    # the gradients agree too: one parameter set trains identically on either backend
    grads = []
    for enc in (torch_enc, dgl_enc):
        enc.zero_grad()
        enc(enc.batch(specs, params))["projection"].pow(3).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", range(len(MODELS)), ids=IDS)
@pytest.mark.parametrize("tokens,message", [(False, "mlp"), (True, "mlp"), (False, "gated")],
                         ids=["graph", "graph+function", "gated-graph"])
def test_embedding_is_exactly_invariant_to_every_allowed_symmetry(case, tokens, message):
    _, spec, params = random_model(*MODELS[case], seed=case)
    enc = _encoder(function_tokens=tokens, probes=32, function_block=16 if tokens else 0, message=message)
    base = enc.embed([spec], [params])
    moved = [random_symmetry(spec, params, seed=s) for s in range(4)]  # permutation + scaling / flips allowed
    emb = enc.embed([spec] * 4, moved)
    assert F.cosine_similarity(emb, base).min() >= 0.9999
    assert (emb - base).abs().max() < 1e-3 * base.abs().max()


@pytest.mark.parametrize("case", range(len(MODELS)), ids=IDS)
def test_without_canonicalization_permutations_stay_exact(case):
    _, spec, params = random_model(*MODELS[case], seed=case)
    enc = _encoder(canonicalize=False)
    base = enc.embed([spec], [params])
    perm = [random_symmetry(spec, params, seed=s, kind=RandomSymmetry(scale=False, flip=False)) for s in range(3)]
    assert F.cosine_similarity(enc.embed([spec] * 3, perm), base).min() >= 0.9999


def test_canonicalization_is_what_removes_scaling():
    """The test above can fail: without canonical form a relu network's rescaling moves its embedding."""
    _, spec, params = random_model(*MODELS[1])
    assert allowed(spec)["scale"]
    scaled = random_symmetry(spec, params, seed=1, kind=RandomSymmetry(permute=False, scale=True, log_scale_std=1.5))
    off, on = _encoder(canonicalize=False), _encoder(canonicalize=True)
    moved_off = (off.embed([spec], [scaled]) - off.embed([spec], [params])).abs().max()
    moved_on = (on.embed([spec], [scaled]) - on.embed([spec], [params])).abs().max()
    assert moved_on < 1e-4 and moved_off > 1e-3 and moved_off > 100 * moved_on


def test_input_neurons_keep_their_identity():
    """Permuting input features changes the function, and the embedding (no over-symmetrization)."""
    _, spec, params = random_model(*MODELS[1])
    w = params["layers.0.weight"]
    swapped = dict(params, **{"layers.0.weight": w[:, torch.randperm(w.shape[1], generator=torch.Generator().manual_seed(0))]})
    hidden_perm = random_symmetry(spec, params, seed=0, kind=RandomSymmetry(scale=False, flip=False))
    enc = _encoder()
    base = enc.embed([spec], [params])
    moved_inputs = (enc.embed([spec], [swapped]) - base).abs().max()
    float_noise = (enc.embed([spec], [hidden_perm]) - base).abs().max()
    assert moved_inputs > 1e-6 and moved_inputs > 20 * float_noise  # an untrained encoder: small but real


def test_node_states_move_with_the_neurons_they_belong_to():
    """The per-neuron states before pooling are equivariant: permuting hidden units permutes their
    states (each layer's set of states is the same), inputs and outputs keep theirs."""
    _, spec, params = random_model(*MODELS[1])
    moved = random_symmetry(spec, params, seed=2, kind=RandomSymmetry(scale=False, flip=False))
    enc = _encoder(canonicalize=False)
    (a, ga), (b, gb) = [(enc.node_states(batch_graphs([prepare(spec, p, enc.config)])), prepare(spec, p, enc.config))
                        for p in (params, moved)]
    assert torch.equal(ga.node_layer, gb.node_layer)
    fixed = ga.node_pos >= 0
    torch.testing.assert_close(a[fixed], b[fixed], atol=1e-5, rtol=1e-5)
    hidden = ~fixed
    assert not torch.allclose(a[hidden], b[hidden], atol=1e-3)  # the permutation moved them ...
    for layer in ga.node_layer[hidden].unique():  # ... within their layer, as a set
        sa, sb = (x[(ga.node_layer == layer) & hidden] for x in (a, b))
        torch.testing.assert_close(sa[sa[:, 0].argsort()], sb[sb[:, 0].argsort()], atol=1e-5, rtol=1e-5)


def test_function_tokens_see_the_function_and_batch_independently():
    """Relabelling the classes (the last layer's rows) is another function: the function token moves
    the embedding far more than float noise; responses passed in equal those computed inside."""
    from peace.nets.probes import responses

    _, spec, params = random_model(*MODELS[1])
    last = spec.layers[-1]
    perm = torch.tensor([2, 0, 3, 1])
    relabelled = dict(params, **{last.weight_name: params[last.weight_name][perm], last.bias_name: params[last.bias_name][perm]})
    enc = _encoder(function_tokens=True, probes=32, rounds=0, transformer_layers=0)
    base = enc.embed([spec], [params])
    noise = (enc.embed([spec], [random_symmetry(spec, params, seed=0)]) - base).abs().max()
    assert (enc.embed([spec], [relabelled]) - base).abs().max() > 100 * max(noise, 1e-8)
    models = _models(n_seeds=1)
    specs, ps = zip(*models)
    given = enc(enc.batch(specs, ps, responses=responses(specs, ps, 32)))["embedding"]
    assert torch.allclose(given, enc.embed(specs, ps), atol=1e-5)
    assert torch.allclose(enc.embed(specs, ps), torch.cat([enc.embed([s], [p]) for s, p in models]), atol=1e-5)
    with pytest.raises(PeaceError, match="function tokens"):
        enc(enc.batch(specs, ps).__class__(enc.batch(specs, ps).graphs))


def test_one_encoder_mixes_architectures_and_batches_independently():
    """Whatever the order and the company (populations of one architecture are built together)."""
    models = _models(n_seeds=2)
    models = models[::2] + models[1::2]  # the two models of each architecture far apart
    specs, params = zip(*models)
    for pooling in ("attention", "cls", "mean"):
        enc = _encoder(pooling=pooling)
        together = enc.embed(specs, params)
        alone = torch.cat([enc.embed([s], [p]) for s, p in models])
        assert torch.allclose(together, alone, atol=1e-5)
        assert torch.allclose(enc.embed(specs, params, batch_size=3), together, atol=1e-5)
        sim = F.cosine_similarity(together.unsqueeze(1), together.unsqueeze(0), dim=-1)
        other = torch.tensor([[a != b for b in specs] for a in specs])
        assert sim[other].max() < 0.99999  # different architectures differ
    assert together.shape == (len(models), 64)


@pytest.mark.parametrize("message", ["mlp", "gated"])
@pytest.mark.parametrize("backend", ["torch", "dgl"])
def test_populations_take_the_dense_path_with_the_same_outputs_and_gradients(backend, message):
    """Models of one architecture in a batch become dense blocks (messages by broadcasting, not per
    edge): the embeddings and every parameter's gradient equal those of per-edge message passing."""
    if backend == "dgl" and not dgl_available():
        pytest.skip("DGL is not installed (GPU machine); CI runs this")
    models = _models(n_seeds=3)
    torch.manual_seed(0)
    enc = PeaceEncoder(EncoderConfig(backend=backend, hidden=32, message=message))
    dense = enc.batch(*zip(*models))
    plain = ModelBatch(batch_graphs([prepare(s, p, enc.config) for s, p in models]))
    assert len(dense.graphs.blocks) > 10 and len(dense.graphs.rest) < plain.graphs.graphs.num_edges / 2
    assert not plain.graphs.blocks and plain.graphs.rest is None
    weight = torch.randn(len(models), enc.config.output_dim)
    results = []
    for batch in (dense, plain):
        enc.zero_grad()
        out = enc(batch)["embedding"]
        (out * weight).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in enc.parameters() if p.grad is not None]))
    (out_d, grads_d), (out_p, grads_p) = results
    torch.testing.assert_close(out_d, out_p, atol=1e-5, rtol=1e-5)
    assert len(grads_d) == len(grads_p) > 10
    for a, b in zip(grads_d, grads_p):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # in-place arithmetic without autograd: the same again
        torch.testing.assert_close(enc(dense)["embedding"], out_p, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("message", ["mlp", "gated"])
@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_a_round_of_message_passing_is_its_definition_edge_by_edge(aggregation, message):
    """One round against its written definition, one message at a time: messages W2 psi + b2 (psi an
    MLP of both ends and the edge, or the sender gated by the edge), summed or averaged per node, then
    h <- LN(h + phi([h, forward aggregate, backward aggregate])); a node without messages gets zeros."""
    from peace.learn.encoder import MESSAGES

    torch.manual_seed(0)
    N, H, E, K = 7, 8, 15, 5
    layer = MESSAGES[message](H, K + 4, aggregation).double()
    h, e = torch.randn(N, H, dtype=torch.float64), torch.randn(E, K + 4, dtype=torch.float64)
    src, dst = torch.randint(0, N - 1, (E,)), torch.randint(0, N - 1, (E,))  # node N - 1 has no edge
    deg_in = torch.bincount(dst, minlength=N).double().unsqueeze(1)
    deg_out = torch.bincount(src, minlength=N).double().unsqueeze(1)
    with torch.no_grad():
        got = layer.forward_torch(h, e, src, dst, deg_in, deg_out)
        d, s = layer.dst_lin(h), layer.src_lin(h)
        msgs = {"fwd": [[] for _ in range(N)], "bwd": [[] for _ in range(N)]}
        for k in range(E):
            i, j = int(dst[k]), int(src[k])  # the edge j -> i
            if message == "mlp":
                psi = F.silu(d[i] + s[j] + layer.edge_lin(e[k]))
            else:
                gate = layer.edge_lin(e[k]) + layer.abs_lin(e[k, :K].abs())
                psi = torch.cat([gate[:H] * s[j], gate[H:] * d[i]])
            msgs["fwd"][i].append(layer.out_fwd(psi[:H]))
            msgs["bwd"][j].append(layer.out_bwd(psi[H:]))
        reduce = {"mean": lambda m: torch.stack(m).mean(0), "sum": lambda m: torch.stack(m).sum(0)}[aggregation]
        agg = {k: torch.stack([reduce(m) if m else torch.zeros(H, dtype=h.dtype) for m in v]) for k, v in msgs.items()}
        want = layer.norm(h + layer.phi(torch.cat([h, agg["fwd"], agg["bwd"]], 1)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)  # the aggregates are float32


def test_heads_and_shapes():
    spec, params = _models(1)[0]
    enc = _encoder(embedding_dim=8, projection_dim=5, aux_targets=["test_acc", "gen_gap", "epoch"])
    out = enc(enc.batch([spec, spec], [params, params]))
    assert out["embedding"].shape == (2, 8) and out["projection"].shape == (2, 5) and out["aux"].shape == (2, 3)
    assert torch.allclose(out["projection"].norm(dim=1), torch.ones(2))
    fused = _encoder(embedding_dim=8, function_block=32, function_block_weight=0.75, probes=16)
    out = fused(fused.batch([spec, spec], [params, params]))
    assert out["embedding"].shape == (2, 40) and fused.config.output_dim == 40 and out["projection"].shape == (2, 64)
    assert torch.allclose(out["embedding"][:, :8].norm(dim=1) ** 2, torch.full((2,), 0.25))  # the block weighs 3/4
    assert fused.embed([spec], [params]).shape == (1, 40)
    with pytest.raises(PeaceError, match="function"):
        EncoderConfig(kind="mlp", function_block=8)
    (sa, pa), (sb, pb) = _models(1)[0], _models(2)[1]
    roomy = _encoder(embedding_dim=8, function_block=64, function_block_weight=0.75, probes=16,
                     function_block_projection="orthogonal")  # 16 probes x 4 classes in 64 numbers: exact
    z = roomy.embed([sa, sb], [pa, pb])[:, 8:]
    ra, rb = roomy.responses([sa, sb], [pa, pb])
    assert abs(float(z[0] @ z[1]) / 0.75 - agreement(ra, rb)) < 1e-5
    with pytest.raises(PeaceError, match="unknown function-block projection 'pca'"):
        EncoderConfig(function_block_projection="pca")
    linear = _encoder(embedding_dim=8, aux_linear=True)  # metrics linearly readable from the embedding
    assert isinstance(linear.aux_head, torch.nn.Linear) and linear(linear.batch([spec], [params]))["aux"].shape == (1, 2)
    headless = _encoder(embedding_dim=8, projection_dim=0)  # the loss reads the embedding itself
    out = headless(headless.batch([spec], [params]))
    assert headless.projection is None and torch.allclose(out["projection"], F.normalize(out["embedding"], dim=1))


def test_bad_encoder_configs_are_named():
    with pytest.raises(PeaceError, match="unknown pooling 'max'; valid: attention, cls, mean"):
        EncoderConfig(pooling="max")
    with pytest.raises(PeaceError, match="unknown message function 'attention'; valid: gated, mlp"):
        EncoderConfig(message="attention")
    with pytest.raises(PeaceError, match="divisible by heads"):
        EncoderConfig(hidden=30, heads=4)
    with pytest.raises(PeaceError, match="unknown config key in override 'encoder.colour'.*hidden"):
        load_config("tiny", ["encoder.colour=red"])
    with pytest.raises(PeaceError, match="unknown key in encoder 'depth'"):
        from peace.learn.runconfig import config_from_dict
        config_from_dict({"encoder": {"depth": 3}})
    with pytest.raises(PeaceError, match="unknown encoder config 'huge'"):
        load_config("huge")


def test_long_edges_are_pooled_and_bad_weights_refused():
    _, spec, params = random_model("mnist1d", dict(family="cnn1d", hidden=(3,), activation="relu", pool="none"))
    enc = _encoder(edge_dim=4)  # flatten blocks carry 40 values: pooled to 4, still exactly invariant
    moved = random_symmetry(spec, params, seed=0)
    assert F.cosine_similarity(enc.embed([spec], [moved]), enc.embed([spec], [params])).item() >= 0.9999
    bad = dict(params, **{"layers.0.weight": params["layers.0.weight"].clone().fill_(float("nan"))})
    with pytest.raises(PeaceError, match="layers.0.weight"):
        _encoder().embed([spec], [bad])
