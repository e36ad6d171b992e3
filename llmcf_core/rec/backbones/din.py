"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

The history is pooled by target-aware attention (an MLP over [q, k, q - k, q * k], weights not
normalised by softmax, as in the paper) instead of a plain mean; the pooled interest replaces the
mean-history field, and an MLP [200, 80] scores the concatenated fields (+ the ICT output).
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RANKING_FIELDS, RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec, HParams

_HISTORY = RANKING_FIELDS.index("history")


class DIN(RankingModel):
    def __init__(self, spec: DataSpec, hp: HParams, variant: str) -> None:
        super().__init__(spec, hp, variant)
        E = hp.embedding_dim
        self.attention = nn.Sequential(mlp(4 * E, (80, 40)), nn.Linear(40, 1))
        self.deep = mlp(self.n_fields * E + self.ict_dim, hp.mlp_dims)
        self.out = nn.Linear(hp.mlp_dims[-1], 1)

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        keys = f.hist_emb  # (B, L, E)
        query = f.target.unsqueeze(1).expand_as(keys)  # (B, L, E)
        weights = self.attention(torch.cat((query, keys, query - keys, query * keys), dim=-1))  # (B, L, 1)
        weights = weights.masked_fill(~f.hist_mask.unsqueeze(-1), 0.0)
        interest = (weights * keys).sum(1)  # (B, E)
        fields = torch.cat((f.stack[:, :_HISTORY], interest.unsqueeze(1), f.stack[:, _HISTORY + 1 :]), dim=1)
        x = with_ict(fields.flatten(1), ict_out)  # (B, 6E [+ C])
        return self.out(self.deep(x)).squeeze(-1)  # (B,)
