"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

The history is pooled by target-aware attention (an MLP over [q, k, q - k, q * k], weights not
normalised by softmax, as in the paper); the pooled interest joins the fields (the mean-history
field stays: with the feedback embedding in it, it carries the user's share of liked items, which
the unnormalised attention sum mixes with the history's length), and an MLP [200, 80] scores the
concatenated fields (+ the ICT output).
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec


class DIN(RankingModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        E = hp.embedding_dim
        self.attention = nn.Sequential(mlp(4 * E, (80, 40)), nn.Linear(40, 1))
        self.deep = mlp((self.n_fields + 1) * E + self.ict_dim, hp.mlp_dims)
        self.out = nn.Linear(hp.mlp_dims[-1], 1)

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        keys = f.hist_emb  # (B, L, E)
        query = f.target.unsqueeze(1).expand_as(keys)  # (B, L, E)
        weights = self.attention(torch.cat((query, keys, query - keys, query * keys), dim=-1))  # (B, L, 1)
        weights = weights.masked_fill(~f.hist_mask.unsqueeze(-1), 0.0)
        interest = (weights * keys).sum(1)  # (B, E)
        x = with_ict(torch.cat((f.flat, interest), dim=-1), ict_out)  # (B, 7E [+ C])
        return self.out(self.deep(x)).squeeze(-1)  # (B,)
