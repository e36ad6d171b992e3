"""DCN-V2 (Wang et al., WWW 2021), parallel structure with full-rank cross layers.

Cross layers x_{l+1} = x0 * (W_l x_l + b_l) + x_l in parallel with an MLP [200, 80]; both feed
the output layer. The ICT output is part of x0.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.backbones.dcn import DCN
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec

CROSS_LAYERS = 2


class DCNv2(RankingModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        d0 = self.n_fields * hp.embedding_dim + self.ict_dim
        self.cross = nn.ModuleList(nn.Linear(d0, d0) for _ in range(CROSS_LAYERS))
        self.deep = mlp(d0, hp.mlp_dims)
        self.out = nn.Linear(d0 + hp.mlp_dims[-1], 1)

    ict_block_start = DCN.ict_block_start  # the same output layer: (1, d0 + deep)

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        x0 = with_ict(f.flat, ict_out)  # (B, d0)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x  # (B, d0)
        return self.out(torch.cat((x, self.deep(x0)), dim=-1)).squeeze(-1)  # (B,)
