"""Data-check suites (GX Core 1.x): every failure mode names its rule, counts and locates rows."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from llmcf_core.quality import (
    CheckReport,
    DataCheckFailed,
    Failure,
    check_interactions,
    check_items,
    check_samples,
    check_users,
    failing_rows,
)
from llmcf_core.quality.gx_runner import load_gx

DAY = dt.date(1998, 1, 15)
START = calendar.timegm(DAY.timetuple())
END = START + 86_400
KNOWN = set(range(1, 60))
HISTORY_LEN = 4


@pytest.fixture(scope="session", autouse=True)
def _gx_loaded() -> None:
    """Pay GX's multi-second import once per session, not inside the first test's timing."""
    load_gx()


def make_samples(n_users: int = 3, per_user: int = 4) -> pd.DataFrame:
    """A clean samples partition, built the way the pipeline defines samples."""
    rows = []
    for u in range(1, n_users + 1):
        earlier = [(START - 86_400 * (6 - k), 10 * u + k) for k in range(6)]
        today = [(START + 3_600 * k + u, 40 + u + k) for k in range(per_user)]
        events = sorted(earlier + today)
        for j, (ts, item) in enumerate(events):
            if ts < START:
                continue
            hist = events[max(0, j - HISTORY_LEN) : j]
            rating = float([5, 3, 4, 1, 2][j % 5])
            as_list = j % 2 == 0  # cells come as numpy arrays (pyarrow) or lists (hand-built)
            h_items = [h[1] for h in hist]
            h_ts = [h[0] for h in hist]
            h_lab = [1] * len(hist)
            rows.append(
                {
                    "sample_id": f"{u}-{item}-{ts}",
                    "user_id": u,
                    "item_id": item,
                    "timestamp": ts,
                    "rating": rating,
                    "label": int(rating >= 4),
                    "history_item_ids": h_items if as_list else np.array(h_items, dtype=np.int64),
                    "history_timestamps": h_ts if as_list else np.array(h_ts, dtype=np.int64),
                    "history_labels": h_lab if as_list else np.array(h_lab, dtype=np.int8),
                    "split": "train",
                    "dt": DAY.isoformat(),
                }
            )
    return pd.DataFrame(rows).astype({"label": "int8"})


def samples_check(df: pd.DataFrame, **kw: object) -> CheckReport:
    args = {"dataset": "ml-100k", "partition": DAY, "known_item_ids": KNOWN, "history_len": HISTORY_LEN}
    args["min_rows"] = 1
    args.update(kw)
    return check_samples(df, **args)


def only(report: CheckReport, prefix: str) -> Failure:
    """The report's single failure, which must start with ``prefix``."""
    assert [f.rule for f in report.failures if f.rule.startswith(prefix)], report.summary()
    assert len(report.failures) == 1, report.summary()
    return report.failures[0]


def rekey(df: pd.DataFrame, pos: int) -> None:
    """Recompute sample_id of one row after editing its key columns (positional)."""
    r = df.iloc[pos]
    df.iloc[pos, df.columns.get_loc("sample_id")] = f"{r.user_id}-{r.item_id}-{r.timestamp}"


# --------------------------------------------------------------------------------------------
# samples suite
# --------------------------------------------------------------------------------------------


def test_clean_samples_pass() -> None:
    df = make_samples()
    report = samples_check(df)
    assert report.success, report.summary()
    assert report.rows == len(df) == 12
    assert report.evaluated > 30
    assert report.summary().startswith("samples check passed for ml-100k dt=1998-01-15")
    assert failing_rows(df, report).empty


def test_samples_from_arrow_pass_and_known_ids_as_array() -> None:
    df = make_samples()
    lists = ("history_item_ids", "history_timestamps", "history_labels")
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("history_labels"),
        "history_labels",
        pa.array([list(map(int, v)) for v in df["history_labels"]], pa.list_(pa.int8())),
    )
    back = table.to_pandas()
    assert all(isinstance(v, np.ndarray) for c in lists for v in back[c])
    assert samples_check(back, known_item_ids=np.array(sorted(KNOWN))).success


def test_null_key_reports_row() -> None:
    df = make_samples()
    df["user_id"] = pd.array(df["user_id"], dtype="Int64")  # nullable: keeps the dtype rule green
    df.loc[5, "user_id"] = pd.NA
    f = only(samples_check(df), "expect_column_values_to_not_be_null(user_id)")
    assert (f.unexpected_count, f.row_positions) == (1, [5])
    assert f.examples == [df.loc[5, "sample_id"]]


def test_null_sample_id_and_float_ids() -> None:
    df = make_samples()
    df["sample_id"] = df["sample_id"].astype(object)
    df.loc[2, "sample_id"] = None
    df["item_id"] = df["item_id"].astype("float64")
    df.loc[7, "item_id"] = np.nan
    report = samples_check(df)
    rules = {f.rule: f for f in report.failures}
    assert rules["expect_column_values_to_not_be_null(sample_id)"].row_positions == [2]
    assert rules["expect_column_values_to_not_be_null(item_id)"].row_positions == [7]
    dtype_rule = rules["expect_column_values_to_be_of_type(item_id, int64)"]
    assert (dtype_rule.unexpected_count, dtype_rule.row_positions, dtype_rule.detail) == (
        1,
        [],
        "dtype float64",
    )


def test_duplicate_sample_id() -> None:
    df = make_samples()
    df.iloc[3] = df.iloc[1]
    f = only(samples_check(df), "expect_column_values_to_be_unique(sample_id)")
    assert (f.unexpected_count, f.row_positions) == (2, [1, 3])
    assert f.examples == [df.loc[1, "sample_id"]] * 2


@pytest.mark.parametrize("ts", [START - 1, END])
def test_timestamp_outside_day(ts: int) -> None:
    df = make_samples()
    df.loc[4, "timestamp"] = ts
    rekey(df, 4)
    f = only(samples_check(df), "expect_column_values_to_be_between(timestamp")
    assert (f.unexpected_count, f.row_positions, f.examples) == (1, [4], [ts])
    assert f"min={START}, max={END}" in f.rule


def test_unknown_target_item() -> None:
    df = make_samples()
    df.loc[6, "item_id"] = 999
    rekey(df, 6)
    f = only(samples_check(df), "expect_column_values_to_be_in_set(item_id, known_item_ids")
    assert (f.unexpected_count, f.row_positions, f.examples) == (1, [6], [999])


def test_unknown_history_item() -> None:
    df = make_samples()
    items = list(df.loc[8, "history_item_ids"])
    items[0] = 999
    df.at[8, "history_item_ids"] = np.array(items, dtype=np.int64)
    f = only(samples_check(df), "expect_history_items_to_be_in_set")
    assert (f.unexpected_count, f.row_positions) == (1, [8])
    assert f.examples == [df.loc[8, "sample_id"]]


def test_user_id_as_strings_fails_dtype_rule() -> None:
    df = make_samples()
    df["user_id"] = df["user_id"].astype(str)
    f = only(samples_check(df), "expect_column_values_to_be_of_type(user_id, int64)")
    assert (f.unexpected_count, f.row_positions) == (1, [])
    assert f.detail == "dtype str"


def test_rating_five_as_text() -> None:
    df = make_samples()
    df["rating"] = df["rating"].astype(object)
    df.loc[9, "rating"] = "five"
    report = samples_check(df)
    rules = {f.rule: f for f in report.failures}
    assert set(rules) == {
        "expect_column_values_to_be_of_type(rating, float64)",
        "expect_column_values_to_be_numeric(rating)",
    }, report.summary()
    numeric = rules["expect_column_values_to_be_numeric(rating)"]
    assert (numeric.unexpected_count, numeric.row_positions, numeric.examples) == (1, [9], ["five"])
    assert rules["expect_column_values_to_be_of_type(rating, float64)"].row_positions == []


def test_empty_partition_fails_min_rows() -> None:
    report = samples_check(make_samples().iloc[0:0])
    f = only(report, "expect_table_row_count_to_be_between(min=1)")
    assert (f.unexpected_count, f.row_positions) == (1, [])
    assert "expect_table_row_count_to_be_between(min=1): 0 rows" in report.summary()


def test_empty_partition_allowed_with_min_rows_zero() -> None:
    schema = pa.Table.from_pandas(make_samples(), preserve_index=False).schema
    empty = schema.empty_table().to_pandas()
    assert samples_check(empty, min_rows=0).success


def test_empty_frame_without_columns_does_not_crash() -> None:
    report = samples_check(pd.DataFrame())
    rules = [f.rule for f in report.failures]
    assert rules[0] == "expect_table_row_count_to_be_between(min=1)"
    assert "expect_column_to_exist(sample_id)" in rules and "expect_column_to_exist(dt)" in rules
    assert report.evaluated == len(rules) == 12


def test_missing_column_is_a_failure() -> None:
    df = make_samples().drop(columns=["history_labels"])
    f = only(samples_check(df), "expect_column_to_exist(history_labels)")
    assert f.detail == "column is missing"


def test_history_not_strictly_earlier() -> None:
    df = make_samples()
    pos = 10
    row = df.iloc[pos]
    # Last history entry equal to the sample itself: same (timestamp, item_id) is not earlier.
    items = [*list(row.history_item_ids)[1:], int(row.item_id)]
    stamps = [*list(row.history_timestamps)[1:], int(row.timestamp)]
    df.at[pos, "history_item_ids"] = items
    df.at[pos, "history_timestamps"] = stamps
    f = only(samples_check(df), "expect_history_to_be_strictly_before_sample")
    assert (f.unexpected_count, f.row_positions) == (1, [pos])


def test_history_not_oldest_first() -> None:
    df = make_samples()
    pos = 11
    df.at[pos, "history_item_ids"] = list(df.loc[pos, "history_item_ids"])[::-1]
    df.at[pos, "history_timestamps"] = list(df.loc[pos, "history_timestamps"])[::-1]
    f = only(samples_check(df), "expect_history_to_be_oldest_first")
    assert f.row_positions == [pos]


def test_history_lists_malformed_and_too_long() -> None:
    df = make_samples()
    df.at[3, "history_labels"] = [1]  # wrong length
    report = samples_check(df, history_len=3)
    rules = {f.rule: f for f in report.failures}
    assert rules[
        "expect_history_to_be_int_lists_of_equal_length(history_item_ids, history_timestamps, history_labels)"
    ].row_positions == [3]
    too_long = rules["expect_history_length_to_be_between(history_item_ids, max=3)"]
    expected = [i for i, v in enumerate(df["history_item_ids"]) if len(v) > 3]
    assert too_long.row_positions == expected and too_long.unexpected_count == len(expected)


def test_label_inconsistent_with_rating() -> None:
    df = make_samples()
    df.loc[0, "label"] = 1 - df.loc[0, "label"]
    f = only(samples_check(df), "expect_label_to_match_rating")
    assert (f.unexpected_count, f.row_positions, f.examples) == (1, [0], [df.loc[0, "sample_id"]])


def test_dt_mismatch() -> None:
    df = make_samples()
    df.loc[[2, 5], "dt"] = "1998-01-16"
    f = only(samples_check(df), "expect_column_values_to_be_in_set(dt, [1998-01-15])")
    assert (f.unexpected_count, f.row_positions, f.examples) == (2, [2, 5], ["1998-01-16"] * 2)


def test_bad_split() -> None:
    df = make_samples()
    df.loc[1, "split"] = "holdout"
    f = only(samples_check(df), "expect_column_values_to_be_in_set(split")
    assert f.row_positions == [1]


def test_row_positions_ignore_the_frame_index() -> None:
    df = make_samples()
    df.loc[0, "label"] = 1 - df.loc[0, "label"]
    df.loc[7, "dt"] = "1998-01-16"
    df.index = pd.Index([f"r{i}" for i in range(len(df))][::-1])  # labels unrelated to positions
    report = samples_check(df)
    assert sorted(p for f in report.failures for p in f.row_positions) == [0, 7]
    bad = failing_rows(df, report)
    assert list(bad.index) == [df.index[0], df.index[7]]
    assert list(bad["sample_id"]) == [df["sample_id"].iloc[0], df["sample_id"].iloc[7]]
    assert bad["_failed_rules"].iloc[0].startswith("expect_label_to_match_rating")
    assert bad["_failed_rules"].iloc[1] == "expect_column_values_to_be_in_set(dt, [1998-01-15])"


def test_failing_rows_joins_rules_per_row() -> None:
    df = make_samples()
    df.loc[4, "dt"] = "x"
    df.loc[4, "split"] = "y"
    report = samples_check(df)
    bad = failing_rows(df, report)
    assert list(bad.columns) == [*df.columns, "_failed_rules"]
    assert len(bad) == 1
    assert bad["_failed_rules"].iloc[0] == "; ".join(f.rule for f in report.failures)
    with pytest.raises(ValueError, match="rows"):
        failing_rows(df.iloc[:3], report)


def test_summary_report_and_exception() -> None:
    df = make_samples()
    df.loc[[1, 2], "dt"] = "1998-01-16"
    report = samples_check(df)
    text = report.summary()
    first, *rest = text.splitlines()
    assert first == "samples check FAILED for ml-100k dt=1998-01-15: 1 of 48 rules failed (12 rows)"
    assert rest == [
        "  - expect_column_values_to_be_in_set(dt, [1998-01-15]): 2 rows, e.g. ['1998-01-16', '1998-01-16']"
    ]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["success"] is False and d["failures"][0]["row_positions"] == [1, 2]
    assert d["partition"] == "1998-01-15" and d["rows"] == 12
    with pytest.raises(DataCheckFailed) as err:
        report.raise_if_failed()
    assert str(err.value) == text and err.value.report is report
    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == text and again.report == report


def test_thousand_rows_against_a_large_catalogue_validate() -> None:
    """A 1,000-row partition against ~10k known ids passes. Its speed is a benchmark, not a test
    (bench/ingest_refresh.py times whole ingest days, checks included): a wall-clock bound here
    failed under load."""
    df = make_samples(n_users=250, per_user=4)
    assert len(df) == 1000
    known = range(1, 10_001)  # any iterable of ints; ~10k ids like ml-1m's catalogue
    report = samples_check(df, known_item_ids=known)
    assert report.success, report.summary()
    assert report.rows == 1000


# --------------------------------------------------------------------------------------------
# interactions suite (raw, user-supplied, messy dtypes)
# --------------------------------------------------------------------------------------------


def inter_check(df: pd.DataFrame) -> CheckReport:
    return check_interactions(df, dataset="custom", partition=DAY, known_item_ids=np.arange(1, 60))


def test_clean_interactions_pass_with_string_and_float_dtypes() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["1", "2", "3"],  # numbers as text (CSV)
            "item_id": [1.0, 2.0, 3.0],  # whole floats
            "rating": ["4", 3.5, 5],
            "timestamp": pd.Series([START, START + 5, END - 1], dtype=object),
        }
    )
    report = inter_check(df)
    assert report.success, report.summary()
    assert report.summary().startswith("interactions check passed for custom dt=1998-01-15")


def test_messy_interactions() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["1", "abc", None, "4", "1", True],
            "item_id": [1.0, 2.5, 3, 99, 1.0, 2],
            "rating": ["4", "five", 3, 9, 4, 2],
            "timestamp": [START, START + 1, START + 2, END, START, START + 3],
        },
        index=[50, 40, 30, 20, 10, 0],
    )
    report = inter_check(df)
    got = {f.rule: (f.unexpected_count, f.row_positions) for f in report.failures}
    assert got == {
        "expect_column_values_to_not_be_null(user_id)": (1, [2]),
        "expect_column_values_to_be_integers(user_id)": (2, [1, 5]),
        "expect_column_values_to_be_integers(item_id)": (1, [1]),
        "expect_column_values_to_be_numeric(rating)": (1, [1]),
        "expect_column_values_to_be_between(rating, min=1, max=5)": (1, [3]),
        "expect_column_values_to_be_in_set(item_id, known_item_ids[59])": (1, [3]),
        "expect_no_duplicate_rows(user_id, item_id, timestamp)": (2, [0, 4]),
        f"expect_column_values_to_be_between(timestamp, min={START}, max={END}, strict_max)": (1, [3]),
    }, report.summary()
    by_rule = {f.rule: f for f in report.failures}
    assert by_rule["expect_column_values_to_be_integers(user_id)"].examples == ["abc", True]
    assert by_rule["expect_column_values_to_be_numeric(rating)"].examples == ["five"]
    dup = by_rule["expect_no_duplicate_rows(user_id, item_id, timestamp)"]
    assert dup.examples[0] == {"user_id": "1", "item_id": 1.0, "timestamp": START}
    assert by_rule["expect_column_values_to_not_be_null(user_id)"].examples == [
        {"user_id": None, "item_id": 3.0, "rating": 3, "timestamp": START + 2}
    ]
    bad = failing_rows(df, report)
    assert list(bad.index) == [50, 40, 30, 20, 10, 0]
    assert "expect_column_values_to_be_numeric(rating)" in bad.loc[40, "_failed_rules"]
    json.dumps(report.to_dict())


def test_interactions_null_timestamp_and_text_timestamp() -> None:
    df = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "item_id": [1, 2, 3],
            "rating": [4, 4, 4],
            "timestamp": [str(START), None, "soon"],
        }
    )
    got = {f.rule: f.row_positions for f in inter_check(df).failures}
    assert got == {
        "expect_column_values_to_not_be_null(timestamp)": [1],
        "expect_column_values_to_be_integers(timestamp)": [2],
    }


def test_interactions_missing_column() -> None:
    df = pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [START]})
    f = only(inter_check(df), "expect_column_to_exist(rating)")
    assert f.detail == "column is missing"


def test_interactions_empty() -> None:
    assert inter_check(pd.DataFrame(columns=["user_id", "item_id", "rating", "timestamp"])).success
    report = inter_check(pd.DataFrame())
    assert [f.rule for f in report.failures] == [
        f"expect_column_to_exist({c})" for c in ("user_id", "item_id", "rating", "timestamp")
    ]


# --------------------------------------------------------------------------------------------
# items suite
# --------------------------------------------------------------------------------------------


def make_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": np.array([1, 2, 3], dtype=np.int64),
            "title": ["Toy Story", "GoldenEye", "Four Rooms"],
            "year": pd.array([1995, None, 1995], dtype="Int64"),
            "genres": [["Animation", "Comedy"], np.array(["Action"], dtype=object), []],
            "text": ["title: Toy Story", "title: GoldenEye", "title: Four Rooms"],
        }
    )


def test_items_clean_pass() -> None:
    report = check_items(make_items(), dataset="ml-100k")
    assert report.success, report.summary()
    assert report.summary().startswith("items check passed for ml-100k:")


def test_items_failures() -> None:
    df = make_items()
    df.loc[2, "item_id"] = 1
    df.loc[1, "title"] = "  "
    df.at[0, "genres"] = "Comedy"
    report = check_items(df, dataset="ml-100k")
    got = {f.rule: f.row_positions for f in report.failures}
    assert got == {
        "expect_column_values_to_be_unique(item_id)": [0, 2],
        "expect_column_values_to_not_be_blank(title)": [1],
        "expect_column_values_to_be_lists_of_str(genres)": [0],
    }, report.summary()
    assert report.summary().startswith("items check FAILED for ml-100k: 3 of")


def test_items_float_year_and_empty_table() -> None:
    df = make_items()
    df["year"] = [1995.0, np.nan, 1995.5]
    got = {f.rule: f for f in check_items(df, dataset="d").failures}
    assert got["expect_column_values_to_be_of_type(year, int64)"].detail == "dtype float64"
    assert got["expect_column_values_to_be_integers(year)"].row_positions == [2]
    empty = check_items(make_items().iloc[0:0], dataset="d")
    assert [f.rule for f in empty.failures] == ["expect_table_row_count_to_be_between(min=1)"]


# --------------------------------------------------------------------------------------------
# users suite (and the known-user rules of the samples/interactions suites)
# --------------------------------------------------------------------------------------------


def make_users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.array([1, 2, 3, 4], dtype=np.int64),
            "age_group": ["<18", None, "56+", "25-34"],
            "gender": ["F", "M", None, "M"],
            "occupation": ["K-12 student", None, "retired", "other"],
        }
    ).astype({c: object for c in ("age_group", "gender", "occupation")})  # cells of any type


def test_users_clean_pass_with_nulls_and_text_ids() -> None:
    report = check_users(make_users(), dataset="ml-1m")
    assert report.success, report.summary()
    assert report.summary().startswith("users check passed for ml-1m:")
    df = make_users().assign(user_id=["1", 2.0, 3, "4"], age=[10, None, 70, "30"])  # as a CSV may hold
    assert check_users(df, dataset="shop").success


def test_users_failures() -> None:
    df = make_users().assign(age=[10, 200, 1.5, "x"])
    df["user_id"] = pd.Series([1, "1.0", None, "abc"], dtype=object)
    df.loc[0, "age_group"] = "18-25"
    df.loc[1, "gender"] = " "
    df.loc[3, "gender"] = 7
    df.loc[3, "occupation"] = "o" * 65
    report = check_users(df, dataset="shop")
    got = {f.rule: (f.unexpected_count, f.row_positions) for f in report.failures}
    assert got == {
        "expect_column_values_to_not_be_null(user_id)": (1, [2]),
        "expect_column_values_to_be_integers(user_id)": (1, [3]),
        "expect_column_values_to_be_unique(user_id)": (2, [0, 1]),
        "expect_column_values_to_be_in_set(age_group, ['<18', '18-24', '25-34', '35-44', '45-49', '50-55', '56+'])": (
            1,
            [0],
        ),
        "expect_column_values_to_be_integers(age)": (2, [2, 3]),
        "expect_column_values_to_be_between(age, min=0, max=120)": (1, [1]),
        "expect_column_values_to_be_strings(gender)": (1, [3]),
        "expect_column_value_lengths_to_be_between(gender, min=1, max=32)": (1, [1]),
        "expect_column_value_lengths_to_be_between(occupation, min=1, max=64)": (1, [3]),
    }, report.summary()
    assert report.summary().startswith("users check FAILED for shop: 9 of")
    assert failing_rows(df, report).index.tolist() == [0, 1, 2, 3]


def test_users_missing_columns_and_empty_table() -> None:
    report = check_users(make_users()[["user_id", "gender"]], dataset="d")
    assert [f.rule for f in report.failures] == [
        "expect_column_to_exist(age_group)",
        "expect_column_to_exist(occupation)",
    ]
    empty = check_users(make_users().iloc[0:0], dataset="d")
    assert [f.rule for f in empty.failures] == ["expect_table_row_count_to_be_between(min=1)"]


def test_samples_and_interactions_user_ids_must_be_known_when_given() -> None:
    df = make_samples()  # users 1, 2, 3
    plain = samples_check(df)
    assert plain.success and samples_check(df, known_user_ids=[1, 2, 3]).evaluated == plain.evaluated + 1
    f = only(samples_check(df, known_user_ids=np.array([1, 3])), "expect_column_values_to_be_in_set(user_id")
    assert f.rule == "expect_column_values_to_be_in_set(user_id, known_user_ids[2])"
    assert (f.unexpected_count, f.examples[:1]) == (4, [2])
    inter = pd.DataFrame(
        {
            "user_id": ["1", 2, 9],
            "item_id": [1, 2, 3],
            "rating": [4, 3, 5],
            "timestamp": [START, START + 1, START + 2],
        }
    )
    assert inter_check(inter).success
    report = check_interactions(
        inter, dataset="custom", partition=DAY, known_item_ids=KNOWN, known_user_ids={1, 2}
    )
    f = only(report, "expect_column_values_to_be_in_set(user_id")
    assert (f.unexpected_count, f.row_positions, f.examples) == (1, [2], [9])


# --------------------------------------------------------------------------------------------
# cheap imports
# --------------------------------------------------------------------------------------------


def test_importing_quality_does_not_import_gx_or_pandas() -> None:
    code = (
        "import sys, llmcf_core.quality as q; q.DataCheckFailed; "
        "print('great_expectations' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------------------------
# generic runner
# --------------------------------------------------------------------------------------------


def test_runner_turns_gx_errors_and_duplicate_columns_into_failures() -> None:
    from llmcf_core.quality.gx_runner import Rule, run_rules

    df = pd.DataFrame([["a", 1, 2], ["b", 3, 4]], columns=["s", "x", "x"], index=[9, 8])
    rules = [
        Rule("between(s)", "ExpectColumnValuesToBeBetween", {"column": "s", "min_value": 1}, requires=("s",)),
        Rule("in_set(x)", "ExpectColumnValuesToBeInSet", {"column": "x", "value_set": [1]}, requires=("x",)),
        Rule("skipped(y)", "ExpectColumnValuesToNotBeNull", {"column": "y"}, requires=("y",)),
    ]
    report = run_rules(df, rules, suite="t", dataset="d")
    got = {f.rule: f for f in report.failures}
    assert report.evaluated == 3  # duplicate-names rule + the two runnable rules
    assert got["expect_column_names_to_be_unique"].examples == ["x"]
    assert got["between(s)"].detail.startswith("could not be evaluated")
    assert (got["in_set(x)"].row_positions, got["in_set(x)"].examples) == ([1], [3])  # GX's values
    with pytest.raises(ValueError, match="derived column"):
        run_rules(df.iloc[:, :2], rules[:1], derived={"s": [True]}, suite="t", dataset="d")


def test_reject_quarantines_failing_rows_and_publish_checked_clears_it(tmp_path):
    """The one check -> quarantine -> publish path every stage uses (llmcf_core.quality.publish)."""
    import pyarrow as pa

    from llmcf_core import storage
    from llmcf_core.quality import DataCheckFailed
    from llmcf_core.quality.gx_runner import Rule, run_rules
    from llmcf_core.quality.publish import publish_checked, reject

    rule = Rule(
        "in_set(x)", "ExpectColumnValuesToBeInSet", {"column": "x", "value_set": [1]}, requires=("x",)
    )
    # An object column Arrow refuses (an int and a list) is still quarantined, as text.
    bad = pd.DataFrame({"x": [1, 2, 3, 1], "odd": [1, [2], "b", None]})
    report = run_rules(bad, [rule], suite="t", dataset="d")
    final, quarantine = tmp_path / "out" / "dt=2024-05-01", tmp_path / "q" / "dt=2024-05-01"
    with pytest.raises(DataCheckFailed) as info:
        reject(bad, report, quarantine, limit=1, context="stage dt=2024-05-01", what="things")
    assert f"stage dt=2024-05-01: 1 things quarantined at {quarantine}" in info.value.__notes__
    kept = storage.read_partition(quarantine).to_pandas()
    assert kept["x"].astype(str).tolist() == ["2"] and kept["_failed_rules"].tolist() == ["in_set(x)"]
    assert storage.read_manifest(quarantine)["report"]["success"] is False
    with pytest.raises(DataCheckFailed):  # a failed report never publishes
        publish_checked(pa.table({"x": [2]}), final, report)
    assert not storage.is_published(final)

    good = pd.DataFrame({"x": [1, 1]})
    ok = run_rules(good, [rule], suite="t", dataset="d")
    result = publish_checked(pa.table(good), final, ok, {"dataset": "d"}, clear=[quarantine])
    manifest = storage.read_manifest(final)
    assert result.rows == 2 and manifest["dataset"] == "d" and manifest["checks"]["success"] is True
    assert not quarantine.exists()


def test_verify_published_is_one_strict_gate(tmp_path):
    """Every check task's gate: a manifest, the partition it names, and each named report passed;
    a missing report fails like a failed one (no gate lets an unchecked partition through)."""
    from llmcf_core import storage
    from llmcf_core.layout import InvalidArgument
    from llmcf_core.quality.publish import verify_published

    folder = tmp_path / "samples" / "dt=2024-05-01"
    with pytest.raises(InvalidArgument, match="not published for partition 2024-05-01"):
        verify_published(folder, partition="2024-05-01")
    storage.publish_table(pa.table({"x": [1]}), folder, {"partition": "2024-05-01"})
    with pytest.raises(InvalidArgument, match="check 'checks' did not pass: no report"):
        verify_published(folder, partition="2024-05-01")
    failed = {"success": False, "failures": [{"rule": "unique(sample_id)"}]}
    storage.publish_table(pa.table({"x": [3]}), folder, {"partition": "2024-05-01", "checks": failed})
    with pytest.raises(InvalidArgument, match=r"did not pass: \['unique\(sample_id\)'\]"):
        verify_published(folder, partition="2024-05-01")
    ok = {"partition": "2024-05-01", "checks": {"success": True}, "agreement": {"success": True}}
    storage.publish_table(pa.table({"x": [1, 2]}), folder, ok)
    with pytest.raises(InvalidArgument, match="is for partition 2024-05-01, not 2024-05-02"):
        verify_published(folder, partition="2024-05-02")
    with pytest.raises(InvalidArgument, match="'qdrant' did not pass"):
        verify_published(folder, reports=("checks", "qdrant"))
    assert verify_published(folder, partition="2024-05-01", reports=("checks", "agreement"))["rows"] == 2
