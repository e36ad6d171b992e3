"""AutoInt (Song et al., CIKM 2019): multi-head self-attention between the field embeddings.

Interacting layers (2 heads, residual, ReLU) over the fields; their flattened output, with the
ICT output, feeds a linear layer, added to an MLP [200, 80] over the raw fields (AutoInt+).
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec

LAYERS = 2
HEADS = 2


class AutoInt(RankingModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        E = hp.embedding_dim
        self.interacting = nn.ModuleList(
            nn.MultiheadAttention(E, HEADS, batch_first=True, bias=False) for _ in range(LAYERS)
        )
        self.attn_out = nn.Linear(self.n_fields * E + self.ict_dim, 1)
        self.deep = mlp(self.n_fields * E + self.ict_dim, hp.mlp_dims)
        self.out = nn.Linear(hp.mlp_dims[-1], 1)

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        x = f.stack  # (B, F, E)
        for attn in self.interacting:
            x = torch.relu(attn(x, x, x, need_weights=False)[0] + x)  # (B, F, E)
        logit = self.attn_out(with_ict(x.flatten(1), ict_out)).squeeze(-1)  # (B,)
        return logit + self.out(self.deep(with_ict(f.flat, ict_out))).squeeze(-1)
