"""RecGen evaluation metrics on hand-built cases, the publish gate and the registry's atomic `latest`,
and the pure parts of the fine-tuning driver (DeepSpeed config, deterministic batches, loss masks)."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from llmcf_core.llm import registry
from llmcf_core.llm.evaluate import auc, balance_table, gate, log_loss


def test_auc_on_a_hand_built_case():
    # positives 0.9, 0.8, 0.3 vs negatives 0.1, 0.4: 5 of 6 pairs ordered correctly
    assert auc([1, 0, 1, 0, 1], [0.9, 0.1, 0.8, 0.4, 0.3]) == pytest.approx(5 / 6)
    assert auc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert auc([1, 1, 0, 0], [0.2, 0.2, 0.2, 0.1]) == pytest.approx(0.75)  # (0.5 + 1) * 2 / 4
    assert auc([1, 1, 0, 0], [0.1, 0.3, 0.3, 0.9]) == pytest.approx(0.125)  # (0 + 0.5) / 4
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_log_loss_on_a_hand_built_case():
    assert log_loss([1, 0], [0.8, 0.2]) == pytest.approx(-math.log(0.8))
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, finite


BASE = {"rec_auc": 0.60, "general_ppl": 10.0}


@pytest.mark.parametrize(
    ("candidate", "passed", "why"),
    [
        ({"rec_auc": 0.70, "general_ppl": 11.0}, True, None),
        ({"rec_auc": 0.55, "general_ppl": 9.0}, False, "rec AUC"),  # worse at recommendation
        ({"rec_auc": 0.60, "general_ppl": 9.0}, False, "rec AUC"),  # not better
        ({"rec_auc": 0.70, "general_ppl": 16.0}, False, "general perplexity"),  # forgot too much
        ({"rec_auc": float("nan"), "general_ppl": 9.0}, False, "rec AUC"),
    ],
)
def test_gate(candidate, passed, why):
    decision = gate(candidate, BASE, min_auc_gain=0.0, max_ppl_factor=1.5)
    assert decision["passed"] is passed
    if why:
        assert any(why in r for r in decision["reasons"])


def _model(folder, gate_passed=None, name="m"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "metadata.json").write_text(json.dumps({"version": name}))
    if gate_passed is not None:
        registry.write_json_atomic(folder / "eval" / "gate.json", {"passed": gate_passed, "reasons": ["r"]})
    return folder


def test_publish_refuses_a_worse_model_and_keeps_latest(tmp_path):
    home = tmp_path
    _model(registry.candidate_dir(home, "v1"), gate_passed=True, name="v1")
    assert registry.publish(home, "v1")["changed"] is True
    assert registry.latest_version(home) == "v1"
    assert not registry.candidate_dir(home, "v1").exists()
    assert registry.resolve(home) == registry.version_dir(home, "v1")

    _model(registry.candidate_dir(home, "v2"), gate_passed=False, name="v2")
    with pytest.raises(registry.GateRefused, match="failed the gate"):
        registry.publish(home, "v2")
    _model(registry.candidate_dir(home, "v3"), name="v3")  # never evaluated
    with pytest.raises(registry.GateRefused, match="has not been evaluated"):
        registry.publish(home, "v3")
    assert registry.latest_version(home) == "v1"
    assert not registry.version_dir(home, "v2").exists()
    assert sorted(p.name for p in registry.root(home).iterdir()) == ["_candidates", "latest", "v1"]

    _model(registry.candidate_dir(home, "v4"), gate_passed=True, name="v4")
    out = registry.publish(home, "v4")
    assert out["previous"] == "v1" and registry.latest_version(home) == "v4"
    assert registry.publish(home, "v4")["changed"] is False  # a retry is a no-op
    pointer = json.loads(registry.latest_pointer(home).read_text())
    assert pointer["version"] == "v4" and pointer["previous"] == "v1"


def test_publish_job_exits_3_on_a_refused_gate(llmcf_home, capsys):
    from jobs import publish_recgen

    _model(registry.candidate_dir(llmcf_home, "bad"), gate_passed=False)
    assert publish_recgen.main(["--version", "bad"]) == 3
    assert "failed the gate" in capsys.readouterr().err
    assert publish_recgen.main(["--version", "../x"]) == 2
    assert registry.latest_version(llmcf_home) is None


def test_versions_are_checked_and_derived_deterministically():
    with pytest.raises(registry.InvalidArgument):
        registry.check_version("latest")
    with pytest.raises(registry.InvalidArgument):
        registry.check_version("_candidates")
    a = registry.run_version(
        "ml-100k", "1998-03-07", "concat", "/models/Llama-2-7b-chat-hf", 0, 8, 2, {"x": 1}
    )
    assert a == registry.run_version(
        "ml-100k", "1998-03-07", "concat", "/models/Llama-2-7b-chat-hf", 0, 8, 2, {"x": 1}
    )
    assert a.startswith("ml-100k-1998-03-07-concat-Llama-2-7b-chat-hf-s0-w8-z2-")
    assert a != registry.run_version(
        "ml-100k", "1998-03-07", "concat", "/models/Llama-2-7b-chat-hf", 0, 8, 2, {"x": 2}
    )


def test_balance_table_has_one_row_per_model():
    m = {"rec_auc": 0.61234, "rec_logloss": 0.69, "general_ppl": 12.3456, "rec_n": 10, "general_n": 5}
    table = balance_table({"base (smollm2-135m)": m, "RecGen (v1)": m})
    assert table.splitlines()[2] == "| base (smollm2-135m) | 0.6123 | 0.6900 | 12.35 | 10 | 5 |"
    assert len(table.strip().splitlines()) == 4


def _spec(settings, stage, **kw):
    from llmcf_core.llm.sft import FinetuneSpec

    return FinetuneSpec.from_settings(
        settings,
        dataset="ml-100k",
        window_end=dt.date(1998, 1, 16),
        instructions_dir=settings.home / "x",
        zero_stage=stage,
        **kw,
    )


def test_deepspeed_configs_are_filled_from_the_run(settings):
    from llmcf_core.llm.sft import deepspeed_config, total_steps

    spec = _spec(settings, 3, num_workers=2, micro_batch_size=3, grad_accum=2)
    cfg = deepspeed_config(spec, hidden_size=64)
    zero = cfg["zero_optimization"]
    assert cfg["train_batch_size"] == 12 and cfg["gradient_accumulation_steps"] == 2
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 64 * 64
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "auto" not in json.dumps(cfg)
    assert deepspeed_config(_spec(settings, 2), 64)["zero_optimization"]["stage"] == 2
    assert (
        total_steps(_spec(settings, 2, max_steps=0, epochs=1.0, micro_batch_size=2, grad_accum=2), 100) == 13
    )
    assert spec.version == _spec(settings, 3, num_workers=2, micro_batch_size=3, grad_accum=2).version
    with pytest.raises(registry.InvalidArgument):
        _spec(settings, 1)


def test_cluster_profile_names_the_paper_setting():
    from llmcf_core.config import load_config

    rc = load_config("cluster").recgen
    assert rc.base_model.endswith("Llama-2-7b-chat-hf") and rc.num_workers == 8 and rc.use_gpu
    assert (rc.zero_stage, rc.bf16, rc.lr, rc.max_length, rc.micro_batch_size * rc.num_workers) == (
        2,
        True,
        1e-5,
        1024,
        128,
    )


def test_batches_cover_each_example_once_per_epoch_and_are_deterministic():
    from llmcf_core.config import RecgenConfig
    from llmcf_core.llm.sft_worker import rows_for

    cfg = RecgenConfig(micro_batch_size=2, grad_accum=3, num_workers=2, seed=7)
    n = 24  # one epoch = 2 steps of 12
    seen = [
        i
        for step in range(2)
        for micro in range(3)
        for rank in range(2)
        for i in rows_for(step, micro, rank, cfg, n, {})
    ]
    assert sorted(seen) == list(range(n))
    assert rows_for(5, 1, 1, cfg, n, {}) == rows_for(5, 1, 1, cfg, n, {})
    second_epoch = [
        i
        for step in (2, 3)
        for micro in range(3)
        for rank in range(2)
        for i in rows_for(step, micro, rank, cfg, n, {})
    ]
    assert sorted(second_epoch) == list(range(n)) and second_epoch != seen


def test_collate_masks_prompt_and_padding():
    from llmcf_core.llm.sft_worker import IGNORE_INDEX, collate

    batch = collate([([5, 6, 7, 8], 2), ([9, 10], 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 7, 8],
        [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_checkpoint_scan_takes_the_newest_complete_one(tmp_path):
    from llmcf_core.llm.sft_worker import STATE_FILE, latest_complete_checkpoint

    def ckpt(name, step, ranks):
        d = tmp_path / name
        d.mkdir()
        (d / "latest").write_text("ds")
        (d / STATE_FILE).write_text(json.dumps({"step": step}))
        for r in ranks:
            (d / f"rank-{r}.done").write_text(str(step))

    ckpt("checkpoint_a", 4, [0, 1])
    ckpt("checkpoint_b", 8, [0])  # rank 1's shards never arrived
    assert latest_complete_checkpoint(tmp_path, 2) == (4, tmp_path / "checkpoint_a")
    ckpt("checkpoint_c", 6, [0, 1])
    assert latest_complete_checkpoint(tmp_path, 2)[0] == 6
    assert latest_complete_checkpoint(tmp_path / "none", 2) is None
