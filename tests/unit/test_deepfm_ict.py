"""DeepFM's fusion of the in-context module (ICT): gated, so an ICT variant starts as the base.

The ICT output leaves an RMSNorm (per-dimension RMS 1) while the Xavier-initialised field embeddings
are ~20x smaller: fused ungated, the ICT's linear term dominated the logit from the first step and
starved the FM part (DeepFM llmcf and llmcf_k0 below their base on ML-100K, most on warm users).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones import build_model
from llmcf_core.rec.spec import DataSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py

B, K, L, D = 64, 4, 5, 24
HP = RecModelConfig(mlp_dims=(32, 16), user_dropout=0.0)


@pytest.fixture(scope="module")
def spec() -> DataSpec:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(31, D)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    text[0] = 0.0
    genres = rng.integers(0, 6, size=(31, 2))
    genres[0] = 0
    return DataSpec(
        n_users=40, n_items=30, n_genres=5, history_len=L, k=K, item_text=text, item_genres=genres
    )


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def ints(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=g)

    return {
        "user": ints(1, 41, B),
        "item": ints(1, 31, B),
        "hist": ints(1, 31, B, L),
        "hist_fb": ints(1, 3, B, L),
        "label": ints(0, 2, B).float(),
        "nb_user": ints(1, 41, B, K),
        "nb_item": ints(1, 31, B, K),
        "nb_hist": ints(1, 31, B, K, L),
        "nb_hist_fb": ints(1, 3, B, K, L),
        "nb_label": ints(0, 2, B, K),
        "nb_mask": torch.ones(B, K, dtype=torch.bool),
        "nb_cot": torch.nn.functional.normalize(torch.randn(B, K, D, generator=g), dim=-1),
        "nb_cot_mask": torch.ones(B, K, dtype=torch.bool),
    }


def _logits_with_and_without_ict(model, batch):
    """Logits from the model's own ICT output, and with that output replaced by zeros."""
    f = model.fields(batch["user"], batch["item"], batch["hist"], batch["hist_fb"])
    ict_out, _ = model._in_context(batch, f.flat)
    assert ict_out.abs().sum() > 0  # the ICT does produce something: the gate is what holds it
    return model.score(f, model.ict_gate * ict_out), model.score(f, torch.zeros_like(ict_out)), ict_out


@pytest.mark.parametrize("variant", ["llmcf", "llmcf_k0"])
def test_the_ict_adds_nothing_to_the_logit_at_initialisation(spec, variant):
    torch.manual_seed(0)
    model = build_model("DeepFM", spec, HP, variant).eval()
    with torch.no_grad():
        with_ict, without, ict_out = _logits_with_and_without_ict(model, _batch())
    # Ungated (before the fix) the ICT moved these logits by more than the rest of the model's spread.
    assert torch.equal(with_ict, without)
    assert model.ict_gate is not None and model.ict_gate.item() == 0.0
    assert ict_out.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=0.05)  # what the gate holds back


def test_the_gate_learns_and_then_passes_the_ict_output(spec):
    torch.manual_seed(0)
    model = build_model("DeepFM", spec, HP, "llmcf_k0").train()
    batch = {k: v for k, v in _batch().items() if not k.startswith("nb_")}
    model.calculate_loss(batch).total.backward()
    assert model.ict_gate.grad is not None and model.ict_gate.grad.abs().item() > 0
    with torch.no_grad():
        model.ict_gate.fill_(0.5)
        with_ict, without, _ = _logits_with_and_without_ict(model.eval(), batch)
    assert (with_ict - without).abs().max().item() > 1e-4


def test_the_base_has_no_ict_parameters(spec):
    torch.manual_seed(0)
    base = build_model("DeepFM", spec, HP, "base")
    names = {n for n, _ in base.named_parameters()}
    assert not any(n.startswith(("ict", "ict_linear", "ict_gate")) for n in names)
    assert base.ict_gate is None and base.ict_linear is None
    assert {n.split(".")[0] for n in names} == {"fields", "first_order", "deep", "out"}


@pytest.mark.parametrize("name", ["DeepFM", "DIN", "DCNv2", "SASRec", "GRU4Rec"])
def test_a_model_saved_before_the_gate_loads_ungated(spec, name):
    torch.manual_seed(0)
    model = build_model(name, spec, HP, "llmcf")
    old = {k: v for k, v in model.state_dict().items() if k != "ict_gate"}
    fresh = build_model(name, spec, HP, "llmcf")
    fresh.load_state_dict(old)  # strict: no missing key
    assert fresh.ict_gate.item() == 1.0  # the fusion it was trained with
    saved = model.state_dict()  # a current model keeps its own gate
    again = build_model(name, spec, HP, "llmcf")
    again.load_state_dict(saved)
    assert again.ict_gate.item() == 0.0
