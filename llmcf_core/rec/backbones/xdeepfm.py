"""xDeepFM (Lian et al., KDD 2018): linear + Compressed Interaction Network + deep MLP.

CIN layer k: z = outer product of the fields x0 (B, m, E) and the previous maps (B, H_k, E) along
the embedding axis, compressed to H_{k+1} maps by a 1x1 convolution; each layer's maps are
sum-pooled over E and feed one output unit. The ICT output joins the deep part's input.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec

CIN_SIZES = (64, 64)


class xDeepFM(RankingModel):  # noqa: N801 - the paper's name
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        m = self.n_fields
        d_fields = m * hp.embedding_dim
        self.linear = nn.Linear(d_fields, 1)
        sizes = (m, *CIN_SIZES)
        self.cin = nn.ModuleList(nn.Conv1d(sizes[i] * m, sizes[i + 1], 1) for i in range(len(CIN_SIZES)))
        self.cin_out = nn.Linear(sum(CIN_SIZES), 1)
        self.deep = mlp(d_fields + self.ict_dim, hp.mlp_dims)
        self.out = nn.Linear(hp.mlp_dims[-1], 1)

    def score(self, f: RankingFieldEmbeddings, ict_out: torch.Tensor | None) -> torch.Tensor:
        x0 = f.stack  # (B, m, E)
        B, m, E = x0.shape
        xk, pooled = x0, []
        for conv in self.cin:
            z = torch.einsum("bhe,bme->bhme", xk, x0).reshape(B, -1, E)  # (B, H_k * m, E)
            xk = torch.relu(conv(z))  # (B, H_{k+1}, E)
            pooled.append(xk.sum(-1))  # (B, H_{k+1})
        logit = self.linear(f.flat).squeeze(-1) + self.cin_out(torch.cat(pooled, dim=1)).squeeze(-1)
        return logit + self.out(self.deep(with_ict(f.flat, ict_out))).squeeze(-1)  # (B,)
