"""The ``cot`` data check (GX) and each of its failure modes."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from llmcf_core.cot.blocks import to_table
from llmcf_core.cot.check import check_cot

DAY = dt.date(1998, 1, 15)
POOL = {"1-10-100": 1, "2-20-200": 0, "3-30-300": 1, "4-40-400": 0}
FORBIDDEN = ["Write your reasoning as four numbered points", "<|im_start|>"]


def _good() -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "sample_id": list(POOL),
            "label": list(POOL.values()),
            "cot_text": [
                f"1. The user likes dramas. 2. Item {i} is a drama. 3. Good match." for i in range(4)
            ],
            "model_version": "recgen-7",
            "prompt_version": "v1-lc",
            "n_tokens": [20, 30, 40, 50],
            "finish_reason": ["stop", "stop", "length", "stop"],
            "score": [0.5, 0.7, 0.2, 0.9],
            "error": None,
        }
    )
    return to_table(rows).to_pandas()  # the dtypes the pipeline checks


def _check(df: pd.DataFrame, max_failure_rate: float = 0.25, max_failed_rows: int = 0):
    return check_cot(
        df,
        dataset="ml-100k",
        partition=DAY,
        pool_labels=POOL,
        model_version="recgen-7",
        prompt_version="v1-lc",
        max_new_tokens=64,
        min_chars=10,
        max_failure_rate=max_failure_rate,
        max_failed_rows=max_failed_rows,
        forbidden=FORBIDDEN,
    )


def _fail(df: pd.DataFrame, i: int, error: str = "RuntimeError: boom") -> pd.DataFrame:
    df.loc[i, ["cot_text", "error", "finish_reason", "n_tokens", "score"]] = [None, error, "error", 0, None]
    return df


def test_clean_table_passes():
    report = _check(_good())
    assert report.success, report.summary()
    assert _check(_fail(_good(), 1)).success  # one failed row of four: 25% <= 25%


def _failed_rules(report) -> list[str]:
    assert not report.success
    return [f.rule for f in report.failures]


def test_missing_and_duplicated_and_foreign_rows():
    missing = _failed_rules(_check(_good().iloc[:3]))
    assert missing == ["expect_table_row_count_to_equal(pool size 4)"]
    dup = _good()
    dup.loc[3, "sample_id"] = "1-10-100"
    assert "expect_column_values_to_be_unique(sample_id)" in _failed_rules(_check(dup))
    foreign = _good()
    foreign.loc[2, "sample_id"] = "9-9-9"
    assert _failed_rules(_check(foreign)) == ["expect_sample_id_in_pool(sample_id)"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("   ", "empty"),
        ("too short", "short"),
        ("Sure! Write your reasoning as four numbered points: 1. ...", "echoed instruction"),
        ("1. The user <|im_start|>assistant likes it", "template token"),
    ],
)
def test_unusable_text_fails(text, reason):
    df = _good()
    df.loc[0, "cot_text"] = text
    report = _check(df)
    assert _failed_rules(report) == [
        "expect_cot_text_to_be_usable(non-blank, >= 10 chars, no echoed prompt or template token)"
    ], reason
    assert report.failures[0].examples == ["1-10-100"]


def test_lengths_versions_labels_and_statuses():
    long = _good()
    long.loc[1, "n_tokens"] = 65
    assert _failed_rules(_check(long)) == ["expect_n_tokens_to_be_between(1, 64)"]
    version = _good()
    version.loc[2, "model_version"] = "recgen-6"
    assert _failed_rules(_check(version)) == ["expect_column_values_to_be_in_set(model_version, [recgen-7])"]
    label = _good()
    label.loc[0, "label"] = 0
    assert _failed_rules(_check(label)) == ["expect_label_to_match_sample(label)"]
    status = _good()
    status.loc[0, "finish_reason"] = "error"
    assert _failed_rules(_check(status)) == ["expect_finish_reason_to_match_status(stop/length, error)"]
    half = _fail(_good(), 0)
    half.loc[0, "cot_text"] = "a failed row that still has text"
    assert _failed_rules(_check(half)) == ["expect_failed_rows_to_have_error_and_no_text"]
    score = _good()
    score.loc[3, "score"] = 1.5
    assert _failed_rules(_check(score)) == ["expect_column_values_to_be_between(score, 0, 1)"]


def test_failure_rate_above_threshold_fails():
    df = _fail(_fail(_good(), 0), 1)
    report = _check(df, max_failure_rate=0.25)
    assert _failed_rules(report) == ["expect_failure_rate_to_be_at_most(0.25)"]
    assert "0.5" in report.failures[0].detail
    assert _check(df, max_failure_rate=0.5).success


def test_a_floor_of_failed_rows_lets_small_partitions_pass():
    """A 1% pool has ~10 prompts a day: one failed CoT must not stop a replay at a 5% rate."""
    one, two = _fail(_good(), 0), _fail(_fail(_good(), 0), 1)
    assert not _check(one, max_failure_rate=0.05).success  # 25% > 5%, no floor
    assert _check(one, max_failure_rate=0.05, max_failed_rows=1).success
    report = _check(two, max_failure_rate=0.05, max_failed_rows=1)
    assert _failed_rules(report) == ["expect_failure_rate_to_be_at_most(0.05, or 1 failed rows)"]


def test_empty_pool_publishes_an_empty_table():
    empty = _good().iloc[:0]
    report = check_cot(
        empty,
        dataset="ml-100k",
        partition=DAY,
        pool_labels={},
        model_version="recgen-7",
        prompt_version="v1-lc",
        max_new_tokens=64,
        min_chars=10,
        max_failure_rate=0.0,
        forbidden=[],
    )
    assert report.success, report.summary()
