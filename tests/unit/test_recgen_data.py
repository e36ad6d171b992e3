"""RecGen instruction data: wording, chat encoding with response-only loss, ShareGPT reading, the GX
check, and the build job end to end on ingested ML-100K days (tiny-llama tokenizer)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from llmcf_core.layout import day_bounds
from llmcf_core.llm import instructions, prompts, sharegpt

TRAIN_DAYS = ("1998-01-14", "1998-01-15")
VALID_DAY = "1998-03-10"  # ml-100k valid_start is 1998-03-08


@pytest.fixture(scope="module")
def tok():
    from llmcf_core.llm.models import load_tokenizer_from_gguf

    return load_tokenizer_from_gguf()


def test_rec_prompt_uses_the_method_wording():
    text = prompts.rec_prompt(["title: A; year: 1990; genres: Drama", "title: B"], "title: C")
    assert text.startswith(prompts.REC_INSTRUCTION)
    assert "1. title: A; year: 1990; genres: Drama\n2. title: B" in text
    assert text.endswith("Target new item: title: C")
    assert prompts.rec_response(1) == "Yes" and prompts.rec_response(0) == "No"


def test_encode_chat_puts_the_loss_on_the_response_only(tok):
    enc = prompts.encode_chat(tok, "Is this a question?", "Yes")
    head = prompts.encode_prompt(tok, "Is this a question?")
    assert enc.input_ids[: enc.response_start] == head
    assert tok.decode(enc.input_ids[enc.response_start :]).startswith("Yes")
    assert "<|im_start|>user" in tok.decode(enc.input_ids[: enc.response_start])


def test_fit_rec_example_drops_the_oldest_history_items(tok):
    history = [f"title: Movie number {i}; year: 1990; genres: Drama" for i in range(30)]
    full = prompts.encode_chat(tok, prompts.rec_prompt(history, "title: T"), "No").n_tokens
    prompt, enc = prompts.fit_rec_example(tok, history, "title: T", "No", max_length=full - 40)
    assert enc.n_tokens <= full - 40
    assert "Movie number 29" in prompt and "Movie number 0;" not in prompt
    assert prompts.fit_rec_example(tok, [], "x " * 500, "No", max_length=64) is None


def _conv(cid, *turns):
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def test_sharegpt_reader_recovers_a_truncated_array_and_filters(tmp_path):
    objs = [
        _conv("a", ("human", "Hi?"), ("gpt", "Hello.")),
        _conv("b", ("human", "Two"), ("gpt", "turns"), ("human", "more"), ("gpt", "no")),
        _conv("c", ("human", "Привет, как дела?"), ("gpt", "Хорошо, спасибо")),
        _conv("d", ("gpt", "starts wrong"), ("human", "x")),
        _conv("e", ("human", "Fine?"), ("gpt", "Fine.")),
    ]
    text = "[\n" + ",\n".join(json.dumps(o) for o in objs) + ',\n{"id": "f", "conversations": [{"fr'
    path = tmp_path / "truncated.json"
    path.write_text(text)
    assert [o["id"] for o in sharegpt.iter_objects(path)] == ["a", "b", "c", "d", "e"]
    train = list(sharegpt.iter_conversations(heldout=False, heldout_every=10**9, min_ascii=0.98, path=path))
    held = list(sharegpt.iter_conversations(heldout=True, heldout_every=10**9, min_ascii=0.98, path=path))
    assert {c.conv_id for c in train} | {c.conv_id for c in held} == {"a", "e"}
    # the held-out split is a stable function of the id
    assert sharegpt.is_heldout("a", 2) == sharegpt.is_heldout("a", 2)
    assert sum(sharegpt.is_heldout(str(i), 20) for i in range(2000)) in range(60, 140)


def _row(i, source="rec", **kw):
    valid_ts = day_bounds(dt.date(1998, 3, 8))[0]
    base = {
        "instruction_id": f"{source}:{i}",
        "source": source,
        "sample_id": f"{i}-1-1" if source == "rec" else None,
        "label": (i % 2) if source == "rec" else None,
        "timestamp": valid_ts - 1000 if source == "rec" else None,
        "sample_split": "train" if source == "rec" else None,
        "prompt": "p",
        "response": ("Yes" if i % 2 else "No") if source == "rec" else "an answer",
        "input_ids": [1, 2, 3, 4],
        "response_start": 3,
        "n_tokens": 4,
    }
    base.update(kw)
    return base


def _check(rows, max_length=8):
    df = instructions.to_arrow(rows).to_pandas()
    return instructions.check_instructions(
        df, dataset="ml-100k", partition="1998-01-15", max_length=max_length, valid_start=dt.date(1998, 3, 8)
    )


def test_check_passes_clean_rows_and_names_each_broken_rule():
    clean = [_row(i) for i in range(4)] + [_row(9, "general")]
    assert _check(clean).success
    valid_ts = day_bounds(dt.date(1998, 3, 8))[0]
    broken = clean + [
        _row(10, input_ids=list(range(12)), n_tokens=12),  # too long
        _row(11, response="Yes", label=0),  # answer does not match label
        _row(12, timestamp=valid_ts + 5),  # from the validation period
        _row(13, sample_split="valid"),
        _row(14, response_start=4),  # no response tokens
        _row(1),  # duplicate id
    ]
    report = _check(broken)
    failed = {f.rule: f for f in report.failures}
    assert set(failed) == {
        "expect_column_values_to_be_between(n_tokens, 1, 8)",
        "expect_rec_answer_yes_no_matching_label",
        "expect_rec_rows_before_valid_start(1998-03-08)",
        "expect_rec_rows_from_train_split",
        "expect_response_tokens_present",
        "expect_column_values_to_be_unique(instruction_id)",
    }
    assert failed["expect_rec_rows_from_train_split"].examples == ["rec:13"]
    assert _check([]).failures[0].rule.startswith("expect_table_row_count")
    assert [f.rule for f in _check([_row(9, "general")]).failures] == ["expect_rec_rows_present"]


def test_check_reports_one_sided_labels():
    rows = [_row(2 * i) for i in range(25)]  # all "No"
    report = _check(rows)
    assert [f.rule for f in report.failures] == ["expect_rec_label_mean_between(0.01, 0.99)"]
    assert instructions.label_balance(instructions.to_arrow(rows).to_pandas())["rec_positive_share"] == 0.0


def _ingest(*days):
    from jobs import ingest

    for day in days:
        assert ingest.main(["--dataset", "ml-100k", "--partition", day]) == 0


def _result(capsys) -> dict:
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("LLMCF_RESULT ")][-1]
    return json.loads(line.removeprefix("LLMCF_RESULT "))


@pytest.mark.slow
def test_build_job_publishes_checked_versioned_train_only_data(llmcf_home, capsys):
    from jobs import build_instructions
    from llmcf_core import storage

    _ingest(*TRAIN_DAYS, VALID_DAY)
    capsys.readouterr()
    args = [
        "--dataset",
        "ml-100k",
        "--partition",
        VALID_DAY,
        "--base-model",
        "tiny-llama",
        "--max-length",
        "256",
        "--rec-max",
        "40",
        "--general-max",
        "8",
    ]
    assert build_instructions.main(args) == 0
    result = _result(capsys)
    folder = llmcf_home / "ml-100k" / "recgen_instructions" / f"dt={VALID_DAY}" / result["version"]
    assert result["path"] == str(folder) and result["version"].startswith("concat-L256-")
    manifest = storage.read_manifest(folder)
    assert manifest["checks"]["success"] and manifest["window"] == [TRAIN_DAYS[0], VALID_DAY]
    df = storage.read_partition(folder).to_pandas()
    rec = df[df.source == "rec"]
    assert len(rec) == 40 and (df.source == "general").sum() == 8
    # the valid day is in the window but contributes nothing: train split only
    assert set(rec.sample_split) == {"train"}
    assert rec.timestamp.max() < day_bounds(dt.date(1998, 3, 8))[0]
    assert (df.n_tokens <= 256).all() and (df.response_start < df.n_tokens).all()
    assert manifest["label_balance"]["rec_positive"] == int(rec.label.sum())
    assert set(rec.response) <= {"Yes", "No"}
    # rerun: same bytes, nothing changes
    assert build_instructions.main(args) == 0
    assert _result(capsys)["changed"] is False

    assert build_instructions.main([*args, "--mix", "rec-only"]) == 0
    rec_only = _result(capsys)
    assert rec_only["counts"]["general"] == 0 and rec_only["version"].startswith("rec-only-")
    assert build_instructions.main([*args, "--mix", "half-rec", "--rec-max", "0"]) == 0
    half = _result(capsys)["counts"]["rec"]
    n_train = sum(
        int(
            (
                storage.read_partition(llmcf_home / "ml-100k" / "samples" / f"dt={d}").to_pandas().split
                == "train"
            ).sum()
        )
        for d in TRAIN_DAYS
    )
    assert 0.4 * n_train < half < 0.6 * n_train


def test_build_job_refuses_bad_arguments(llmcf_home, capsys):
    from jobs import build_instructions

    base = ["--dataset", "ml-100k", "--partition", "1998-01-15", "--base-model", "tiny-llama"]
    assert build_instructions.main(base) == 2  # nothing ingested
    assert "no published samples partitions" in capsys.readouterr().err
    assert build_instructions.main([*base[:-1], "no-such-model"]) == 2
    assert build_instructions.main([*base, "--max-length", "8"]) == 2


def test_finetune_and_evaluate_jobs_refuse_missing_inputs(llmcf_home, capsys):
    from jobs import evaluate_recgen, finetune_recgen

    base = ["--dataset", "ml-100k", "--partition", "1998-01-15", "--base-model", "tiny-llama"]
    assert finetune_recgen.main(base) == 2  # no instruction data with these flags
    assert "run jobs.build_instructions with the same arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse refuses stages other than 2 and 3
        finetune_recgen.main([*base, "--zero-stage", "1"])
    assert exc.value.code == 2
    ev = ["--dataset", "ml-100k", "--partition", "1998-01-15"]
    assert evaluate_recgen.main([*ev, "--version", "nope"]) == 2
    assert "no candidate model 'nope'" in capsys.readouterr().err
    assert evaluate_recgen.main([*ev, "--version", "latest"]) == 2


def test_mixed_order_and_schema_are_stable():
    rows = [_row(i) for i in range(3)]
    table = instructions.to_arrow(rows)
    assert table.column_names == list(instructions.COLUMNS)
    assert str(table.schema.field("input_ids").type) == "list<item: int32>"
    assert np.array_equal(pd.Series([r["n_tokens"] for r in rows]).to_numpy(), [4, 4, 4])
