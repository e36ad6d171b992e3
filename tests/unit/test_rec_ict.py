"""The in-context module: token layout and shapes, causal and padding masks, RoPE, the
reconstruction loss on hand-built cases, and the variant switches."""

from __future__ import annotations

import math

import pytest
import torch

from llmcf_core.rec.ict import (
    ICTConfig,
    InContextModule,
    apply_rope,
    attention_mask,
    ict_config_for,
    reconstruction_loss,
    rope_tables,
)

B, K, F, D, C = 3, 4, 12, 8, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(B, F, generator=g),
        "ex_feat": torch.randn(B, K, F, generator=g),
        "ex_cot": torch.randn(B, K, D, generator=g),
        "ex_label": torch.randint(0, 2, (B, K), generator=g),
        "ex_mask": torch.ones(B, K, dtype=torch.bool),
    }


def _module(variant: str = "llmcf") -> InContextModule:
    torch.manual_seed(0)
    cfg = ict_config_for(variant, feature_dim=F, cot_dim=D, width=C, layers=2, heads=2)
    return InContextModule(cfg).eval()


def test_config_matches_the_method():
    cfg = ict_config_for("llmcf", feature_dim=F, cot_dim=D, width=32, layers=2, heads=2)
    assert (cfg.n_layers, cfg.n_heads, cfg.width, cfg.tokens_per_example) == (2, 2, 32, 3)
    assert cfg.ffn_hidden == 96  # 2/3 * 4 * 32 = 85.3 -> multiple of 16
    assert ict_config_for("base", feature_dim=F, cot_dim=D, width=32, layers=2, heads=2) is None
    assert not ict_config_for("llmcf_wocot", feature_dim=F, cot_dim=D, width=32, layers=2, heads=2).use_cot
    assert (
        ict_config_for("llmcf_mean", feature_dim=F, cot_dim=D, width=32, layers=2, heads=2).pooling == "mean"
    )
    with pytest.raises(ValueError):
        ict_config_for("nope", feature_dim=F, cot_dim=D, width=32, layers=2, heads=2)


def test_shapes_and_token_layout():
    ict, x = _module(), _inputs()
    tokens = ict.example_tokens(x["ex_feat"], x["ex_cot"], x["ex_label"])
    assert tokens.shape == (B, K, 3, C)  # [features, CoT, label] per example
    # token 0 of each example is the feature MLP, token 1 the CoT MLP, token 2 the label embedding
    torch.testing.assert_close(tokens[:, :, 0], ict.feature_mlp(x["ex_feat"]))
    torch.testing.assert_close(tokens[:, :, 1], ict.cot_mlp(x["ex_cot"]))
    torch.testing.assert_close(tokens[:, :, 2], ict.label_emb(x["ex_label"]))
    out, recon = ict(x["query"], tokens, x["ex_mask"], x["ex_cot"])
    assert out.shape == (B, C) and recon.shape == () and 0 <= recon.item() <= 2

    wocot = _module("llmcf_wocot")
    tokens = wocot.example_tokens(x["ex_feat"], None, x["ex_label"])
    assert tokens.shape == (B, K, 2, C)
    out, recon = wocot(x["query"], tokens, x["ex_mask"], x["ex_cot"])
    assert out.shape == (B, C) and recon is None  # no CoT tokens, nothing to reconstruct


def test_output_is_the_last_position_of_the_decoder():
    ict, x = _module(), _inputs()
    tokens = ict.example_tokens(x["ex_feat"], x["ex_cot"], x["ex_label"])
    seq = torch.cat((tokens.reshape(B, 3 * K, C), ict.feature_mlp(x["query"]).unsqueeze(1)), dim=1)
    assert seq.shape == (B, 13, C)  # K = 4 -> 13 tokens
    h = ict.decoder(seq, attention_mask(torch.ones(B, 13, dtype=torch.bool)))
    out, _ = ict(x["query"], tokens, x["ex_mask"])
    torch.testing.assert_close(out, h[:, -1])


def test_causal_mask_hides_the_future():
    ict = _module()
    seq = torch.randn(B, 13, C)
    mask = attention_mask(torch.ones(B, 13, dtype=torch.bool))
    assert mask.shape == (B, 1, 13, 13)
    assert torch.equal(mask[0, 0], torch.ones(13, 13, dtype=torch.bool).tril())
    h = ict.decoder(seq, mask)
    changed = seq.clone()
    changed[:, 6] += 1.0  # perturb position 6
    h2 = ict.decoder(changed, mask)
    torch.testing.assert_close(h2[:, :6], h[:, :6])  # earlier positions cannot see it
    assert not torch.allclose(h2[:, 6:], h[:, 6:])  # it and later positions do


def test_padded_examples_are_invisible():
    ict, x = _module(), _inputs()
    x["ex_mask"][:, 3] = False  # the last example is padding
    tokens = ict.example_tokens(x["ex_feat"], x["ex_cot"], x["ex_label"])
    out, _ = ict(x["query"], tokens, x["ex_mask"])
    noisy = tokens.clone()
    noisy[:, 3] = torch.randn_like(noisy[:, 3]) * 10
    out2, _ = ict(x["query"], noisy, x["ex_mask"])
    torch.testing.assert_close(out2, out)
    noisy[:, 1] += 1.0  # a real example does matter
    out3, _ = ict(x["query"], noisy, x["ex_mask"])
    assert not torch.allclose(out3, out)
    # A row without any real example has no in-context information: its output is exactly zero
    # (the backbone alone scores it), whatever the query; the other rows are untouched.
    x["ex_mask"][0] = False
    out4, _ = ict(x["query"], tokens, x["ex_mask"])
    assert torch.isfinite(out4).all() and (out4[0] == 0).all()
    torch.testing.assert_close(out4[1:], out[1:])


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(8, 32, 10_000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(i: int, j: int) -> float:
        qi = apply_rope(q.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)[0, 0, i]
        kj = apply_rope(k.view(1, 1, 1, 8).expand(1, 1, 32, 8), cos, sin)[0, 0, j]
        return float(qi @ kj)

    assert math.isclose(score(5, 2), score(20, 17), rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(score(0, 0), float(q @ k), rel_tol=1e-5, abs_tol=1e-6)  # position 0: no rotation


def test_rope_as_a_complex_product_is_the_real_rotation_bit_for_bit():
    """``apply_rope`` multiplies complex pairs; it must give exactly the real-arithmetic rotation
    (a cos - b sin, a sin + b cos), forward and gradient, on the strided q/k views the attention
    passes, so that models trained before the change and after it are the same to the last bit."""

    def real_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1).flatten(-2)

    torch.manual_seed(0)
    B, T, H, hd = 16, 13, 2, 16
    cos, sin = rope_tables(hd, 32, 10_000.0)
    cos, sin = cos[:T], sin[:T]
    qkv = torch.randn(B, T, 3 * H * hd)
    weights = torch.randn(B, H, T, hd)
    results = []
    for rotate in (real_rotation, apply_rope):
        x = qkv.clone().requires_grad_(True)
        k = x.split(H * hd, dim=2)[1].view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd), strided
        y = rotate(k, cos, sin)
        (y * weights).sum().backward()
        results.append((y.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_reconstruction_loss_hand_built():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    target = torch.tensor([[[3.0, 0.0], [-1.0, 0.0]]])  # cos = 1 and 0
    both = torch.tensor([[True, True]])
    assert reconstruction_loss(pred, target, both).item() == pytest.approx(0.5)  # 1 - mean(1, 0)
    assert reconstruction_loss(pred, target, torch.tensor([[True, False]])).item() == pytest.approx(0.0)
    assert reconstruction_loss(pred, -target, torch.tensor([[True, False]])).item() == pytest.approx(2.0)
    assert reconstruction_loss(pred, target, torch.tensor([[False, False]])).item() == 0.0


def test_reconstruction_reads_the_feature_positions():
    """Positions 0, 3, 6, 9 feed the head, each predicting the CoT of its own example."""
    ict, x = _module(), _inputs()
    x["ex_mask"][0, 2] = False
    cot_mask = torch.ones(B, K, dtype=torch.bool)
    cot_mask[1, 0] = False  # an example without a CoT is not reconstructed
    seen = {}
    ict.recon_head.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0], out=out))
    tokens = ict.example_tokens(x["ex_feat"], x["ex_cot"], x["ex_label"])
    _, recon = ict(x["query"], tokens, x["ex_mask"], x["ex_cot"], cot_mask)

    seq = torch.cat((tokens.reshape(B, 3 * K, C), ict.feature_mlp(x["query"]).unsqueeze(1)), dim=1)
    valid = torch.cat((x["ex_mask"].repeat_interleave(3, dim=1), torch.ones(B, 1, dtype=torch.bool)), dim=1)
    h = ict.decoder(seq, attention_mask(valid))
    torch.testing.assert_close(seen["inp"], h[:, [0, 3, 6, 9]])
    mask = x["ex_mask"] & cot_mask
    cos = torch.nn.functional.cosine_similarity(seen["out"], x["ex_cot"], dim=-1)
    assert recon.item() == pytest.approx(1 - cos[mask].mean().item(), abs=1e-6)


def test_mean_variant_pools_the_tokens():
    ict, x = _module("llmcf_mean"), _inputs()
    assert ict.decoder is None
    x["ex_mask"][:, 0] = False
    tokens = ict.example_tokens(x["ex_feat"], x["ex_cot"], x["ex_label"])
    out, recon = ict(x["query"], tokens, x["ex_mask"], x["ex_cot"])
    q = ict.feature_mlp(x["query"])
    expected = (tokens[:, 1:].sum((1, 2)) + q) / (3 * (K - 1) + 1)
    torch.testing.assert_close(out, expected)
    assert recon is not None


def test_no_dropout_anywhere():
    ict = _module()
    assert not any(isinstance(m, torch.nn.Dropout) for m in ict.modules())
    cfg = ICTConfig(feature_dim=F, cot_dim=D)
    assert cfg.width == 32 and cfg.n_layers == 2 and cfg.n_heads == 2
