"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017).

Cross layers x_{l+1} = x0 * (x_l . w_l) + b_l + x_l in parallel with an MLP [200, 80]; both feed
the output layer. The ICT output is part of x0.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec

CROSS_LAYERS = 3


class DCN(RankingModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        d0 = self.n_fields * hp.embedding_dim + self.ict_dim
        self.cross_w = nn.Parameter(torch.randn(CROSS_LAYERS, d0) * d0**-0.5)
        self.cross_b = nn.Parameter(torch.zeros(CROSS_LAYERS, d0))
        self.deep = mlp(d0, hp.mlp_dims)
        self.out = nn.Linear(d0 + hp.mlp_dims[-1], 1)

    def ict_block_start(self, name: str, dim: int, base_size: int) -> int:
        if name == "out.weight":  # (1, d0 + deep): x's ICT entries end x, before the deep part
            return self.n_fields * self.hp.embedding_dim
        return base_size

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        x0 = with_ict(f.flat, ict_out)  # (B, d0)
        x = x0
        for w, b in zip(self.cross_w, self.cross_b, strict=True):
            x = x0 * (x @ w).unsqueeze(-1) + b + x  # (B, d0)
        return self.out(torch.cat((x, self.deep(x0)), dim=-1)).squeeze(-1)  # (B,)
