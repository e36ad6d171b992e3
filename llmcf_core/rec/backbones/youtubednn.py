"""YouTube DNN (Covington et al., RecSys 2016), the candidate-generation network as a next-item
baseline: the mean of the history's item embeddings (padding excluded) through a ReLU MLP
(``HIDDEN_MULT`` x H) and a linear layer to the user vector H. The mean ignores the order of the
history. An empty history gives the MLP a zero input, so the user vector is a learned constant."""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import SequentialModel, mlp
from llmcf_core.rec.fields import masked_mean
from llmcf_core.rec.spec import DataSpec

HIDDEN_MULT = 2  # the tower [2H, H]
DROPOUT = 0.2


class YoutubeDNN(SequentialModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        H = hp.seq_hidden
        self.dropout = nn.Dropout(DROPOUT)
        self.tower = mlp(H, (HIDDEN_MULT * H,))  # H -> 2H, ReLU
        self.out = nn.Linear(HIDDEN_MULT * H, H)

    def encode(self, hist: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.item_emb(hist))  # (B, L, H)
        pooled = masked_mean(x, hist > 0)  # (B, H)
        return self.out(self.tower(pooled))  # (B, H)
