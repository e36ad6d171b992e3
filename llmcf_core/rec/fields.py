"""Field embeddings of a sample, shared by the backbones and the ICT's feature tokens.

Ranking fields (each E wide): user, item, the item's genres (mean), the history (mean of its item
embeddings), the item's text embedding and the history's mean text embedding, both mapped
D -> 256 -> E (METHOD.md: "item text emb mapped 768->256->32"). The ICT's feature token of a
sample (current or retrieved) is an MLP of these six fields concatenated.

Each history item carries the user's feedback on it (liked / not liked, the sample's
``history_labels``): a feedback embedding is added to the item's embedding, so the mean-history
field, DIN's attention keys and the ICT's feature tokens all see what the user thought of each item,
as DIN-style models do. Feedback 0 (padding, or not known online) adds nothing.

User side features (``DataSpec.user_feature_sizes``: e.g. age group, gender, occupation from the
dataset's users table) are one more field each, appended after the others; index 0 is "unknown"
(a user missing from the users table, or a request that does not send them). They describe the
users the id cannot: 85% of ML-100K's test rows come from users with no train rows. The
``base_notext`` variant drops the two text fields (the paper's base).

Sequential fields (each H wide): the history (mean item embedding), the history's text, and the
target item with its text; the current sample of a next-item request has no target, so those two
fields are zero in its feature token.

Every function accepts any leading shape (B,) or (B, K): retrieved examples are embedded with the
same tables as the current sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmcf_core.rec.ict import token_mlp
from llmcf_core.rec.spec import DataSpec

RANKING_FIELDS = ("user", "item", "genres", "history", "item_text", "history_text")  # + one per user feature
FEEDBACK_CODES = 3  # history feedback: 0 padding / unknown, 1 negative, 2 positive
TEXT_HIDDEN = 256


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 where mask is True: (..., L, E), (..., L) -> (..., E); zeros if none."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (..., L, 1)
    return (x * w).sum(-2) / w.sum(-2).clamp_min(1.0)


def mean_of_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``masked_mean(table[index], index > 0)`` for a frozen ``table`` (I+1, D) whose row 0 is the
    padding: (*S, L) indices -> (*S, D) means over the non-zero indices, zeros where there are none.

    One fused gather-and-sum (``embedding_bag``) instead of materialising the (*S, L, D) gather: the
    history's mean text embedding of every current sample and retrieved example was the largest
    tensor of an ICT training step (on one core a DIN llmcf step took 127 ms, 40% of it here).
    Not for trainable tables: ``table`` gets no gradient through this path."""
    L = index.shape[-1]
    flat = index.reshape(-1, L)
    total = F.embedding_bag(flat, table, mode="sum", padding_idx=0)  # (N, D)
    count = (flat > 0).sum(-1, keepdim=True).clamp_min(1).to(total.dtype)  # (N, 1)
    return (total / count).reshape(*index.shape[:-1], table.shape[-1])


@dataclass
class RankingFieldEmbeddings:
    stack: torch.Tensor  # (B, N_FIELDS, E) in ``RankingFields.names`` order
    target: torch.Tensor  # (B, E) the target item's id embedding
    hist_emb: torch.Tensor  # (B, L, E) history item id embeddings (0 at padding)
    hist_mask: torch.Tensor  # (B, L) bool

    @property
    def flat(self) -> torch.Tensor:  # (B, N_FIELDS * E)
        return self.stack.flatten(1)


class RankingFields(nn.Module):
    def __init__(self, spec: DataSpec, dim: int, *, with_text: bool = True) -> None:
        super().__init__()
        self.with_text = with_text
        self.user_features = nn.ModuleList(
            nn.Embedding(n + 1, dim, padding_idx=0) for n in spec.user_feature_sizes
        )  # 0 = unknown value
        self.user = nn.Embedding(spec.n_users + 1, dim)  # 0 = unknown user (learned)
        self.item = nn.Embedding(spec.n_items + 1, dim, padding_idx=0)
        self.genre = nn.Embedding(spec.n_genres + 1, dim, padding_idx=0)
        self.feedback = nn.Embedding(FEEDBACK_CODES, dim, padding_idx=0)  # 0 none, 1 negative, 2 positive
        if with_text:
            self.text_proj = token_mlp(spec.text_dim, TEXT_HIDDEN, dim)  # D -> 256 -> E
            self.register_buffer("item_text", torch.from_numpy(spec.item_text).float())  # (I+1, D)
        self.register_buffer("item_genres", torch.from_numpy(spec.item_genres).long())  # (I+1, G)
        self.dim = dim

    @property
    def names(self) -> tuple[str, ...]:
        text = RANKING_FIELDS if self.with_text else RANKING_FIELDS[:4]
        return (*text, *(f"user_feature_{i}" for i in range(len(self.user_features))))

    @property
    def feature_dim(self) -> int:
        return len(self.names) * self.dim

    def forward(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        hist: torch.Tensor,
        hist_fb: torch.Tensor | None = None,
        user_feat: torch.Tensor | None = None,
    ) -> RankingFieldEmbeddings:
        """user (B,), item (B,), hist (B, L) item indices (0 = padding), hist_fb (B, L) feedback codes
        (None: unknown), user_feat (B, U) user side feature indices (None: unknown)."""
        hist_mask = hist > 0  # (B, L)
        genres = self.item_genres[item]  # (B, G)
        hist_emb = self.item(hist)  # (B, L, E)
        if hist_fb is not None:
            hist_emb = hist_emb + self.feedback(hist_fb)  # (B, L, E): what the user thought of each item
        target = self.item(item)  # (B, E)
        fields = [
            self.user(user),  # (B, E)
            target,
            masked_mean(self.genre(genres), genres > 0),  # (B, E)
            masked_mean(hist_emb, hist_mask),  # (B, E)
        ]
        if self.with_text:
            fields += [
                self.text_proj(self.item_text[item]),  # (B, D) -> (B, E)
                self.text_proj(mean_of_rows(self.item_text, hist)),  # (B, L) -> (B, D) -> (B, E)
            ]
        for j, table in enumerate(self.user_features):
            fields.append(table(user_feat[:, j]) if user_feat is not None else target.new_zeros(target.shape))
        stack = torch.stack(fields, dim=1)  # (B, N_FIELDS, E)
        return RankingFieldEmbeddings(stack, target, hist_emb, hist_mask)

    def features(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        hist: torch.Tensor,
        hist_fb: torch.Tensor | None = None,
        user_feat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flat features for any leading shape: (*S,), (*S,), (*S, L), (*S, L), (*S, U) -> (*S, N*E)."""
        lead = user.shape
        L = hist.shape[-1]
        fb = hist_fb.reshape(-1, L) if hist_fb is not None else None
        uf = user_feat.reshape(-1, user_feat.shape[-1]) if user_feat is not None else None
        f = self(user.reshape(-1), item.reshape(-1), hist.reshape(-1, L), fb, uf)
        return f.flat.reshape(*lead, -1)


class SequentialFields(nn.Module):
    """Item tables of a sequential backbone and the ICT features of a (history, target) sample."""

    def __init__(self, spec: DataSpec, dim: int, *, with_text: bool) -> None:
        super().__init__()
        self.item = nn.Embedding(spec.n_items + 1, dim, padding_idx=0)
        self.dim = dim
        # Text only feeds the ICT's feature tokens; the backbones themselves are id-based.
        if with_text:
            self.text_proj = token_mlp(spec.text_dim, TEXT_HIDDEN, dim)  # D -> 256 -> H
            self.register_buffer("item_text", torch.from_numpy(spec.item_text).float())  # (I+1, D)

    @property
    def feature_dim(self) -> int:
        return 4 * self.dim

    def features(self, hist: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """(*S, L) history and (*S,) target (None: unknown) -> (*S, 4H)."""
        hist_mask = hist > 0  # (*S, L)
        history = masked_mean(self.item(hist), hist_mask)  # (*S, H)
        history_text = self.text_proj(mean_of_rows(self.item_text, hist))  # (*S, H)
        if target is None:
            zeros = history.new_zeros(history.shape)
            return torch.cat((history, history_text, zeros, zeros), dim=-1)  # (*S, 4H)
        item = self.item(target)  # (*S, H)
        item_text = self.text_proj(self.item_text[target])  # (*S, H)
        return torch.cat((history, history_text, item, item_text), dim=-1)  # (*S, 4H)
