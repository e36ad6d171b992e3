"""DeepFM (Guo et al., IJCAI 2017): first-order + FM second-order + deep MLP, summed logits.

With the ICT, its output joins the deep part's input and also gets its own linear term
(METHOD.md: "DeepFM also adds a linear term"), through the learned scalar gate initialised at zero
that every backbone has (``RecModel.ict_gate``; DeepFM is where it was found needed).

Why the gate: the ICT output leaves a final RMSNorm (per-dimension RMS 1), while the field
embeddings are Xavier-initialised tables (RMS ~0.01-0.2; the paper's were N(0, 1), on the ICT's
scale). Ungated, on ML-100K's fields the ICT's linear term alone had a logit std of ~0.8 at
initialisation, 4x the FM, first-order and deep terms together (~0.2), and its 32 inputs outweighed
the 192 field inputs of the deep part. Training then fitted the labels through the ICT paths and
starved the rest (trained FM term's std ~0.5 -> ~0.2-0.3, the deep part's own field signal
~0.8 -> ~0.05-0.12), and ``llmcf`` and even ``llmcf_k0`` (no examples) could score below the base
(ML-100K seed 0: -0.005 to -0.006 test AUC with the base's initial weights). With a
zero-initialised gate (as ReZero or Flamingo's gated cross-attention add a branch), an ICT variant
starts as exactly the base's function and the ICT's share grows only as far as it lowers the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import RankingModel, mlp, with_ict
from llmcf_core.rec.fields import RankingFieldEmbeddings
from llmcf_core.rec.spec import DataSpec


class DeepFM(RankingModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
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
