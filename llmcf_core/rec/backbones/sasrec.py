"""SASRec (Kang & McAuley, ICDM 2018): a causal Transformer over the item history.

Item + learned position embeddings, 2 post-norm layers (2 heads, GELU FFN of 4H, dropout 0.2), the
output at the last real history position is the user vector. An empty history reads position 0
(padding + its position embedding), which acts as a learned "no history" vector.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.base import SequentialModel
from llmcf_core.rec.spec import DataSpec

LAYERS = 2
HEADS = 2
DROPOUT = 0.2


class SASRec(SequentialModel):
    def __init__(self, spec: DataSpec, hp: RecModelConfig, variant: str) -> None:
        super().__init__(spec, hp, variant)
        H = hp.seq_hidden
        self.position = nn.Embedding(spec.history_len, H)
        self.input_norm = nn.LayerNorm(H)
        self.dropout = nn.Dropout(DROPOUT)
        layer = nn.TransformerEncoderLayer(
            H, HEADS, dim_feedforward=4 * H, dropout=DROPOUT, activation="gelu", batch_first=True
        )
        self.layers = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)

    def encode(self, hist: torch.Tensor) -> torch.Tensor:
        B, L = hist.shape
        pos = torch.arange(L, device=hist.device)  # (L,)
        x = self.dropout(self.input_norm(self.item_emb(hist) + self.position(pos)))  # (B, L, H)
        causal = nn.Transformer.generate_square_subsequent_mask(L, device=hist.device)  # (L, L)
        # Right padding: real positions never see padding under the causal mask.
        h = self.layers(x, mask=causal, is_causal=True)  # (B, L, H)
        last = ((hist > 0).sum(1) - 1).clamp_min(0)  # (B,)
        return h[torch.arange(B, device=hist.device), last]  # (B, H)
