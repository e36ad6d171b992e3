"""User side features reach the model; the control variants build the inputs they claim; the
paired bootstrap on hand-built cases; the experiment's accumulated runs and paired table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jobs import experiment
from llmcf_core.config import CONFIG_DIR, RecModelConfig, load_config_file
from llmcf_core.rec import metrics, registry, stats
from llmcf_core.rec.backbones import build_model
from llmcf_core.rec.dataset import apply_control, load_tables
from llmcf_core.rec.experiment import merge_runs
from llmcf_core.rec.synthetic import write_synthetic_dataset
from llmcf_core.rec.train import train

HP = RecModelConfig(mlp_dims=(32, 16), n_negatives=16, lr=0.01, user_dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("rec_controls_home")
    write_synthetic_dataset(home, "synth", n_users=16, n_items=20, days=(3, 1, 1), users=True)
    settings = load_config_file(CONFIG_DIR / "local.yaml").model_copy(update={"home": home})
    return settings.model_copy(update={"rec": settings.rec.model_copy(update={"user_features": True})})


def _tables(settings, task="ranking"):
    return load_tables(settings, "synth", embedder="synth-enc", task=task)


# --------------------------------------------------------------------------------------------
# User side features
# --------------------------------------------------------------------------------------------


def test_user_features_flow_from_the_users_table_to_the_model(settings):
    tables = _tables(settings)
    assert tables.user_feature_names == ["age_group", "gender", "occupation"]
    assert tables.user_feat is not None and tables.user_feat.shape == (len(tables.sample_id), 3)
    # every sample's user is in the users table: no unknown values, cold users included
    assert (tables.user_feat > 0).all()
    assert tables.spec().user_feature_sizes == tuple(len(v) for v in tables.user_feature_vocab)
    batch = tables.batch(tables.rows("test")[:16])
    assert batch["user_feat"].shape == (16, 3) and batch["nb_user_feat"].shape == (16, tables.k, 3)

    torch.manual_seed(0)
    model = build_model("DIN", tables.spec(), HP, "base").eval()
    assert model.fields.names[-3:] == ("user_feature_0", "user_feature_1", "user_feature_2")
    with torch.no_grad():
        before = model.predict(batch)
        other = dict(batch, user_feat=(batch["user_feat"] % 2) + 1)  # other occupations etc.
        assert not torch.allclose(before, model.predict(other))
        # no user features sent (e.g. an online request without them) = all unknown: still scores
        unknown = {k: v for k, v in batch.items() if k != "user_feat"}
        assert torch.isfinite(model.predict(unknown)).all()


def test_base_notext_drops_the_text_fields(settings):
    spec = _tables(settings).spec()
    with_text = build_model("DIN", spec, HP, "base")
    without = build_model("DIN", spec, HP, "base_notext")
    assert "item_text" in with_text.fields.names and "item_text" not in without.fields.names
    assert with_text.n_fields == without.n_fields + 2
    assert not any("text_proj" in name for name, _ in without.named_parameters())


# --------------------------------------------------------------------------------------------
# Controls
# --------------------------------------------------------------------------------------------


def test_llmcf_random_keeps_labels_and_time_but_not_the_neighbours(settings):
    real = _tables(settings)
    control = apply_control(_tables(settings), "llmcf_random", seed=0)
    assert control.control == "llmcf_random"
    slots = real.nb_row >= 0
    moved = control.nb_row >= 0
    assert (moved <= slots).all()  # a slot is only emptied when no earlier example has its label
    # the same label in every slot, from the pool, strictly earlier than the sample
    np.testing.assert_array_equal(real.label[real.nb_row[moved]], control.label[control.nb_row[moved]])
    assert np.isin(control.nb_row[moved], control.pool_rows).all()
    sample_ts = np.broadcast_to(control.timestamp[:, None], control.nb_row.shape)[moved]
    assert (control.timestamp[control.nb_row[moved]] < sample_ts).all()
    assert (control.nb_row[moved] != real.nb_row[moved]).mean() > 0.3  # not the retrieved ones
    again = apply_control(_tables(settings), "llmcf_random", seed=0)
    np.testing.assert_array_equal(again.nb_row, control.nb_row)  # deterministic in the seed
    other = apply_control(_tables(settings), "llmcf_random", seed=1)
    assert not np.array_equal(other.nb_row, control.nb_row)


def test_llmcf_shufcot_permutes_cots_within_a_label(settings):
    real = _tables(settings)
    control = apply_control(_tables(settings), "llmcf_shufcot", seed=0)
    np.testing.assert_array_equal(control.nb_row, real.nb_row)  # the same examples
    has = real.cot_row > 0
    np.testing.assert_array_equal(control.cot_row > 0, has)
    for lab in (0, 1):
        group = has & (real.label == lab)
        assert sorted(control.cot_row[group]) == sorted(real.cot_row[group])  # a permutation ...
    source_label = {row: real.label[i] for i, row in enumerate(real.cot_row) if row > 0}
    for i in np.flatnonzero(has):
        assert source_label[control.cot_row[i]] == real.label[i]  # ... within the label
    assert (control.cot_row[has] != real.cot_row[has]).mean() > 0.5


def test_other_variants_leave_the_tables_alone(settings):
    tables = _tables(settings)
    nb, cot = tables.nb_row.copy(), tables.cot_row.copy()
    apply_control(tables, "llmcf", seed=0)
    np.testing.assert_array_equal(tables.nb_row, nb)
    np.testing.assert_array_equal(tables.cot_row, cot)


def test_llmcf_k0_is_the_ict_on_the_current_sample_alone(settings):
    tables = _tables(settings)
    torch.manual_seed(0)
    model = build_model("DIN", tables.spec(), HP, "llmcf_k0").eval()
    assert model.ict is not None and model.ict.label_emb is None and model.ict.cot_mlp is None
    batch = tables.batch(tables.rows("valid")[:8])
    bare = {k: v for k, v in batch.items() if not k.startswith("nb_")}
    f = model.fields(bare["user"], bare["item"], bare["hist"], bare["hist_fb"], bare["user_feat"])
    with torch.no_grad():
        out, recon = model._in_context(bare, f.flat)
        assert out.shape == (8, HP.ict_width_ranking) and out.abs().sum() > 0  # not zeroed
        assert recon.item() == 0
        torch.testing.assert_close(model.predict(bare), model.predict(batch))  # examples unused


def test_train_saves_test_predictions_for_the_paired_statistics(settings):
    result = train(
        settings, "synth", "DIN", "llmcf_k0", seed=0, workers=0, max_epochs=1, embedder="synth-enc"
    )
    with np.load(result.path / registry.PREDICTIONS_FILE) as z:
        ids, value, label, cold = z["sample_id"], z["value"], z["label"], z["cold"]
    assert len(ids) == result.metrics["test"]["n"] == len(value) == len(label) == len(cold)
    assert metrics.auc(label, value) == pytest.approx(result.metrics["test"]["auc"])
    assert result.metrics["data"].get("neighbor_days_missing") is None  # k0 reads no neighbours
    seq = train(settings, "synth", "SASRec", "base", seed=0, workers=0, max_epochs=1, embedder="synth-enc")
    with np.load(seq.path / registry.PREDICTIONS_FILE) as z:
        ranks = z["value"]
    assert stats.ndcg_gain(ranks).mean() == pytest.approx(seq.metrics["test"]["ndcg@10"])


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def test_weighted_auc_equals_auc_on_repeated_rows():
    labels = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.8, 0.1, 0.4, 0.4, 0.3, 0.2])  # ties across labels
    counts = np.array([2, 0, 1, 3, 1, 1, 0, 2])
    repeated = np.repeat(np.arange(8), counts)
    assert stats.weighted_auc(labels, scores, np.ones((1, 8)))[0] == pytest.approx(
        metrics.auc(labels, scores)
    )
    assert stats.weighted_auc(labels, scores, counts[None, :])[0] == pytest.approx(
        metrics.auc(labels[repeated], scores[repeated])
    )
    assert np.isnan(stats.weighted_auc(labels, scores, (labels == 1)[None, :] * 1.0)[0])  # no negatives


def test_paired_interval_on_hand_built_cases():
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.5).astype(int)
    good = labels + rng.normal(0, 0.8, 2000)
    worse = labels + rng.normal(0, 1.6, 2000)
    same = stats.paired_interval("ranking", labels, [good, good], [good, good], n_boot=200)
    assert same.diff == 0 and same.lo == 0 and same.hi == 0 and same.verdict == "includes 0"
    up = stats.paired_interval("ranking", labels, [good], [worse], n_boot=200)
    assert up.verdict == "above 0" and up.lo > 0 and up.lo < up.diff < up.hi
    assert up.diff == pytest.approx(metrics.auc(labels, good) - metrics.auc(labels, worse))
    down = stats.paired_interval("ranking", labels, [worse], [good], n_boot=200)
    assert down.verdict == "below 0" and down.diff == pytest.approx(-up.diff)
    # a tiny difference inside the row noise includes zero
    nudged = good + rng.normal(0, 0.01, 2000)
    assert stats.paired_interval("ranking", labels, [nudged], [good], n_boot=200).verdict == "includes 0"
    # next item: per-row NDCG@10 of ranks; a subset mask
    ranks_a, ranks_b = np.zeros(100), np.full(100, 50.0)
    iv = stats.paired_interval("sequential", None or np.zeros(100), [ranks_a], [ranks_b], n_boot=100)
    assert iv.diff == pytest.approx(1.0) and iv.lo == pytest.approx(1.0)
    mask = np.arange(100) < 10
    sub = stats.paired_interval("sequential", np.zeros(100), [ranks_a], [ranks_b], mask=mask, n_boot=100)
    assert sub.n == 10 and sub.diff == pytest.approx(1.0)


def test_seed_interval_is_a_t_interval_over_the_per_seed_differences():
    lo, hi = stats.seed_interval([0.01, 0.03])  # mean 0.02, sd 0.01414, t(0.975, 1) = 12.706
    assert lo == pytest.approx(0.02 - 12.7062 * 0.01, abs=1e-5) and hi == pytest.approx(
        0.02 + 0.127062, abs=1e-5
    )
    assert stats.verdict(lo, hi) == "includes 0"
    assert stats.verdict(*stats.seed_interval([0.010, 0.011, 0.012, 0.009, 0.010])) == "above 0"
    # two seeds of five make the lift: above zero over rows can still include zero over seeds
    assert stats.verdict(*stats.seed_interval([0.004, 0.0035, -0.0004, 0.0, 0.0001])) == "includes 0"
    assert all(np.isnan(stats.seed_interval([0.02])))  # one seed: no spread to estimate
    rng = np.random.default_rng(1)
    labels = (rng.random(500) < 0.5).astype(int)
    a, b = (
        [labels + rng.normal(0, 0.8, 500) for _ in range(3)],
        [labels + rng.normal(0, 1.6, 500) for _ in range(3)],
    )
    row = stats.paired_interval("ranking", labels, a, b, n_boot=50).to_dict()
    assert (row["seed_lo"], row["seed_hi"]) == stats.seed_interval(row["per_seed"])
    assert row["seed_verdict"] == stats.verdict(row["seed_lo"], row["seed_hi"])


def test_merge_runs_keeps_earlier_runs_and_drops_stale_ones():
    def run(model, variant, seed, fp, task="ranking"):
        return {"model": model, "variant": variant, "seed": seed, "fingerprint": fp, "task": task}

    earlier = [
        run("DIN", "base", 0, "a"),
        run("DIN", "llmcf", 0, "n1"),  # with neighbours, on the old pool
        run("SASRec", "base", 0, "s", "sequential"),
        run("DIN", "base", 1, "a"),
    ]
    new = [run("DIN", "base", 1, "a"), run("DIN", "llmcf", 1, "n2")]  # a new pool version
    merged, dropped = merge_runs(earlier, new)
    keys = [(r["model"], r["variant"], r["seed"]) for r in merged]
    assert dropped == 1  # DIN llmcf seed 0 was on the old pool
    assert keys == [("DIN", "base", 0), ("SASRec", "base", 0), ("DIN", "base", 1), ("DIN", "llmcf", 1)]


def test_experiment_accumulates_runs_and_reports_paired_intervals(settings, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMCF_HOME", str(settings.home))
    out = tmp_path / "results"
    common = ["--dataset", "synth", "--workers", "0", "--max-epochs", "1", "--embedder", "synth-enc"]
    common += ["--out", str(out), "--models", "DIN"]
    assert experiment.main([*common, "--variants", "base,llmcf", "--seeds", "1"]) == 0
    assert (
        experiment.main(
            [*common, "--variants", "base,llmcf,llmcf_shufcot", "--seeds", "1", "--first-seed", "1"]
        )
        == 0
    )
    report = json.loads((out / "synth.json").read_text())
    keys = {(r["variant"], r["seed"]) for r in report["runs"]}
    assert keys == {("base", 0), ("llmcf", 0), ("base", 1), ("llmcf", 1), ("llmcf_shufcot", 1)}
    pairs = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert pairs[("llmcf", "base")]["seeds"] == [0, 1]
    assert pairs[("llmcf", "llmcf_shufcot")]["seeds"] == [1]
    lift = pairs[("llmcf", "base")]["all"]
    assert lift["lo"] <= lift["diff"] <= lift["hi"] and len(lift["per_seed"]) == 2
    assert {"cold", "warm"} <= set(pairs[("llmcf", "base")])
    md = (out / "synth.md").read_text()
    assert "### Paired differences (AUC, test)" in md and "| DIN | llmcf − base | 2 |" in md
    assert "Outside their interval (above zero):" in md and "cold AUC" in md
    assert experiment.main([*common, "--variants", "base", "--seeds", "1", "--fresh"]) == 0
    assert len(json.loads((out / "synth.json").read_text())["runs"]) == 1


def test_online_scoring_reads_the_users_table_or_the_request(settings):
    from llmcf_core.rec.scoring import Scorer, ScoreRequest

    result = train(settings, "synth", "DIN", "base", seed=0, workers=0, max_epochs=1, embedder="synth-enc")
    assert result.metrics and (result.path / "model.json").is_file()
    scorer = Scorer.load(settings, "synth", "DIN", "base", version=result.version)
    assert scorer.user_feature_names == ["age_group", "gender", "occupation"] and len(scorer.users) == 16
    req = ScoreRequest(user_id=3, history_item_ids=[1, 2, 3], candidate_item_ids=[4, 5, 6])
    from_table = scorer.score(req)
    as_stored = dict(scorer.users[3])
    np.testing.assert_allclose(
        scorer.score(ScoreRequest(3, [1, 2, 3], [4, 5, 6], user_features=as_stored)), from_table
    )
    other = dict(as_stored, occupation="occ2" if as_stored["occupation"] != "occ2" else "occ0")
    assert not np.allclose(
        scorer.score(ScoreRequest(3, [1, 2, 3], [4, 5, 6], user_features=other)), from_table
    )
    unknown = scorer.score(ScoreRequest(999, [1, 2, 3], [4, 5, 6]))  # not in the table: all unknown
    assert np.isfinite(unknown).all()


def test_user_features_can_be_switched_off(settings, tmp_path, capsys, monkeypatch):
    off = settings.model_copy(update={"rec": settings.rec.model_copy(update={"user_features": False})})
    tables = _tables(off)
    assert tables.user_feat is None and tables.spec().user_feature_sizes == ()
    assert tables.fingerprint != _tables(settings).fingerprint  # another input: another version
    monkeypatch.setenv("LLMCF_HOME", str(settings.home))
    argv = ["--dataset", "synth", "--models", "DIN", "--variants", "base", "--seeds", "1", "--workers", "0"]
    argv += [
        "--max-epochs",
        "1",
        "--embedder",
        "synth-enc",
        "--out",
        str(tmp_path),
        "--set",
        "rec.user_features=false",
    ]
    assert experiment.main(argv) == 0
    run = json.loads((tmp_path / "synth.json").read_text())["runs"][0]
    assert "user_features" not in run["data"]
    assert experiment.main([*argv[:-1], "rec.no_such_field=1"]) == 2
