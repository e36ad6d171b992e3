"""The data-check suites, one per artifact: raw interactions, samples, items, users.

Each ``check_*`` function computes the per-row helper columns GX cannot express on messy data
(whole-number tests on strings, membership in a 10k-id set, rules over list-valued history
cells) with numpy/pandas, lists its :class:`~llmcf_core.quality.gx_runner.Rule` objects and
runs them with :func:`~llmcf_core.quality.gx_runner.run_rules`. Jobs call these before they
publish a partition and raise :class:`~llmcf_core.quality.gx_runner.DataCheckFailed` (or
quarantine :func:`~llmcf_core.quality.gx_runner.failing_rows`) when a report fails.

Conventions:
- A derived column is named ``_chk_<what>``; the rule keeps the real rule's name and quotes the
  real column's values (or ``sample_id`` / ``item_id`` for cross-column rules) as examples.
- Value rules ignore nulls (the not-null rule reports those once) and values of the wrong kind
  (the integer/numeric rule reports those once), so each bad value is counted by one rule.
- "Integer-valued" means the value parses as a finite whole number: ``7``, ``7.0`` and ``"7"``
  pass; ``"abc"``, ``1.5`` and booleans fail. The samples and items suites also check dtypes
  (column-level: counted once, no rows), because those artifacts are ours and must match the
  schema exactly; raw interactions are the user's and are coerced by the loader after checking.
"""

from __future__ import annotations

import calendar
import datetime as _dt
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from llmcf_core.quality.gx_runner import DEFAULT_MAX_EXAMPLES, CheckReport, Rule, as_int_array, run_rules

__all__ = ["check_interactions", "check_items", "check_samples", "check_users"]

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
SAMPLE_COLUMNS = (
    "sample_id",
    "user_id",
    "item_id",
    "timestamp",
    "rating",
    "label",
    "history_item_ids",
    "history_timestamps",
    "history_labels",
    "split",
    "dt",
)
SAMPLE_DTYPES = {
    "sample_id": "str",
    "user_id": "int64",
    "item_id": "int64",
    "timestamp": "int64",
    "rating": "float64",
    "label": "int8",
    "split": "str",
    "dt": "str",
}
HISTORY_COLUMNS = ("history_item_ids", "history_timestamps", "history_labels")
SPLITS = ("train", "valid", "test")
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "text")
# "int64" also accepts pandas' nullable Int64 (GX compares the dtype's scalar type).
ITEM_DTYPES = {"item_id": "int64", "title": "str", "year": "int64", "text": "str"}
USER_COLUMNS = ("user_id", "age_group", "gender", "occupation")
# MovieLens-1M's age groups (llmcf_core.data.users.AGE_GROUPS; repeated so the suite stays standalone).
AGE_GROUPS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
AGE_MIN, AGE_MAX = 0, 120
# Lengths of the user attributes' text (after stripping); longer values are free text, not categories.
USER_TEXT_MAX = {"gender": 32, "occupation": 64}
RATING_MIN, RATING_MAX = 1, 5
_DAY_S = 86_400
_INT64_LIMIT = 2.0**63


# --------------------------------------------------------------------------------------------
# Per-row helpers (numpy arrays aligned by position)
# --------------------------------------------------------------------------------------------


def _null(s: pd.Series) -> np.ndarray:
    return s.isna().to_numpy(dtype=bool)


def _num(s: pd.Series) -> np.ndarray:
    """Values as float64; NaN where null or not a number. Booleans are not numbers here."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return np.full(len(s), np.nan)
    if pd.api.types.is_object_dtype(s.dtype):
        s = s.map(lambda v: np.nan if isinstance(v, bool | np.bool_) else v)
    num = pd.to_numeric(s, errors="coerce")
    return np.asarray(num.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")


def _whole(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (np.floor(x) == x) & (np.abs(x) < _INT64_LIMIT)


def _is_int_or_null(s: pd.Series, num: np.ndarray) -> np.ndarray:
    return _null(s) | _whole(num)


def _is_num_or_null(s: pd.Series, num: np.ndarray) -> np.ndarray:
    return _null(s) | np.isfinite(num)


def _known(num: np.ndarray, known: np.ndarray) -> np.ndarray:
    """True where the value is null/not a whole number (other rules report it) or a known id."""
    ok = ~_whole(num)
    ok[~ok] = np.isin(num[~ok].astype(np.int64), known)
    return ok


def _int_lists(s: pd.Series) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per cell: its int64 array, and its length (-1 where the cell is not a list of integers)."""
    lengths = np.full(len(s), -1, dtype=np.int64)
    arrays: list[np.ndarray] = []
    empty = np.empty(0, dtype=np.int64)
    for i, cell in enumerate(s.to_numpy(dtype=object)):
        arr = empty
        if isinstance(cell, list | tuple | np.ndarray):
            raw = np.asarray(cell)
            if raw.ndim == 1 and (raw.size == 0 or raw.dtype.kind in "iu"):
                arr = raw.astype(np.int64, copy=False)
                lengths[i] = raw.size
        arrays.append(arr)
    return lengths, arrays


def _nonblank_or_null(s: pd.Series) -> np.ndarray:
    """True for non-blank strings and for nulls (the not-null rule reports those)."""
    text = np.fromiter(
        (isinstance(v, str) and v.strip() != "" for v in s.to_numpy(dtype=object)), dtype=bool, count=len(s)
    )
    return _null(s) | text


def _str_or_null(s: pd.Series) -> np.ndarray:
    return _null(s) | np.fromiter(
        (isinstance(v, str) for v in s.to_numpy(dtype=object)), dtype=bool, count=len(s)
    )


def _str_len(s: pd.Series) -> np.ndarray:
    """Stripped length of string values; NaN for nulls and non-strings (other rules report those)."""
    return np.fromiter(
        (len(v.strip()) if isinstance(v, str) else np.nan for v in s.to_numpy(dtype=object)),
        dtype="float64",
        count=len(s),
    )


def _str_lists(s: pd.Series) -> np.ndarray:
    def ok(cell: Any) -> bool:
        return isinstance(cell, list | tuple | np.ndarray) and all(isinstance(v, str) for v in cell)

    return np.fromiter((ok(c) for c in s.to_numpy(dtype=object)), dtype=bool, count=len(s))


def _day(partition: _dt.date | str) -> tuple[str, int, int]:
    """The partition's label and UTC day bounds [start, end) in epoch seconds."""
    if isinstance(partition, str):
        partition = _dt.date.fromisoformat(partition)
    day = _dt.date(partition.year, partition.month, partition.day)  # a datetime -> its date
    start = calendar.timegm(day.timetuple())
    return day.isoformat(), start, start + _DAY_S


# --------------------------------------------------------------------------------------------
# Rule builders (the names people read in error messages)
# --------------------------------------------------------------------------------------------


def _exists(col: str) -> Rule:
    return Rule(f"expect_column_to_exist({col})", "ExpectColumnToExist", {"column": col})


def _not_null(col: str, examples: tuple[str, ...]) -> Rule:
    return Rule(
        f"expect_column_values_to_not_be_null({col})",
        "ExpectColumnValuesToNotBeNull",
        {"column": col},
        requires=(col,),
        examples_from=examples,
    )


def _of_type(col: str, type_: str) -> Rule:
    return Rule(
        f"expect_column_values_to_be_of_type({col}, {type_})",
        "ExpectColumnValuesToBeOfType",
        {"column": col, "type_": type_},
        requires=(col,),
        scope="column",
        detail="dtype {observed}",
    )


def _true(name: str, derived_col: str, requires: tuple[str, ...], examples: tuple[str, ...]) -> Rule:
    """A rule computed in pandas as a boolean column; GX counts and locates the False rows."""
    return Rule(
        name,
        "ExpectColumnValuesToBeInSet",
        {"column": derived_col, "value_set": [True]},
        requires=requires,
        examples_from=examples,
    )


def _row_count(min_rows: int) -> Rule:
    return Rule(
        f"expect_table_row_count_to_be_between(min={min_rows})",
        "ExpectTableRowCountToBeBetween",
        {"min_value": min_rows},
        detail="{observed} rows",
    )


def _in_day(col: str, start: int, end: int, examples: tuple[str, ...]) -> Rule:
    return Rule(
        f"expect_column_values_to_be_between({col}, min={start}, max={end}, strict_max)",
        "ExpectColumnValuesToBeBetween",
        {"column": f"_chk_{col}_num", "min_value": start, "max_value": end, "strict_max": True},
        requires=(col,),
        examples_from=examples,
    )


def _rating_range(examples: tuple[str, ...]) -> Rule:
    return Rule(
        f"expect_column_values_to_be_between(rating, min={RATING_MIN}, max={RATING_MAX})",
        "ExpectColumnValuesToBeBetween",
        {"column": "_chk_rating_num", "min_value": RATING_MIN, "max_value": RATING_MAX},
        requires=("rating",),
        examples_from=examples,
    )


def _integer(col: str) -> Rule:
    return _true(f"expect_column_values_to_be_integers({col})", f"_chk_{col}_is_int", (col,), (col,))


def _user_known(known: np.ndarray) -> Rule:
    return _true(
        f"expect_column_values_to_be_in_set(user_id, known_user_ids[{len(known)}])",
        "_chk_user_id_known",
        ("user_id",),
        ("user_id",),
    )


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------


def check_interactions(
    df: pd.DataFrame,
    *,
    dataset: str,
    partition: _dt.date,
    known_item_ids: Iterable[int],
    known_user_ids: Iterable[int] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> CheckReport:
    """Suite ``interactions``: the user's raw ratings for one day, whatever their dtypes.

    Rules: required columns; keys and rating not null; user_id/item_id/timestamp whole numbers;
    rating numeric in [1, 5]; item_id known; user_id known (only when ``known_user_ids`` is given:
    the dataset has a users table); no duplicate (user_id, item_id, timestamp); timestamp inside
    the partition's UTC day.
    """
    label, start, end = _day(partition)
    frame = df.reset_index(drop=True)
    cols = set(frame.columns)
    known = as_int_array(known_item_ids)
    users = None if known_user_ids is None else as_int_array(known_user_ids)
    derived: dict[str, np.ndarray] = {}
    for col in ("user_id", "item_id", "timestamp"):
        if col in cols:
            num = _num(frame[col])
            derived[f"_chk_{col}_num"] = num
            derived[f"_chk_{col}_is_int"] = _is_int_or_null(frame[col], num)
    if "rating" in cols:
        num = _num(frame["rating"])
        derived["_chk_rating_num"] = num
        derived["_chk_rating_is_num"] = _is_num_or_null(frame["rating"], num)
    if "item_id" in cols:
        derived["_chk_item_id_known"] = _known(derived["_chk_item_id_num"], known)
    if users is not None and "user_id" in cols:
        derived["_chk_user_id_known"] = _known(derived["_chk_user_id_num"], users)

    keys = ("user_id", "item_id", "timestamp")
    rules = [_exists(c) for c in INTERACTION_COLUMNS]
    rules += [_not_null(c, INTERACTION_COLUMNS) for c in ("user_id", "item_id", "timestamp", "rating")]
    rules += [_integer(c) for c in keys]
    rules += [
        _true("expect_column_values_to_be_numeric(rating)", "_chk_rating_is_num", ("rating",), ("rating",)),
        _rating_range(("rating",)),
        _true(
            f"expect_column_values_to_be_in_set(item_id, known_item_ids[{len(known)}])",
            "_chk_item_id_known",
            ("item_id",),
            ("item_id",),
        ),
        Rule(
            "expect_no_duplicate_rows(user_id, item_id, timestamp)",
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": [f"_chk_{c}_num" for c in keys]},
            requires=keys,
            examples_from=keys,
        ),
        _in_day("timestamp", start, end, ("timestamp",)),
    ]
    if users is not None:
        rules.append(_user_known(users))
    return run_rules(
        frame,
        rules,
        derived=derived,
        suite="interactions",
        dataset=dataset,
        partition=label,
        max_examples=max_examples,
    )


def check_samples(
    df: pd.DataFrame,
    *,
    dataset: str,
    partition: _dt.date,
    known_item_ids: Iterable[int],
    history_len: int,
    min_rows: int,
    positive_rating: float = 4.0,
    known_user_ids: Iterable[int] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> CheckReport:
    """Suite ``samples``: one day's training samples, built by our code, before publication.

    Rules: row count >= min_rows; schema (columns, dtypes); no nulls; unique sample_id equal to
    ``f"{user_id}-{item_id}-{timestamp}"``; label in {0, 1} and equal to rating >= positive_rating;
    rating in [1, 5]; timestamp in the partition's UTC day; dt == partition; split allowed;
    item_id known; user_id known (only when ``known_user_ids`` is given: the dataset has a users
    table); history lists well-formed (int lists of one length <= history_len), strictly
    before the sample in (timestamp, item_id) order, oldest first, items known, labels in {0, 1}.
    """
    label, start, end = _day(partition)
    frame = df.reset_index(drop=True)
    cols = set(frame.columns)
    known = as_int_array(known_item_ids)
    users = None if known_user_ids is None else as_int_array(known_user_ids)
    derived: dict[str, np.ndarray] = {}

    for col in ("user_id", "item_id", "timestamp", "label"):
        if col in cols:
            num = _num(frame[col])
            derived[f"_chk_{col}_num"] = num
            derived[f"_chk_{col}_is_int"] = _is_int_or_null(frame[col], num)
    if "rating" in cols:
        num = _num(frame["rating"])
        derived["_chk_rating_num"] = num
        derived["_chk_rating_is_num"] = _is_num_or_null(frame["rating"], num)
    if "item_id" in cols:
        derived["_chk_item_id_known"] = _known(derived["_chk_item_id_num"], known)
    if users is not None and "user_id" in cols:
        derived["_chk_user_id_known"] = _known(derived["_chk_user_id_num"], users)
    if {"label", "rating"} <= cols:
        lab, rat = derived["_chk_label_num"], derived["_chk_rating_num"]
        with np.errstate(invalid="ignore"):
            agree = lab == (rat >= positive_rating).astype(float)
        derived["_chk_label_matches_rating"] = np.isnan(lab) | np.isnan(rat) | agree
    if {"sample_id", "user_id", "item_id", "timestamp"} <= cols:
        derived["_chk_sample_id_matches_key"] = _sample_id_matches(frame)
    if set(HISTORY_COLUMNS) <= cols:
        derived.update(_history_checks(frame, derived, known, cols))

    hist_req = HISTORY_COLUMNS
    by_id = ("sample_id",)
    rules = [_row_count(min_rows)]
    rules += [_exists(c) for c in SAMPLE_COLUMNS]
    rules += [_of_type(c, t) for c, t in SAMPLE_DTYPES.items()]
    rules += [_not_null("sample_id", ("user_id", "item_id", "timestamp"))]
    rules += [_not_null(c, by_id) for c in SAMPLE_DTYPES if c != "sample_id"]
    rules += [_integer(c) for c in ("user_id", "item_id", "timestamp", "label")]
    rules += [
        _true("expect_column_values_to_be_numeric(rating)", "_chk_rating_is_num", ("rating",), ("rating",)),
        Rule(
            "expect_column_values_to_be_unique(sample_id)",
            "ExpectColumnValuesToBeUnique",
            {"column": "sample_id"},
            requires=("sample_id",),
            examples_from=by_id,
        ),
        _true(
            "expect_column_values_to_equal_key(sample_id == user_id-item_id-timestamp)",
            "_chk_sample_id_matches_key",
            ("sample_id", "user_id", "item_id", "timestamp"),
            by_id,
        ),
        Rule(
            "expect_column_values_to_be_in_set(label, [0, 1])",
            "ExpectColumnValuesToBeInSet",
            {"column": "_chk_label_num", "value_set": [0, 1]},
            requires=("label",),
            examples_from=("label",),
        ),
        _true(
            f"expect_label_to_match_rating(label == (rating >= {positive_rating:g}))",
            "_chk_label_matches_rating",
            ("label", "rating"),
            by_id,
        ),
        _rating_range(("rating",)),
        _in_day("timestamp", start, end, ("timestamp",)),
        Rule(
            f"expect_column_values_to_be_in_set(dt, [{label}])",
            "ExpectColumnValuesToBeInSet",
            {"column": "dt", "value_set": [label]},
            requires=("dt",),
            examples_from=("dt",),
        ),
        Rule(
            f"expect_column_values_to_be_in_set(split, {list(SPLITS)})",
            "ExpectColumnValuesToBeInSet",
            {"column": "split", "value_set": list(SPLITS)},
            requires=("split",),
            examples_from=("split",),
        ),
        _true(
            f"expect_column_values_to_be_in_set(item_id, known_item_ids[{len(known)}])",
            "_chk_item_id_known",
            ("item_id",),
            ("item_id",),
        ),
        _true(
            "expect_history_to_be_int_lists_of_equal_length(history_item_ids, history_timestamps, history_labels)",
            "_chk_history_well_formed",
            hist_req,
            by_id,
        ),
        Rule(
            f"expect_history_length_to_be_between(history_item_ids, max={history_len})",
            "ExpectColumnValuesToBeBetween",
            {"column": "_chk_history_len", "min_value": 0, "max_value": history_len},
            requires=hist_req,
            examples_from=by_id,
        ),
        _true(
            "expect_history_to_be_strictly_before_sample((history_timestamps, history_item_ids) < (timestamp, item_id))",
            "_chk_history_before_sample",
            (*hist_req, "timestamp", "item_id"),
            by_id,
        ),
        _true(
            "expect_history_to_be_oldest_first(history_timestamps, history_item_ids)",
            "_chk_history_ordered",
            hist_req,
            by_id,
        ),
        _true(
            f"expect_history_items_to_be_in_set(history_item_ids, known_item_ids[{len(known)}])",
            "_chk_history_items_known",
            hist_req,
            by_id,
        ),
        _true(
            "expect_history_labels_to_be_in_set(history_labels, [0, 1])",
            "_chk_history_labels_binary",
            hist_req,
            by_id,
        ),
    ]
    if users is not None:
        rules.append(_user_known(users))
    return run_rules(
        frame,
        rules,
        derived=derived,
        suite="samples",
        dataset=dataset,
        partition=label,
        max_examples=max_examples,
    )


def _sample_id_matches(frame: pd.DataFrame) -> np.ndarray:
    """sample_id == f"{user_id}-{item_id}-{timestamp}" (rows with a null part pass)."""
    parts = [frame[c] for c in ("sample_id", "user_id", "item_id", "timestamp")]
    nulls = np.zeros(len(frame), dtype=bool)
    for p in parts:
        nulls |= _null(p)
    values = [p.to_numpy(dtype=object) for p in parts]
    same = np.fromiter(
        (str(s) == f"{u}-{i}-{t}" for s, u, i, t in zip(*values, strict=True)),
        dtype=bool,
        count=len(frame),
    )
    return nulls | same


def _history_checks(
    frame: pd.DataFrame, derived: dict[str, np.ndarray], known: np.ndarray, cols: set[str]
) -> dict[str, np.ndarray]:
    """Per-row booleans for the history rules, vectorised over the flattened lists."""
    n = len(frame)
    len_i, items = _int_lists(frame["history_item_ids"])
    len_t, times = _int_lists(frame["history_timestamps"])
    len_l, labels = _int_lists(frame["history_labels"])
    well = (len_i >= 0) & (len_i == len_t) & (len_i == len_l)
    out = {
        "_chk_history_well_formed": well,
        "_chk_history_len": np.where(len_i >= 0, len_i, np.nan).astype("float64"),
    }

    def flat(arrays: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        picked = [arrays[r] for r in rows]
        return np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)

    # Items known and labels binary: each list on its own (if it is an int list).
    rows_i = np.flatnonzero(len_i >= 0)
    owner_i = np.repeat(rows_i, len_i[rows_i])
    bad = np.zeros(n, dtype=bool)
    bad[owner_i[~np.isin(flat(items, rows_i), known)]] = True
    out["_chk_history_items_known"] = ~bad
    rows_l = np.flatnonzero(len_l >= 0)
    owner_l = np.repeat(rows_l, len_l[rows_l])
    bad = np.zeros(n, dtype=bool)
    bad[owner_l[~np.isin(flat(labels, rows_l), (0, 1))]] = True
    out["_chk_history_labels_binary"] = ~bad

    # Order rules need item and timestamp lists of equal length.
    pair = (len_i >= 0) & (len_i == len_t)
    rows = np.flatnonzero(pair)
    owner = np.repeat(rows, len_i[rows])
    it, ts = flat(items, rows), flat(times, rows)
    # Oldest first: consecutive entries of one row are non-decreasing in (timestamp, item_id).
    same_row = owner[1:] == owner[:-1]
    desc = (ts[1:] < ts[:-1]) | ((ts[1:] == ts[:-1]) & (it[1:] < it[:-1]))
    bad = np.zeros(n, dtype=bool)
    bad[owner[1:][same_row & desc]] = True
    out["_chk_history_ordered"] = ~bad
    # Strictly before the sample: (ts, item) < (sample timestamp, sample item_id).
    if {"timestamp", "item_id"} <= cols:
        s_ts = derived["_chk_timestamp_num"][owner]
        s_it = derived["_chk_item_id_num"][owner]
        with np.errstate(invalid="ignore"):
            before = (ts < s_ts) | ((ts == s_ts) & (it < s_it))
        unknown = np.isnan(s_ts) | np.isnan(s_it)  # the sample's own key is reported elsewhere
        bad = np.zeros(n, dtype=bool)
        bad[owner[~(before | unknown)]] = True
        out["_chk_history_before_sample"] = ~bad
    return out


def check_items(
    df: pd.DataFrame,
    *,
    dataset: str,
    min_rows: int = 1,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> CheckReport:
    """Suite ``items``: the item table (one row per item) that prompts and ids come from.

    Rules: at least ``min_rows`` items; schema (columns, dtypes; year nullable Int64); item_id not
    null, whole, unique; title and text non-blank strings; year a whole number or null; genres a
    list of strings.
    """
    frame = df.reset_index(drop=True)
    cols = set(frame.columns)
    derived: dict[str, np.ndarray] = {}
    for col in ("item_id", "year"):
        if col in cols:
            derived[f"_chk_{col}_is_int"] = _is_int_or_null(frame[col], _num(frame[col]))
    for col in ("title", "text"):
        if col in cols:
            derived[f"_chk_{col}_nonblank"] = _nonblank_or_null(frame[col])
    if "genres" in cols:
        derived["_chk_genres_str_list"] = _str_lists(frame["genres"])

    by_id = ("item_id",)
    rules = [_row_count(min_rows)]
    rules += [_exists(c) for c in ITEM_COLUMNS]
    rules += [_of_type(c, t) for c, t in ITEM_DTYPES.items()]
    rules += [_not_null("item_id", ("title",))]
    rules += [_not_null(c, by_id) for c in ("title", "text")]
    rules += [_integer("item_id"), _integer("year")]
    rules += [
        Rule(
            "expect_column_values_to_be_unique(item_id)",
            "ExpectColumnValuesToBeUnique",
            {"column": "item_id"},
            requires=("item_id",),
            examples_from=by_id,
        ),
        _true("expect_column_values_to_not_be_blank(title)", "_chk_title_nonblank", ("title",), by_id),
        _true("expect_column_values_to_not_be_blank(text)", "_chk_text_nonblank", ("text",), by_id),
        _true("expect_column_values_to_be_lists_of_str(genres)", "_chk_genres_str_list", ("genres",), by_id),
    ]
    return run_rules(frame, rules, derived=derived, suite="items", dataset=dataset, max_examples=max_examples)


def check_users(
    df: pd.DataFrame,
    *,
    dataset: str,
    min_rows: int = 1,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> CheckReport:
    """Suite ``users``: the users dimension table (one row per user), before publication.

    Rules: at least ``min_rows`` users; columns user_id, age_group, gender, occupation; user_id not
    null, whole, unique (as a number: ``7`` and ``"7.0"`` collide); age_group one of
    :data:`AGE_GROUPS` or null; gender and occupation strings (or null) whose stripped length is
    in [1, :data:`USER_TEXT_MAX`]. When the frame also holds the raw ``age`` the groups came from,
    that age must be a whole number in [AGE_MIN, AGE_MAX] (or null).
    """
    frame = df.reset_index(drop=True)
    cols = set(frame.columns)
    derived: dict[str, np.ndarray] = {}
    for col in ("user_id", "age"):
        if col in cols:
            num = _num(frame[col])
            derived[f"_chk_{col}_num"] = num
            derived[f"_chk_{col}_is_int"] = _is_int_or_null(frame[col], num)
    if "user_id" in cols:  # unique as a number; non-numbers are the integer rule's
        derived["_chk_user_id_key"] = np.where(
            _whole(derived["_chk_user_id_num"]), derived["_chk_user_id_num"], np.nan
        )
    for col in USER_TEXT_MAX:
        if col in cols:
            derived[f"_chk_{col}_is_str"] = _str_or_null(frame[col])
            derived[f"_chk_{col}_len"] = _str_len(frame[col])

    by_id = ("user_id",)
    rules = [_row_count(min_rows)]
    rules += [_exists(c) for c in USER_COLUMNS]
    rules += [_not_null("user_id", ("age_group", "gender", "occupation")), _integer("user_id")]
    rules += [
        Rule(
            "expect_column_values_to_be_unique(user_id)",
            "ExpectColumnValuesToBeUnique",
            {"column": "_chk_user_id_key"},
            requires=("user_id",),
            examples_from=by_id,
        ),
        Rule(
            f"expect_column_values_to_be_in_set(age_group, {list(AGE_GROUPS)})",
            "ExpectColumnValuesToBeInSet",
            {"column": "age_group", "value_set": list(AGE_GROUPS)},
            requires=("age_group",),
            examples_from=("user_id", "age_group"),
        ),
        _integer("age"),
        Rule(
            f"expect_column_values_to_be_between(age, min={AGE_MIN}, max={AGE_MAX})",
            "ExpectColumnValuesToBeBetween",
            {"column": "_chk_age_num", "min_value": AGE_MIN, "max_value": AGE_MAX},
            requires=("age",),
            examples_from=("user_id", "age"),
        ),
    ]
    for col, most in USER_TEXT_MAX.items():
        rules += [
            _true(
                f"expect_column_values_to_be_strings({col})", f"_chk_{col}_is_str", (col,), ("user_id", col)
            ),
            Rule(
                f"expect_column_value_lengths_to_be_between({col}, min=1, max={most})",
                "ExpectColumnValuesToBeBetween",
                {"column": f"_chk_{col}_len", "min_value": 1, "max_value": most},
                requires=(col,),
                examples_from=("user_id", col),
            ),
        ]
    return run_rules(frame, rules, derived=derived, suite="users", dataset=dataset, max_examples=max_examples)
