"""One round of PEACE's message passing, in both directions of every edge, on two backends.

Per-edge messages gather node states and scatter sums (pure torch, any device; or DGL's kernels on
CPU). Models of one architecture batched as a population (``graph.DenseBlock``) take a third way for
their dense layers: the (P, n_out, n_in) messages by broadcasting, a few models at a time, which is
the same arithmetic without per-edge indexing.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peace.nets.graph import EDGE_KINDS, DenseBlock

__all__ = ["DENSE_CHUNK", "EDGE_CHUNK", "MessagePassing", "mlp"]

EDGE_CHUNK = 2**18     # edges whose messages the pure-torch backend computes at once: memory O(chunk x hidden)
DENSE_CHUNK = 2**12    # edges of a population's dense layer computed at once (their messages fit in L2 cache)


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear, SiLU, Linear: every small network of the encoder."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class MessagePassing(nn.Module):
    """One round, both directions: h_i <- LN(h_i + phi(h_i, agg_fwd, agg_bwd)).

    Messages are psi(h_dst, h_src, e) = W2 silu(A h_dst + B h_src + C e). Two exact rewrites keep
    the work per edge small: A h and B h are computed per node before gathering, and W2 (linear)
    is applied after aggregating, since it commutes with a sum or mean.
    """

    def __init__(self, hidden: int, edge_in: int, aggregation: str):
        super().__init__()
        self.aggregation = aggregation
        self.dst_lin = nn.Linear(hidden, 2 * hidden)   # [A | B']: forward-message receiver, backward-message sender
        self.src_lin = nn.Linear(hidden, 2 * hidden, bias=False)  # [B | A']
        self.edge_lin = nn.Linear(edge_in, 2 * hidden, bias=False)  # [C | C']
        self.out_fwd, self.out_bwd = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)  # W2, W2'
        self.phi = mlp(3 * hidden, 2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def _update(self, h: Tensor, agg: Tensor, present_f: Tensor, present_b: Tensor) -> Tensor:
        """``agg``: (N, 2H) aggregated [forward | backward] activations; W2 applied where a node has messages."""
        H = h.shape[1]
        agg = agg.to(h.dtype)
        m_f = self.out_fwd(agg[:, :H]) * present_f
        m_b = self.out_bwd(agg[:, H:]) * present_b
        return self.norm(h + self.phi(torch.cat([h, m_f, m_b], -1)))

    def _scale(self, agg_f: Tensor, agg_b: Tensor, deg_in: Tensor, deg_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean or sum, and the per-node factor that applies W2's bias once per message (sum) or once (mean)."""
        if self.aggregation == "mean":
            return torch.cat([agg_f / deg_in.clamp_min(1), agg_b / deg_out.clamp_min(1)], 1), \
                (deg_in > 0).float(), (deg_out > 0).float()
        return torch.cat([agg_f, agg_b], 1), deg_in, deg_out

    def dense(self, d_all: Tensor, s_all: Tensor, e: Tensor, blocks: Sequence[DenseBlock]) -> tuple[Tensor, Tensor]:
        """(N, H) float32 sums of the forward / backward messages of populations' dense layers: for each
        block the (P, n_out, n_in) pre-activations by broadcasting, a few models at a time so they stay
        in cache, instead of gathering and scattering per edge (the same sums in another order)."""
        H, W, grad = d_all.shape[1] // 2, self.edge_lin.weight, torch.is_grad_enabled()
        agg_f = torch.zeros(d_all.shape[0], H, device=d_all.device)
        agg_b = torch.zeros(d_all.shape[0], H, device=d_all.device)
        for b in blocks:
            # an edge's input is [values, 0..., kind one-hot]: C e = C[:, :values] e[:values] + C[:, kind]
            c_values, c_kind = W[:, :b.values], W[:, e.shape[1] - len(EDGE_KINDS) + b.kind]
            D, S, E = b.nodes(d_all, True) + c_kind, b.nodes(s_all, False), b.edges(e[:, :b.values])
            step, fwd, bwd = max(1, DENSE_CHUNK // (b.n_out * b.n_in)), [], []
            for a in range(0, b.P, step):
                pre = D[a:a + step].unsqueeze(2) + S[a:a + step].unsqueeze(1)
                if b.values == 1:
                    pre = torch.addcmul(pre, E[a:a + step], c_values[:, 0]) if grad \
                        else pre.addcmul_(E[a:a + step], c_values[:, 0])
                else:
                    pre = pre + E[a:a + step] @ c_values.T
                m = F.silu(pre, inplace=not grad)
                fwd.append(m[..., :H].sum(2, dtype=torch.float32))
                bwd.append(m[..., H:].sum(1, dtype=torch.float32))
            agg_f = agg_f.index_add(0, b.node_ids(True, d_all.device), torch.cat(fwd).reshape(-1, H))
            agg_b = agg_b.index_add(0, b.node_ids(False, d_all.device), torch.cat(bwd).reshape(-1, H))
        return agg_f, agg_b

    def forward_torch(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor, deg_in: Tensor, deg_out: Tensor,
                      blocks: Sequence[DenseBlock] = (), e_all: Tensor | None = None) -> Tensor:
        """One round: per-edge messages over ``src -> dst`` carrying ``e``, plus the dense ``blocks``,
        which read their edges from ``e_all`` (every edge of the batch; default ``e``)."""
        H = h.shape[1]
        d_all, s_all = self.dst_lin(h), self.src_lin(h)
        agg_f, agg_b = self.dense(d_all, s_all, e if e_all is None else e_all, blocks)
        for a in range(0, len(src), EDGE_CHUNK):  # messages of a chunk of edges at a time: bounded memory
            b = a + EDGE_CHUNK
            m = F.silu(d_all[dst[a:b]] + s_all[src[a:b]] + self.edge_lin(e[a:b])).float()
            agg_f.index_add_(0, dst[a:b], m[:, :H])
            agg_b.index_add_(0, src[a:b], m[:, H:])
        return self._update(h, *self._scale(agg_f, agg_b, deg_in, deg_out))

    def forward_dgl(self, h: Tensor, e: Tensor, g, rg, deg_in: Tensor, deg_out: Tensor,
                    blocks: Sequence[DenseBlock] = (), e_all: Tensor | None = None) -> Tensor:
        """The same round with DGL's kernels for the edges of ``g`` / ``rg`` (carrying ``e``)."""
        import dgl.function as fn

        H = h.shape[1]
        d_all, s_all = self.dst_lin(h), self.src_lin(h)
        agg_f, agg_b = self.dense(d_all, s_all, e if e_all is None else e_all, blocks)
        if g.num_edges():
            g.ndata["d"], g.ndata["s"] = d_all, s_all
            g.apply_edges(fn.v_add_u("d", "s", "t"))
            del g.ndata["d"], g.ndata["s"]
            m = F.silu(g.edata.pop("t") + self.edge_lin(e)).float()
            g.edata["m"], rg.edata["m"] = m[:, :H], m[:, H:]
            g.update_all(fn.copy_e("m", "m"), fn.sum("m", "agg"))
            rg.update_all(fn.copy_e("m", "m"), fn.sum("m", "agg"))
            agg_f += g.ndata.pop("agg")
            agg_b += rg.ndata.pop("agg")
        return self._update(h, *self._scale(agg_f, agg_b, deg_in, deg_out))
