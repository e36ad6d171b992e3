"""DeepFM (Guo et al., IJCAI 2017): first-order + FM second-order + deep MLP, summed logits.

With the ICT, its output joins the deep part's input and also gets its own linear term
(METHOD.md: "DeepFM also adds a linear term").
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec, HParams


class DeepFM(RankingModel):
    def __init__(self, spec: DataSpec, hp: HParams, variant: str) -> None:
        super().__init__(spec, hp, variant)
        d_fields = self.n_fields * hp.embedding_dim
        self.first_order = nn.Linear(d_fields, 1)
        self.deep = mlp(d_fields + self.ict_dim, hp.mlp_dims)
        self.out = nn.Linear(hp.mlp_dims[-1], 1)
        self.ict_linear = nn.Linear(self.ict_dim, 1, bias=False) if self.ict_dim else None

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        v = f.stack  # (B, F, E)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1)  # (B,) pairwise interactions
        logit = self.first_order(f.flat).squeeze(-1) + fm  # (B,)
        logit = logit + self.out(self.deep(with_ict(f.flat, ict_out))).squeeze(-1)
        if self.ict_linear is not None and ict_out is not None:
            logit = logit + self.ict_linear(ict_out).squeeze(-1)
        return logit
