"""The in-context module (ICT) of LLM-CF: a tiny LLaMA-style decoder that reads retrieved examples.

METHOD.md, "ICT module". Each retrieved example becomes three tokens, the current sample one:

    position:  0   1   2   3   4   5   6   7   8   9   10  11  12      (K = 4 -> T = 13)
    token:     f0  c0  l0  f1  c1  l1  f2  c2  l2  f3  c3  l3  q
    f = example features   MLP(concat of the example's field embeddings)
    c = example CoT        MLP(frozen CoT sentence embedding)    D -> 256 -> C
    l = example label      Embedding(2, C)
    q = current sample     the same feature MLP as f

A 2-layer, 2-head decoder (pre-RMSNorm, RoPE, SwiGLU, causal mask, no dropout) runs over the T
tokens; the hidden state at the last position (q) is the module's output, fused into the backbone.
The hidden states at the feature positions (0, 3, 6, 9) are mapped back to the CoT embedding size:
each feature token predicts the CoT that follows it, and the reconstruction loss is
1 - mean cosine to the true CoT embedding (padded examples and examples without CoT excluded).

Variants (``llmcf_core.rec.spec.VARIANTS``):
    llmcf        as above
    llmcf_wocot  no CoT tokens and no reconstruction: tokens [f, l] per example, T = 2K + 1
    llmcf_mean   mean pooling of the tokens instead of the decoder (reconstruction from the f tokens)
    llmcf_k0     the decoder over the current sample's token alone (T = 1): the module's capacity
                 without examples, a control; its output is not zeroed for want of examples
    llmcf_random, llmcf_shufcot   as llmcf (they change the examples and CoTs it is given)
    llmcf_recon  as llmcf; the backbone fixes its gate at 0 (the module is trained by the
                 reconstruction loss alone and its output never reaches the score)

Shapes: B batch, K examples, P tokens per example (3, or 2 without CoT), T = P*K + 1 tokens,
C model width, F feature size, D CoT embedding size, H heads, hd = C / H head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmcf_core.rec.spec import VARIANTS

MAX_TOKENS = 256  # RoPE tables are precomputed up to this many positions (K <= 85)


@dataclass(frozen=True)
class ICTConfig:
    feature_dim: int  # F: a sample's concatenated field embeddings
    cot_dim: int  # D: the frozen CoT sentence embedding
    width: int = 32  # C: 32 for ranking backbones, 64 for sequential ones
    n_layers: int = 2
    n_heads: int = 2
    mlp_hidden: int = 256  # the token MLPs: D -> 256 -> C, F -> 256 -> C
    use_cot: bool = True  # False: llmcf_wocot
    pooling: Literal["decoder", "mean"] = "decoder"  # "mean": llmcf_mean
    with_examples: bool = True  # False: llmcf_k0 (no example tokens, no label table, no zeroing)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6

    @property
    def tokens_per_example(self) -> int:
        return 3 if self.use_cot else 2

    @property
    def ffn_hidden(self) -> int:
        """LLaMA's SwiGLU size: 2/3 of 4C, rounded up to a multiple of 16."""
        return 16 * math.ceil(8 * self.width / 3 / 16)


def token_mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


# --------------------------------------------------------------------------------------------
# Decoder building blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim: int, n_pos: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (n_pos, head_dim / 2)."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), freqs)  # (n_pos, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of features by its position's angle. x: (B, H, T, hd).

    As one complex multiplication (LLaMA's form): the pair (a, b) is a + ib, times cos + i sin, gives
    (a cos - b sin, a sin + b cos), bit for bit what the two real products per half compute, in one
    kernel instead of six (the decoder's forward and backward 15-20% faster: bench/ict_step_parts.py)."""
    pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))  # (B, H, T, hd/2) complex
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)  # (B, H, T, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ICTConfig) -> None:
        super().__init__()
        assert cfg.width % cfg.n_heads == 0, "width must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.out = nn.Linear(cfg.width, cfg.width, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, last_only: bool
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, 1, C) for the last position only (``last_only``)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if last_only:  # only the last query row is needed; keys and values stay whole
            q, mask = q[:, :, -1:], mask[:, :, -1:]  # (B, H, 1, hd), (B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Tq, hd)
        return self.out(y.transpose(1, 2).reshape(B, q.size(2), C))  # (B, Tq, C)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ICTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.width, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.width, cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ICTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, last_only: bool
    ) -> torch.Tensor:
        attn = self.attn(self.attn_norm(x), cos, sin, mask, last_only)  # (B, Tq, C)
        x = (x[:, -1:] if last_only else x) + attn  # (B, Tq, C)
        return x + self.ffn(self.ffn_norm(x))  # (B, Tq, C)


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Causal mask that also hides padded tokens: (B, T) bool -> (B, 1, T, T), True = may attend.

    A padded position still attends to itself, so that no row is empty (an all-False row would
    make softmax return NaN); nothing downstream reads a padded position's output.
    """
    T = valid.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()  # (T, T)
    itself = torch.eye(T, dtype=torch.bool, device=valid.device)  # (T, T)
    return (causal & valid[:, None, None, :]) | itself  # (B, 1, T, T)


class Decoder(nn.Module):
    def __init__(self, cfg: ICTConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        cos, sin = rope_tables(cfg.width // cfg.n_heads, MAX_TOKENS, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (MAX_TOKENS, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with ``last_only`` the last layer computes only the last
        position, (B, 1, C): what inference needs (the output), at about half the cost."""
        T = x.size(1)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd/2)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, last_only and i == len(self.blocks) - 1)
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# The module: tokens in, last-position state and reconstruction loss out
# --------------------------------------------------------------------------------------------


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine(pred, target) over the examples where ``mask`` is True; 0 if there are none.

    pred, target: (B, K, D); mask: (B, K) bool.
    """
    cos = F.cosine_similarity(pred, target, dim=-1)  # (B, K)
    weight = mask.to(cos.dtype)  # (B, K)
    return ((1.0 - cos) * weight).sum() / weight.sum().clamp_min(1.0)


class InContextModule(nn.Module):
    def __init__(self, cfg: ICTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_mlp = token_mlp(cfg.feature_dim, cfg.mlp_hidden, cfg.width)  # F -> C
        self.label_emb = nn.Embedding(2, cfg.width) if cfg.with_examples else None  # {0, 1} -> C
        self.cot_mlp = token_mlp(cfg.cot_dim, cfg.mlp_hidden, cfg.width) if cfg.use_cot else None
        self.recon_head = token_mlp(cfg.width, cfg.mlp_hidden, cfg.cot_dim) if cfg.use_cot else None
        self.decoder = Decoder(cfg) if cfg.pooling == "decoder" else None

    def example_tokens(
        self, ex_feat: torch.Tensor, ex_cot: torch.Tensor | None, ex_label: torch.Tensor
    ) -> torch.Tensor:
        """(B, K, F), (B, K, D), (B, K) -> (B, K, P, C). Independent of the current sample, so an
        online scorer can compute them once per pool example."""
        assert self.label_emb is not None, "this module takes no examples (llmcf_k0)"
        f = self.feature_mlp(ex_feat)  # (B, K, C)
        lab = self.label_emb(ex_label.long().clamp(0, 1))  # (B, K, C)
        if self.cot_mlp is None:
            return torch.stack((f, lab), dim=2)  # (B, K, 2, C)
        c = self.cot_mlp(ex_cot)  # (B, K, C)
        return torch.stack((f, c, lab), dim=2)  # (B, K, 3, C)

    def forward(
        self,
        query_feat: torch.Tensor,
        ex_tokens: torch.Tensor,
        ex_mask: torch.Tensor,
        ex_cot: torch.Tensor | None = None,
        cot_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the output (B, C) and the reconstruction loss (None without CoT targets).

        query_feat (B, F): the current sample's features; ex_tokens (B, K, P, C) from
        ``example_tokens``; ex_mask (B, K) True for real (not padded) examples; ex_cot (B, K, D)
        and cot_mask (B, K): the true CoT embeddings and where one exists (training only).
        """
        B, K, P, C = ex_tokens.shape
        q = self.feature_mlp(query_feat).unsqueeze(1)  # (B, 1, C)
        x = torch.cat((ex_tokens.reshape(B, K * P, C), q), dim=1)  # (B, T, C)
        valid = torch.cat(
            (ex_mask.repeat_interleave(P, dim=1), ex_mask.new_ones(B, 1)), dim=1
        )  # (B, T): each example's P tokens share its mask; q is always valid

        reconstruct = self.recon_head is not None and ex_cot is not None
        if self.decoder is not None:
            h = self.decoder(x, attention_mask(valid), last_only=not reconstruct)  # (B, T or 1, C)
            out = h[:, -1]  # (B, C): the current sample's position
        else:
            h = x  # llmcf_mean: no encoder; reconstruct from the feature tokens themselves
            w = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
            out = (x * w).sum(1) / w.sum(1)  # (B, C)

        # No retrieved example, no in-context information: the output is zero, so such a sample is
        # scored by the backbone alone (e.g. days before the in-context pool existed) instead of
        # through a second, example-free path that only adds capacity.
        if self.cfg.with_examples:
            out = out * ex_mask.any(dim=1, keepdim=True).to(out.dtype)  # (B, C)

        recon = None
        if reconstruct:
            feat_states = h[:, 0 : K * P : P]  # (B, K, C): positions 0, 3, 6, 9
            pred = self.recon_head(feat_states)  # (B, K, D)
            mask = ex_mask if cot_mask is None else ex_mask & cot_mask  # (B, K)
            recon = reconstruction_loss(pred, ex_cot, mask)
        return out, recon


def ict_config_for(
    variant: str, *, feature_dim: int, cot_dim: int, width: int, layers: int, heads: int
) -> ICTConfig | None:
    """The ICTConfig of a variant, or None for ``base`` (backbone alone)."""
    if variant in ("base", "base_notext"):
        return None
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    return ICTConfig(
        feature_dim=feature_dim,
        cot_dim=cot_dim,
        width=width,
        n_layers=layers,
        n_heads=heads,
        use_cot=variant not in ("llmcf_wocot", "llmcf_k0"),
        pooling="mean" if variant == "llmcf_mean" else "decoder",
        with_examples=variant != "llmcf_k0",
    )
