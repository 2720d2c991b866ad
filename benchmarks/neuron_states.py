"""Is there a per-neuron latent already? Read each weight back from the frozen encoder's node states.

PEACE's embedding pools its neurons; before pooling, message passing leaves one state per neuron
(``PeaceEncoder.node_states``, equivariant: a permuted model permutes its states). This script trains a
readout on them, the way a per-neuron (SANE-like) decoder would: an MLP from (state of the receiving
neuron, state of the sending one, layer) to the edge's weight, and from a neuron's state to its bias,
in each layer's standardized units, on the run's training models of one MLP architecture (tasks held
out of training left out); the epoch with the lowest validation error is kept. Test models are rebuilt
from the predicted graph (``graph_to_params``) and judged by test accuracy, beside the run's pooled
decoder (``peace decoder``) on the same models.

    python benchmarks/neuron_states.py --run artifacts/runs/demo --arch "mlp 16-16-4 relu" "mlp 16-8-4 relu"
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peace.learn.encoder import prepare
from peace.learn.generation import accuracy, run_decoder
from peace.learn.run import RunDir
from peace.nets.graph import batch_graphs, graph_to_params
from peace.zoo.store import Zoo
from peace.zoo.tasks import load_task


def _states(enc, spec, params, grad: bool = False):
    graphs = [prepare(spec, p, enc.config) for p in params]
    gb = batch_graphs(graphs)
    with torch.set_grad_enabled(grad):
        return enc.node_states(gb).float(), gb.graphs, graphs


def study(run_dir: str, arch: str, epochs: int, seed: int, train_encoder: bool = False) -> dict:
    torch.manual_seed(seed)
    run = RunDir(run_dir)
    enc = run.load_encoder()
    zoo = Zoo(enc.meta["zoo"])
    rows = run.splits().merge(zoo.manifest.reset_index()[["model_id", "arch", "task"]], on="model_id")
    rows = rows[(rows["arch"] == arch) & ~rows["heldout_task"].astype(bool)]
    ids = {s: list(rows.loc[rows["split"] == s, "model_id"]) for s in ("train", "val", "test")}
    spec = zoo.spec(ids["train"][0])
    params = {s: zoo.load_many(v) for s, v in ids.items()}
    dec, _ = run_decoder(run.path)  # the baseline: the run's pooled decoder on the run's own encoder
    pooled = dec.decode(enc.embed([spec] * len(params["test"]), params["test"]), spec)
    data = {s: _states(enc, spec, p) for s, p in params.items()}
    h, g, _ = data["train"]
    L = int(g.edge_layer.max()) + 1
    e_mean = torch.stack([g.edge_feat[g.edge_layer == k, 0].mean() for k in range(L)])
    e_std = torch.stack([g.edge_feat[g.edge_layer == k, 0].std() for k in range(L)])
    b_mean = torch.stack([g.node_feat[g.node_layer == k, 0].mean() for k in range(L + 1)])
    b_std = torch.stack([g.node_feat[g.node_layer == k, 0].std() for k in range(L + 1)]).nan_to_num(1.0).clamp_min(1e-6)
    edge_mlp = nn.Sequential(nn.Linear(2 * h.shape[1] + L, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1))
    bias_mlp = nn.Sequential(nn.Linear(h.shape[1] + L + 1, 128), nn.GELU(), nn.Linear(128, 1))

    def inputs(h, g):
        return (torch.cat([h[g.dst], h[g.src], F.one_hot(g.edge_layer, L).float()], 1),
                torch.cat([h, F.one_hot(g.node_layer, L + 1).float()], 1))

    def targets(g):
        return ((g.edge_feat[:, 0] - e_mean[g.edge_layer]) / e_std[g.edge_layer],
                (g.node_feat[:, 0] - b_mean[g.node_layer]) / b_std[g.node_layer])

    def error(split):  # mean squared error of the edges in standardized units (1: no better than the mean)
        xe, _ = inputs(*data[split][:2])
        with torch.no_grad():
            return float(((edge_mlp(xe).squeeze(1) - targets(data[split][1])[0]) ** 2).mean())

    (xe, xn), (te, tb), hidden = inputs(h, g), targets(g), torch.nonzero(g.node_layer > 0).squeeze(1)
    trained = [*edge_mlp.parameters(), *bias_mlp.parameters()] + (list(enc.parameters()) if train_encoder else [])
    opt = torch.optim.Adam(trained, lr=1e-3)
    best = (np.inf, None)
    for _ in range(epochs):
        if train_encoder:  # the states trained for reconstruction too: 16 models a step
            enc.train()
            for chunk in torch.randperm(len(params["train"])).split(16):
                hb, gb_, _ = _states(enc, spec, [params["train"][i] for i in chunk], grad=True)
                (xe_b, xn_b), (te_b, tb_b) = inputs(hb, gb_), targets(gb_)
                hid = gb_.node_layer > 0
                loss = F.mse_loss(edge_mlp(xe_b).squeeze(1), te_b) + F.mse_loss(bias_mlp(xn_b[hid]).squeeze(1), tb_b[hid])
                opt.zero_grad()
                loss.backward()
                opt.step()
            enc.eval()
            data = {k: (*_states(enc, spec, params[k])[:2], v[2]) for k, v in data.items()}
        else:
            for idx in torch.randperm(len(xe)).split(4096):
                nodes = hidden[torch.randint(len(hidden), (512,))]
                loss = F.mse_loss(edge_mlp(xe[idx]).squeeze(1), te[idx]) + F.mse_loss(bias_mlp(xn[nodes]).squeeze(1),
                                                                                       tb[nodes])
                opt.zero_grad()
                loss.backward()
                opt.step()
        if error("val") < best[0]:
            best = (error("val"), copy.deepcopy((edge_mlp.state_dict(), bias_mlp.state_dict())), data["test"])
    edge_mlp.load_state_dict(best[1][0])
    bias_mlp.load_state_dict(best[1][1])
    data["test"] = best[2]
    h, g, graphs = data["test"]
    xe, xn = inputs(h, g)
    with torch.no_grad():
        edges = edge_mlp(xe).squeeze(1) * e_std[g.edge_layer] + e_mean[g.edge_layer]
        bias = bias_mlp(xn).squeeze(1) * b_std[g.node_layer] + b_mean[g.node_layer]
    rebuilt = []
    for k, gk in enumerate(graphs):
        gk = copy.copy(gk)
        ne, nn_ = gk.num_edges, gk.num_nodes
        gk.edge_feat, gk.node_feat = gk.edge_feat.clone(), gk.node_feat.clone()
        gk.edge_feat[:, 0] = edges[k * ne:(k + 1) * ne]
        gk.node_feat[gk.node_layer > 0, 0] = bias[k * nn_:(k + 1) * nn_][gk.node_layer > 0]
        rebuilt.append(graph_to_params(spec, gk))
    tasks = zoo.manifest.loc[ids["test"], "task"].to_numpy()
    acc = {k: np.zeros(len(tasks)) for k in ("original", "per-neuron", "pooled")}
    for t in set(tasks):
        i = np.flatnonzero(tasks == t)
        for name, models in (("original", params["test"]), ("per-neuron", rebuilt), ("pooled", pooled)):
            acc[name][i] = accuracy(spec, [models[j] for j in i], load_task(t))
    kept = {k: float(np.mean(acc[k] >= 0.9 * acc["original"])) for k in ("per-neuron", "pooled")}
    return {"arch": arch, "train / test models": f"{len(ids['train'])} / {len(ids['test'])}",
            "edge error, val": best[0], "edge error, test": error("test"), "original acc": acc["original"].mean(),
            "per-neuron acc": acc["per-neuron"].mean(), "per-neuron kept": kept["per-neuron"],
            "pooled decoder acc": acc["pooled"].mean(), "pooled decoder kept": kept["pooled"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--arch", nargs="+", required=True, help="MLP architectures (the manifest's arch column)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-encoder", action="store_true", help="train the message passing for reconstruction too "
                    "(from the run's weights): can the states hold the weights at all?")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for arch in args.arch:
        r = study(args.run, arch, args.epochs, args.seed, args.train_encoder)
        print("  ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
