"""Sample building against a hand-built timeline with known histories and labels."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from llmcf_core.data.samples import HistoryInputError, build_samples, rows_for_partition, split_of
from llmcf_core.layout import day_bounds

DAY = dt.date(2024, 5, 2)
D0, _ = day_bounds(dt.date(2024, 5, 1))
D1, D2 = day_bounds(DAY)


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


@pytest.fixture
def timeline():
    return _frame(
        [
            # user 1: two days before, then three ratings on DAY (two share a second)
            (1, 10, 5, D0 + 10),
            (1, 11, 2, D0 + 20),
            (1, 13, 4, D1 + 100),
            (1, 12, 3, D1 + 100),  # same second as item 13: item 12 comes first in (ts, item_id)
            (1, 14, 1, D1 + 200),
            # user 2: first rating ever is on DAY (cold start), one after DAY (must not leak)
            (2, 10, 4, D1 + 50),
            (2, 11, 5, D2 + 5),
            # user 3: nothing on DAY
            (3, 10, 5, D0 + 1),
        ]
    )


def _build(df, history_len=20, **kw):
    return build_samples(
        df,
        DAY,
        history_len=history_len,
        positive_rating=4.0,
        valid_start=kw.get("valid_start"),
        test_start=kw.get("test_start"),
    ).to_pylist()


def test_exactly_the_days_ratings_in_time_order(timeline):
    rows = _build(timeline)
    assert [(r["user_id"], r["item_id"]) for r in rows] == [(2, 10), (1, 12), (1, 13), (1, 14)]
    assert all(r["dt"] == "2024-05-02" for r in rows)
    assert [r["label"] for r in rows] == [1, 0, 1, 0]
    assert rows[0]["sample_id"] == f"2-10-{D1 + 50}"


def test_histories_follow_total_order_and_never_leak(timeline):
    by_item = {(r["user_id"], r["item_id"]): r for r in _build(timeline)}
    assert by_item[(2, 10)]["history_item_ids"] == []  # cold start, later rating not visible
    assert by_item[(1, 12)]["history_item_ids"] == [10, 11]
    assert by_item[(1, 13)]["history_item_ids"] == [10, 11, 12]  # same second, smaller item first
    assert by_item[(1, 13)]["history_labels"] == [1, 0, 0]
    assert by_item[(1, 14)]["history_item_ids"] == [10, 11, 12, 13]
    assert by_item[(1, 14)]["history_timestamps"] == [D0 + 10, D0 + 20, D1 + 100, D1 + 100]


def test_history_is_truncated_to_the_most_recent(timeline):
    by_item = {(r["user_id"], r["item_id"]): r for r in _build(timeline, history_len=2)}
    assert by_item[(1, 14)]["history_item_ids"] == [12, 13]


def test_split_by_configured_boundaries(timeline):
    assert split_of(DAY, dt.date(2024, 6, 1), dt.date(2024, 7, 1)) == "train"
    assert split_of(DAY, DAY, dt.date(2024, 7, 1)) == "valid"
    assert split_of(DAY, dt.date(2024, 1, 1), DAY) == "test"
    rows = _build(timeline, valid_start=DAY)
    assert {r["split"] for r in rows} == {"valid"}


def test_rebuild_is_identical(timeline):
    a = build_samples(timeline, DAY, history_len=20, positive_rating=4.0, valid_start=None, test_start=None)
    shuffled = timeline.sample(frac=1.0, random_state=3)
    b = build_samples(shuffled, DAY, history_len=20, positive_rating=4.0, valid_start=None, test_start=None)
    assert a.equals(b)


def test_empty_day_gives_empty_table_with_schema(timeline):
    empty = build_samples(
        timeline, dt.date(2024, 5, 10), history_len=20, positive_rating=4.0, valid_start=None, test_start=None
    )
    assert empty.num_rows == 0
    assert "history_item_ids" in empty.schema.names


def test_partition_scope_includes_rows_without_usable_timestamp(timeline):
    raw = timeline.astype({"timestamp": object})
    raw.loc[len(raw)] = [4, 10, 5, "yesterday"]
    mask = rows_for_partition(raw, DAY)
    assert mask.sum() == 5  # four rows of DAY + the unparseable one


def test_corrupt_history_rows_are_an_error_not_silently_dropped(timeline):
    bad = timeline.astype({"item_id": object})
    bad.loc[0, "item_id"] = "ten"
    with pytest.raises(HistoryInputError, match="2024-05-01"):
        _build(bad)
