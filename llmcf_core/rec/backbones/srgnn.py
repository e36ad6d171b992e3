"""SR-GNN (Wu et al., AAAI 2019): a gated GNN over the session graph of the history, as RecBole
implements it.

Each history becomes a directed graph over its unique items, with an edge u -> v when v directly
follows u (padding ignored; a repeated transition counts once). Node v gathers from its predecessors
through the in-adjacency (rows of A^T, each divided by v's in-degree) and from its successors
through the out-adjacency (rows of A, each divided by v's out-degree), then a GRU-style gate updates
its state (``STEPS`` rounds). The node states are read back at every history position; soft
attention with the last item as query pools them into a global vector s_g, and a linear layer of
[s_g; s_last] is the user vector. RecBole's SR-GNN has no dropout; like the other backbones here,
this one drops out the node embeddings (``DROPOUT``).

The graph is built for the whole batch at once (no loop over samples): a sort of each history
gives its unique items (padding sorts last and forms a node with no edges, masked out of the
attention), and scatters build the alias (position -> node) and the adjacency. An empty history
reads the padding node's state, a finite learned "no history" vector.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import SequentialModel
from llmcf_core.rec.spec import DataSpec

STEPS = 1
DROPOUT = 0.2


class SessionGraph(NamedTuple):
    alias: torch.Tensor  # (B, L) node of each history position
    items: torch.Tensor  # (B, L) item index of each node (0: padding or unused node)
    a_in: torch.Tensor  # (B, L, L) a_in[v, u] = [u -> v] / in-degree(v)
    a_out: torch.Tensor  # (B, L, L) a_out[u, v] = [u -> v] / out-degree(u)


def session_graph(hist: torch.Tensor) -> SessionGraph:
    """The session graphs of a batch of right-padded histories (B, L), at most L nodes each.

    Nodes are a history's unique items in ascending index order, then one node for the padding (if
    any), then unused nodes (item 0, no edges)."""
    B, L = hist.shape
    real = hist > 0  # (B, L)
    key = hist.masked_fill(~real, torch.iinfo(hist.dtype).max)  # padding sorts last
    sorted_key, order = key.sort(dim=1)  # (B, L), (B, L)
    new = torch.ones_like(real)  # (B, L): the first position of each distinct value
    new[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    node = new.long().cumsum(1) - 1  # (B, L): node of each sorted position
    alias = torch.empty_like(node).scatter_(1, order, node)  # (B, L): node of each history position
    items = torch.zeros_like(hist).scatter_(1, alias, hist)  # (B, L): duplicates write the same item

    # Edges between consecutive real items (right padding: a real next item has a real current one).
    step = real[:, 1:]  # (B, L-1)
    edge = alias[:, :-1] * L + alias[:, 1:]  # (B, L-1) flat index of (u, v)
    counts = hist.new_zeros(B, L * L, dtype=torch.float).scatter_add_(1, edge, step.float())
    adj = (counts > 0).float().view(B, L, L)  # (B, L, L) adj[u, v] = [u -> v]
    in_deg = adj.sum(1).clamp_min(1.0)  # (B, L) column sums
    out_deg = adj.sum(2).clamp_min(1.0)  # (B, L) row sums
    a_in = adj.transpose(1, 2) / in_deg.unsqueeze(2)  # (B, L, L)
    a_out = adj / out_deg.unsqueeze(2)  # (B, L, L)
    return SessionGraph(alias, items, a_in, a_out)


class GatedGNN(nn.Module):
    """RecBole's GNN cell: messages along in- and out-edges, then a GRU-style update."""

    def __init__(self, hidden: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.edge_in = nn.Linear(hidden, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.bias_in = nn.Parameter(torch.zeros(hidden))
        self.bias_out = nn.Parameter(torch.zeros(hidden))
        self.w_ih = nn.Linear(2 * hidden, 3 * hidden)
        self.w_hh = nn.Linear(hidden, 3 * hidden)

    def cell(self, a_in: torch.Tensor, a_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, N, N), (B, N, N), (B, N, H) -> (B, N, H)."""
        m_in = a_in @ self.edge_in(h) + self.bias_in  # (B, N, H)
        m_out = a_out @ self.edge_out(h) + self.bias_out  # (B, N, H)
        i_r, i_z, i_n = self.w_ih(torch.cat((m_in, m_out), dim=-1)).chunk(3, dim=-1)  # 3 x (B, N, H)
        h_r, h_z, h_n = self.w_hh(h).chunk(3, dim=-1)  # 3 x (B, N, H)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return (1 - update) * h + update * candidate  # RecBole's form of the gate

    def forward(self, a_in: torch.Tensor, a_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            h = self.cell(a_in, a_out, h)
        return h


class SRGNN(SequentialModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        H = hp.seq_hidden
        self.dropout = nn.Dropout(DROPOUT)
        self.gnn = GatedGNN(H, STEPS)
        self.att_last = nn.Linear(H, H)  # RecBole's linear_one
        self.att_node = nn.Linear(H, H)  # linear_two
        self.att_score = nn.Linear(H, 1, bias=False)  # linear_three
        self.transform = nn.Linear(2 * H, H)  # linear_transform

    def encode(self, hist: torch.Tensor) -> torch.Tensor:
        B, L = hist.shape
        H = self.hidden
        g = session_graph(hist)
        x = self.dropout(self.item_emb(g.items))  # (B, L, H) node embeddings
        nodes = self.gnn(g.a_in.to(x.dtype), g.a_out.to(x.dtype), x)  # (B, L, H)
        seq = nodes.gather(1, g.alias.unsqueeze(-1).expand(B, L, H))  # (B, L, H) per position
        last = ((hist > 0).sum(1) - 1).clamp_min(0)  # (B,)
        s_last = seq[torch.arange(B, device=hist.device), last]  # (B, H)
        alpha = self.att_score(torch.sigmoid(self.att_last(s_last).unsqueeze(1) + self.att_node(seq)))
        mask = (hist > 0).unsqueeze(-1).to(seq.dtype)  # (B, L, 1)
        s_global = (alpha * seq * mask).sum(1)  # (B, H): unnormalised, as in the paper
        return self.transform(torch.cat((s_global, s_last), dim=-1))  # (B, H)
