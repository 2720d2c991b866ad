"""One round of PEACE's message passing, in both directions of every edge, on two backends.

Per-edge messages gather node states and scatter sums (pure torch, any device; or DGL's kernels on
CPU). Models of one architecture batched as a population (``graph.DenseBlock``) take a third way for
their dense layers: the (P, n_out, n_in) messages by broadcasting, a few models at a time, which is
the same arithmetic without per-edge indexing.

Two message functions: ``MessagePassing`` (an MLP of both ends and the edge, the default) and
``GatedMessagePassing`` (the sender's state gated by the edge, linear in both: a dense layer's messages
are then matrix products, with no work per edge and channel).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peace.nets.graph import EDGE_KINDS, DenseBlock

__all__ = ["DENSE_CHUNK", "EDGE_CHUNK", "GatedMessagePassing", "MessagePassing", "add_block_sums", "mlp"]

EDGE_CHUNK = 2**18     # edges whose messages the pure-torch backend computes at once: memory O(chunk x hidden)
DENSE_CHUNK = 2**13    # edges of a population's dense layer computed at once (a measured sweep: 2^13-2^14 best)


def add_block_sums(agg_f: Tensor, agg_b: Tensor, sums: Sequence[tuple[DenseBlock, Tensor, Tensor]]
                   ) -> tuple[Tensor, Tensor]:
    """``agg_f`` / ``agg_b`` (N, H) plus each dense block's (P, n_out, H) forward and (P, n_in, H) backward sums
    on its receivers' rows: in place without autograd (a block's nodes are a strided view); under autograd
    one ``index_add`` per direction (adding into views, or one out-of-place add per block, would copy the
    whole (N, H) aggregate, or its gradient, once per block)."""
    if not torch.is_grad_enabled():
        for b, f, bw in sums:
            b.nodes(agg_f, True).add_(f)
            b.nodes(agg_b, False).add_(bw)
        return agg_f, agg_b
    if sums:
        device, H = agg_f.device, agg_f.shape[1]
        agg_f = agg_f.index_add(0, torch.cat([b.node_ids(True, device) for b, _, _ in sums]),
                                torch.cat([f.reshape(-1, H) for _, f, _ in sums]).to(agg_f.dtype))
        agg_b = agg_b.index_add(0, torch.cat([b.node_ids(False, device) for b, _, _ in sums]),
                                torch.cat([bw.reshape(-1, H) for _, _, bw in sums]).to(agg_b.dtype))
    return agg_f, agg_b


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear, SiLU, Linear: every small network of the encoder."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class MessagePassing(nn.Module):
    """One round, both directions: h_i <- LN(h_i + phi(h_i, agg_fwd, agg_bwd)).

    Messages are psi(h_dst, h_src, e) = W2 silu(A h_dst + B h_src + C e). Two exact rewrites keep
    the work per edge small: A h and B h are computed per node before gathering, and W2 (linear)
    is applied after aggregating, since it commutes with a sum or mean.
    """

    SENDER_MAPS = 2  # per-node maps of each end: [A | B'] and [B | A'] (the gated message needs only B', B)

    def __init__(self, hidden: int, edge_in: int, aggregation: str):
        super().__init__()
        self.aggregation = aggregation
        k = self.SENDER_MAPS
        self.dst_lin = nn.Linear(hidden, k * hidden)   # [A | B']: forward-message receiver, backward-message sender
        self.src_lin = nn.Linear(hidden, k * hidden, bias=False)  # [B | A']
        self.edge_lin = nn.Linear(edge_in, 2 * hidden, bias=False)  # [C | C']
        self.out_fwd, self.out_bwd = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)  # W2, W2'
        self.phi = mlp(3 * hidden, 2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def _update(self, h: Tensor, x: Tensor) -> Tensor:
        """h <- LN(h + phi([h, W2 agg_f + b2 n_f, W2' agg_b + b2' n_b])) from ``x`` = [agg_f, agg_b, n_f, n_b]
        (``_aggregates``). W2 and W2' are folded into phi's first layer (a (2H, 2H + 2) map of ``x``), so no
        per-node product by W2 and no concatenation with h."""
        H, w1 = h.shape[1], self.phi[0].weight
        w_f, w_b = w1[:, H:2 * H], w1[:, 2 * H:]
        fold = torch.cat([w_f @ self.out_fwd.weight, w_b @ self.out_bwd.weight,
                          (w_f @ self.out_fwd.bias).unsqueeze(1), (w_b @ self.out_bwd.bias).unsqueeze(1)], 1)
        z = torch.addmm(torch.addmm(self.phi[0].bias, h, w1[:, :H].T), x.to(h.dtype), fold.T)
        return self.norm(h + self.phi[2](F.silu(z)))

    def _aggregates(self, agg_f: Tensor, agg_b: Tensor, deg_in: Tensor, deg_out: Tensor) -> Tensor:
        """(N, 2H + 2) [agg_f, agg_b, n_f, n_b]: the sums (or means) of a node's forward / backward messages
        and how many times W2's bias counts in them: once per message for sums, once (or never, without
        messages) for means."""
        if self.aggregation == "mean":
            return torch.cat([agg_f / deg_in.clamp_min(1), agg_b / deg_out.clamp_min(1), (deg_in > 0).float(),
                              (deg_out > 0).float()], 1)
        return torch.cat([agg_f, agg_b, deg_in, deg_out], 1)

    def dense(self, d_all: Tensor, s_all: Tensor, e: Tensor, blocks: Sequence[DenseBlock],
              scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N, H) float32 sums of the forward / backward messages of populations' dense layers: for each
        block the (P, n_out, n_in) pre-activations by broadcasting, a few models at a time so they stay
        in cache, instead of gathering and scattering per edge (the same sums in another order). With
        ``scale`` (per edge kind), ``e`` is unscaled and each block's weights are divided by its kind's."""
        H, W, grad = d_all.shape[1] // 2, self.edge_lin.weight, torch.is_grad_enabled()
        agg_f = torch.zeros(d_all.shape[0], H, device=d_all.device)
        agg_b = torch.zeros(d_all.shape[0], H, device=d_all.device)
        steps = [0 if grad else max(1, DENSE_CHUNK // (b.n_out * b.n_in)) for b in blocks]  # models per chunk
        # without autograd every chunk's pre-activations reuse one buffer (no allocation per chunk)
        work = None if grad or not blocks or not d_all.dtype == e.dtype == W.dtype else d_all.new_empty(
            max(min(n, b.P) * b.n_out * b.n_in for n, b in zip(steps, blocks)) * 2 * H)
        sums: list[tuple[DenseBlock, Tensor, Tensor]] = []  # under autograd: each block's, added at the end
        for b, step in zip(blocks, steps):
            # an edge's input is [values, 0..., kind one-hot]: C e = C[:, :values] e[:values] + C[:, kind];
            # contiguous columns, or every broadcast below falls back to a scalar (unvectorized) loop
            c_values = (W[:, :b.values] if scale is None else W[:, :b.values] / scale[b.kind]).T.contiguous().T
            c_kind = W[:, e.shape[1] - len(EDGE_KINDS) + b.kind].contiguous()
            D, S, E = b.nodes(d_all, True) + c_kind, b.nodes(s_all, False), b.edges(e[:, :b.values])
            if grad:  # the whole block, each direction apart: autograd keeps every chunk's activations anyway,
                # and each slice of a large tensor would cost a zero-filled copy of it in the backward pass
                sums.append((b, self._activations(S[..., :H], D[..., :H], E, c_values[:H]).sum(2, dtype=torch.float32),
                             self._activations(S[..., H:], D[..., H:], E, c_values[H:]).sum(1, dtype=torch.float32)))
                continue
            into_f, into_b = b.nodes(agg_f, True), b.nodes(agg_b, False)  # strided views: added in place
            for a in range(0, b.P, step):
                n = min(step, b.P - a)
                out = None if work is None else work[:n * b.n_out * b.n_in * 2 * H].view(n, b.n_out, b.n_in, 2 * H)
                m = self._activations(S[a:a + n], D[a:a + n], E[a:a + n], c_values, out)
                into_f[a:a + n] += m[..., :H].sum(2, dtype=torch.float32)
                into_b[a:a + n] += m[..., H:].sum(1, dtype=torch.float32)
        return add_block_sums(agg_f, agg_b, sums)

    @staticmethod
    def _activations(S: Tensor, D: Tensor, E: Tensor, c: Tensor, out: Tensor | None = None) -> Tensor:
        """silu(S_j + C e_ij + D_i) of a block's (P, n_out, n_in) edges, (P, n_out, n_in, K): senders S
        (P, n_in, K), receivers D (P, n_out, K), edge values E (P, n_out, n_in, V), C = ``c`` (K, V). Written
        once (senders plus the edge term, then the receivers added in place), into ``out`` when given."""
        pre = torch.addcmul(S.unsqueeze(1), E, c[:, 0], out=out) if c.shape[1] == 1 \
            else torch.matmul(E, c.T, out=out).add_(S.unsqueeze(1))
        return F.silu(pre.add_(D.unsqueeze(2)), inplace=not torch.is_grad_enabled())

    def forward_torch(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor, deg_in: Tensor, deg_out: Tensor,
                      blocks: Sequence[DenseBlock] = (), raw: Tensor | None = None,
                      scale: Tensor | None = None) -> Tensor:
        """One round: per-edge messages over ``src -> dst`` carrying ``e``, plus the dense ``blocks``,
        which read their edges from ``raw`` (every edge of the batch, unscaled, and ``scale`` per edge
        kind; default ``e`` as it is)."""
        H = h.shape[1]
        d_all, s_all = self.dst_lin(h), self.src_lin(h)
        agg_f, agg_b = self.dense(d_all, s_all, e if raw is None else raw, blocks, scale)
        for a in range(0, len(src), EDGE_CHUNK):  # messages of a chunk of edges at a time: bounded memory
            b = a + EDGE_CHUNK
            m = self.messages(d_all, s_all, e[a:b], src[a:b], dst[a:b]).float()
            agg_f.index_add_(0, dst[a:b], m[:, :H])
            agg_b.index_add_(0, src[a:b], m[:, H:])
        return self._update(h, self._aggregates(agg_f, agg_b, deg_in, deg_out))

    def messages(self, d_all: Tensor, s_all: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """(E, 2H) [forward | backward] messages of the edges ``src -> dst`` carrying ``e``."""
        return F.silu(d_all[dst] + s_all[src] + self.edge_lin(e))

    def forward_dgl(self, h: Tensor, e: Tensor, g, rg, deg_in: Tensor, deg_out: Tensor,
                    blocks: Sequence[DenseBlock] = (), raw: Tensor | None = None,
                    scale: Tensor | None = None) -> Tensor:
        """The same round with DGL's kernels for the edges of ``g`` / ``rg`` (carrying ``e``)."""
        d_all, s_all = self.dst_lin(h), self.src_lin(h)
        agg_f, agg_b = self.dense(d_all, s_all, e if raw is None else raw, blocks, scale)
        if g.num_edges():
            self.dgl_messages(d_all, s_all, e, g, rg, agg_f, agg_b)
        return self._update(h, self._aggregates(agg_f, agg_b, deg_in, deg_out))

    def dgl_messages(self, d_all: Tensor, s_all: Tensor, e: Tensor, g, rg, agg_f: Tensor, agg_b: Tensor) -> None:
        """Add the messages of ``g``'s edges (carrying ``e``) to ``agg_f`` / ``agg_b``, with DGL's kernels."""
        import dgl.function as fn

        H = agg_f.shape[1]
        g.ndata["d"], g.ndata["s"] = d_all, s_all
        g.apply_edges(fn.v_add_u("d", "s", "t"))
        del g.ndata["d"], g.ndata["s"]
        m = F.silu(g.edata.pop("t") + self.edge_lin(e)).float()
        g.edata["m"], rg.edata["m"] = m[:, :H], m[:, H:]
        g.update_all(fn.copy_e("m", "m"), fn.sum("m", "agg"))
        rg.update_all(fn.copy_e("m", "m"), fn.sum("m", "agg"))
        agg_f += g.ndata.pop("agg")
        agg_b += rg.ndata.pop("agg")


class GatedMessagePassing(MessagePassing):
    """A round whose messages are the sender's state gated channel by channel by the edge:
    m_ij = (C e_ij + C' |w_ij|) * B h_j forward (and the same with the receiver's state backward).

    Linear in the sender and in the weights (|w| gives the gate a kink), so a dense layer's messages
    sum to matrix products, W @ (B h) per model (the network's own forward pass, on feature vectors): no
    work per edge and channel, where ``MessagePassing`` evaluates a SiLU on every one. The nonlinearity is the update's.
    """

    SENDER_MAPS = 1  # dst_lin: the backward messages' sender state; src_lin: the forward messages'

    def __init__(self, hidden: int, edge_in: int, aggregation: str):
        super().__init__(hidden, edge_in, aggregation)
        self.abs_lin = nn.Linear(edge_in - len(EDGE_KINDS), 2 * hidden, bias=False)  # the gate's |w| term

    def gates(self, e: Tensor) -> Tensor:
        """(E, 2H) [forward | backward] gates of edges with inputs ``e`` (values, then kind one-hot)."""
        return self.edge_lin(e) + self.abs_lin(e[:, :self.abs_lin.in_features].abs())

    def messages(self, d_all: Tensor, s_all: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        g = self.gates(e)
        H = s_all.shape[1]
        return torch.cat([g[:, :H] * s_all[src], g[:, H:] * d_all[dst]], 1)

    def dense(self, d_all: Tensor, s_all: Tensor, e: Tensor, blocks: Sequence[DenseBlock],
              scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N, H) float32 sums of the blocks' forward / backward messages: per block and direction one
        batched matrix product of [W, |W|] (P, n_out, n_in * 2V) with the sender states scaled by the
        gates' coefficients, added to the receivers' rows by ``add_block_sums``. ``scale``: as in
        ``MessagePassing.dense``."""
        H, kinds = s_all.shape[1], e.shape[1] - len(EDGE_KINDS)
        agg_f = torch.zeros(d_all.shape[0], H, device=d_all.device, dtype=torch.float32)
        agg_b = torch.zeros(d_all.shape[0], H, device=d_all.device, dtype=torch.float32)
        sums = []
        for b in blocks:
            coef = torch.cat([self.edge_lin.weight[:, :b.values], self.abs_lin.weight[:, :b.values]], 1).T  # (2V, 2H)
            coef = (coef if scale is None else coef / scale[b.kind]).contiguous()  # strided: a scalar loop below
            c_kind = self.edge_lin.weight[:, kinds + b.kind].contiguous()
            D, S, E = b.nodes(d_all, True), b.nodes(s_all, False), b.edges(e[:, :b.values])
            E = torch.cat([E, E.abs()], -1).flatten(2)                          # (P, n_out, n_in * 2V)
            S2 = (S.unsqueeze(2) * coef[:, :H]).flatten(1, 2)                    # (P, n_in * 2V, H)
            fwd = torch.bmm(E, S2) + S.sum(1, keepdim=True) * c_kind[:H]
            bwd = torch.bmm(E.transpose(1, 2), D).unflatten(1, (b.n_in, -1))     # (P, n_in, 2V, H)
            bwd = (bwd * coef[:, H:]).sum(2) + D.sum(1, keepdim=True) * c_kind[H:]
            sums.append((b, fwd, bwd))
        return add_block_sums(agg_f, agg_b, sums)

    def dgl_messages(self, d_all: Tensor, s_all: Tensor, e: Tensor, g, rg, agg_f: Tensor, agg_b: Tensor) -> None:
        """The same with DGL's fused gather-multiply-sum (no message is materialized)."""
        import dgl.function as fn

        H, gate = agg_f.shape[1], self.gates(e)
        g.ndata["x"], g.edata["g"] = s_all, gate[:, :H]
        rg.ndata["x"], rg.edata["g"] = d_all, gate[:, H:]
        for graph, agg in ((g, agg_f), (rg, agg_b)):
            graph.update_all(fn.u_mul_e("x", "g", "m"), fn.sum("m", "agg"))
            agg += graph.ndata.pop("agg").float()
            del graph.ndata["x"], graph.edata["g"]
