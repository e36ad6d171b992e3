"""Every backbone x variant runs (the RecBole "every model runs" test): a few Adam steps on a tiny
fixture make its loss fall, and predict / full_sort_predict return the right shapes."""

from __future__ import annotations

import pytest
import torch

from llmcf_core.config import CONFIG_DIR, RecModelConfig, load_config_file
from llmcf_core.rec.backbones import MODELS, build_model, model_class
from llmcf_core.rec.dataset import load_tables
from llmcf_core.rec.spec import VARIANTS, uses_icl
from llmcf_core.rec.synthetic import write_synthetic_dataset

HP = RecModelConfig(mlp_dims=(32, 16), n_negatives=16, lr=0.01, user_dropout=0.0, seq_loss="sampled")
STEPS = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def tables_by_task(tmp_path_factory):
    home = tmp_path_factory.mktemp("rec_models_home")
    write_synthetic_dataset(home, "synth", n_users=16, n_items=20, days=(3, 1, 1), users=True)
    settings = load_config_file(CONFIG_DIR / "local.yaml").model_copy(update={"home": home})
    settings = settings.model_copy(update={"rec": settings.rec.model_copy(update={"user_features": True})})
    return {
        task: load_tables(settings, "synth", embedder="synth-enc", task=task)
        for task in ("ranking", "sequential")
    }


def test_registry_has_the_papers_ten_backbones():
    assert set(MODELS) == {
        *("DIN", "DeepFM", "DCNv2", "AutoInt", "xDeepFM", "DCN"),
        *("SASRec", "GRU4Rec", "SRGNN", "YoutubeDNN"),
    }
    assert model_class("din") is MODELS["DIN"]
    with pytest.raises(ValueError, match="unknown model"):
        model_class("NoSuchNet")


# Every backbone with the variants that change its architecture; every variant for DIN and SASRec
# (llmcf_random and llmcf_shufcot only change the data: tests/unit/test_rec_controls.py).
CASES = [(m, v) for m in MODELS for v in ("base", "base_notext", "llmcf", "llmcf_k0")]
CASES += [(m, v) for m in ("DIN", "SASRec") for v in VARIANTS if (m, v) not in CASES]


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_every_model_trains_and_its_loss_falls(tables_by_task, name, variant):
    task = model_class(name).task
    tables = tables_by_task[task]
    torch.manual_seed(0)
    model = build_model(name, tables.spec(), HP, variant)
    assert (model.ict is None) == (not uses_icl(variant))
    rows = tables.rows("train")[:48]
    batch = tables.batch(rows)
    if variant == "llmcf_k0":
        batch = {k: v for k, v in batch.items() if not k.startswith("nb_")}  # it reads no examples
    optimizer = torch.optim.Adam(model.parameters(), lr=HP.lr)
    model.train()
    losses = []
    for step in range(STEPS):
        torch.manual_seed(step)  # the same negatives at every run of this test
        terms = model.calculate_loss(batch)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.total.item())
        if variant in ("llmcf", "llmcf_mean", "llmcf_random", "llmcf_shufcot", "llmcf_recon"):
            assert terms.recon.item() > 0  # the reconstruction term is active
        else:
            assert terms.recon.item() == 0
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses

    model.eval()
    with torch.no_grad():
        scores = model.predict(batch)
        assert scores.shape == (len(rows),)
        if task == "ranking":
            assert ((scores >= 0) & (scores <= 1)).all()
        else:
            full = model.full_sort_predict(batch)
            assert full.shape == (len(rows), tables.spec().n_items)
            # predict(item) equals the full-sort column of that item
            torch.testing.assert_close(full[torch.arange(len(rows)), batch["item"] - 1], scores)


def test_the_ict_changes_the_prediction(tables_by_task):
    tables = tables_by_task["ranking"]
    torch.manual_seed(0)
    model = build_model("DIN", tables.spec(), HP, "llmcf").eval()
    batch = tables.batch(tables.rows("valid")[:8])
    with torch.no_grad():
        model.ict_gate.fill_(1.0)  # 0 at initialisation: the ICT adds nothing until it is trained
        before = model.predict(batch)
        batch["nb_label"] = 1 - batch["nb_label"]
        after = model.predict(batch)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("name", ["DIN", "SASRec"])
def test_llmcf_recon_trains_the_shared_embeddings_on_cots_but_scores_as_its_backbone(tables_by_task, name):
    """The control: the reconstruction loss reaches the backbone's embeddings, the ICT output never
    reaches the score (its gate is a zero buffer that training cannot move)."""
    tables = tables_by_task[model_class(name).task]
    torch.manual_seed(0)
    model = build_model(name, tables.spec(), HP, "llmcf_recon")
    assert "ict_gate" not in dict(model.named_parameters()) and float(model.ict_gate) == 0.0
    batch = tables.batch(tables.rows("train")[:32])
    model.train()
    terms = model.calculate_loss(batch)
    assert terms.recon.item() > 0
    model.zero_grad()
    terms.recon.backward()
    assert model.fields.item.weight.grad is not None and model.fields.item.weight.grad.abs().sum() > 0
    torch.optim.Adam(model.parameters(), lr=0.1).step()
    assert float(model.ict_gate) == 0.0
    model.eval()
    with torch.no_grad():
        before = model.predict(batch)
        flipped = dict(batch, nb_label=1 - batch["nb_label"])
        torch.testing.assert_close(model.predict(flipped), before)  # the examples do not reach the score
        llmcf = build_model(name, tables.spec(), HP, "llmcf").eval()
        llmcf.ict_gate.fill_(1.0)
        assert not torch.allclose(llmcf.predict(flipped), llmcf.predict(batch))  # they do in llmcf


def test_precomputed_example_tokens_give_the_same_scores(tables_by_task):
    """The online path feeds example tokens computed once per pool example."""
    for name in ("DIN", "SASRec"):
        tables = tables_by_task[model_class(name).task]
        torch.manual_seed(0)
        model = build_model(name, tables.spec(), HP, "llmcf").eval()
        with torch.no_grad():
            model.ict_gate.fill_(1.0)  # so the ICT's tokens matter to the score
        batch = tables.batch(tables.rows("test")[:8])
        with torch.no_grad():
            direct = model.predict(batch)
            batch["nb_tokens"] = model.example_tokens(batch)
            torch.testing.assert_close(model.predict(batch), direct)


def test_full_softmax_loss_is_cross_entropy_over_the_whole_catalogue(tables_by_task):
    import torch.nn.functional as F

    tables = tables_by_task["sequential"]
    torch.manual_seed(0)
    model = build_model("SASRec", tables.spec(), HP.model_copy(update={"seq_loss": "full"}), "base").eval()
    batch = tables.batch(tables.rows("train")[:16])
    with torch.no_grad():
        loss = model.calculate_loss(batch).task
        want = F.cross_entropy(model.full_sort_predict(batch), batch["item"] - 1)
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("name", list(MODELS))
def test_an_ict_variant_starts_from_the_base_weights_of_its_seed(tables_by_task, name):
    """Paired llmcf - base runs differ by the ICT, not by a second random initialisation."""
    tables = tables_by_task[model_class(name).task]
    base = build_model(name, tables.spec(), HP, "base", seed=3).state_dict()
    for variant in ("llmcf", "llmcf_k0"):
        ict = build_model(name, tables.spec(), HP, variant, seed=3).state_dict()
        shared = [k for k in base if k in ict and ict[k].shape == base[k].shape]
        assert len(shared) >= 3 and len(ict) > len(shared)  # the ICT's own weights are extra
        assert all(torch.equal(base[k], ict[k]) for k in shared), name
    other = build_model(name, tables.spec(), HP, "base", seed=4).state_dict()
    assert not all(torch.equal(base[k], other[k]) for k in base)  # the seed still matters


@pytest.mark.parametrize("name", list(MODELS))
def test_an_ict_variant_starts_as_its_base(tables_by_task, name):
    """Same seed: the base's weights in every shared and widened layer, the ICT gated at zero, so
    llmcf's scores at initialisation are the base's (and the ICT's widened columns line up)."""
    tables = tables_by_task[model_class(name).task]
    batch = tables.batch(tables.rows("valid")[:16])
    base = build_model(name, tables.spec(), HP, "base", seed=5).eval()
    with torch.no_grad():
        want = base.predict(batch)
        for variant in ("llmcf", "llmcf_k0"):
            model = build_model(name, tables.spec(), HP, variant, seed=5).eval()
            assert model.ict_gate is not None and model.ict_gate.item() == 0.0
            torch.testing.assert_close(model.predict(batch), want, rtol=1e-5, atol=1e-5)
            if model.task == "sequential":  # the whole catalogue's scores too
                torch.testing.assert_close(
                    model.full_sort_predict(batch), base.full_sort_predict(batch), rtol=1e-5, atol=1e-5
                )
            # ...and a gate that opens changes them: the ICT's columns are live, not dead weights.
            model.ict_gate.fill_(1.0)
            assert (model.predict(batch) - want).abs().max().item() > 1e-4, (name, variant)


@pytest.mark.parametrize("name", ["DIN", "GRU4Rec"])
def test_ict_dropout_zeroes_the_ict_of_some_training_samples_only(tables_by_task, name):
    """``ict_dropout``: in training a sample's ICT output is zeroed (its score is the base's) with
    that probability; scoring (eval) always reads the ICT; 0 leaves training untouched. The
    backbones' own dropout layers stay in eval mode here, so only the ICT dropout is random."""

    def training(model: torch.nn.Module) -> torch.nn.Module:
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        return model

    tables = tables_by_task[model_class(name).task]
    batch = tables.batch(tables.rows("train")[:256])
    base = build_model(name, tables.spec(), HP, "base", seed=5).eval()
    hp = HP.model_copy(update={"ict_dropout": 0.5})
    model = build_model(name, tables.spec(), hp, "llmcf", seed=5)
    with torch.no_grad():
        model.ict_gate.fill_(1.0)
        want_base = base.predict(batch)
        want_ict = model.eval().predict(batch)
        torch.manual_seed(0)
        got = training(model).predict(batch)
    dropped = torch.isclose(got, want_base, rtol=1e-5, atol=1e-6)
    kept = torch.isclose(got, want_ict, rtol=1e-5, atol=1e-6)
    assert bool((dropped | kept).all())  # each sample either has its ICT or has none
    assert 0.35 < dropped.float().mean().item() < 0.65  # about half of them lost it
    torch.testing.assert_close(model.eval().predict(batch), want_ict)  # scoring: never dropped
    off = build_model(name, tables.spec(), HP, "llmcf", seed=5)
    with torch.no_grad():
        off.ict_gate.fill_(1.0)
        torch.testing.assert_close(training(off).predict(batch), off.eval().predict(batch))


def test_mean_of_rows_is_the_masked_mean_of_the_gathered_rows():
    """The fused history-text mean equals gather-then-masked-mean, for (B, L) and (B, K, L) indices,
    including a history that is all padding (zeros) and repeated items."""
    from llmcf_core.rec.fields import masked_mean, mean_of_rows

    torch.manual_seed(0)
    table = torch.randn(11, 7)
    table[0] = 0.0  # row 0 is the padding
    index = torch.tensor([[3, 3, 5, 0], [0, 0, 0, 0], [10, 1, 2, 9]])  # (B, L)
    torch.testing.assert_close(mean_of_rows(table, index), masked_mean(table[index], index > 0))
    assert bool((mean_of_rows(table, index)[1] == 0).all())
    torch.testing.assert_close(mean_of_rows(table, index)[0], (2 * table[3] + table[5]) / 3)
    nested = torch.randint(0, 11, (2, 3, 4))  # (B, K, L)
    got = mean_of_rows(table, nested)
    assert got.shape == (2, 3, 7)
    torch.testing.assert_close(got, masked_mean(table[nested], nested > 0))
