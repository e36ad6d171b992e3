"""GRU4Rec (Hidasi et al., ICLR 2016): a GRU over the item history; its last real state, through
a linear layer, is the user vector."""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import SequentialModel
from llmcf_core.rec.spec import DataSpec

DROPOUT = 0.2


class GRU4Rec(SequentialModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        H = hp.seq_hidden
        self.dropout = nn.Dropout(DROPOUT)
        self.gru = nn.GRU(H, H, batch_first=True)
        self.dense = nn.Linear(H, H)

    def encode(self, hist: torch.Tensor) -> torch.Tensor:
        B = hist.shape[0]
        h, _ = self.gru(self.dropout(self.item_emb(hist)))  # (B, L, H)
        last = ((hist > 0).sum(1) - 1).clamp_min(0)  # (B,)
        return self.dense(h[torch.arange(B, device=hist.device), last])  # (B, H)
