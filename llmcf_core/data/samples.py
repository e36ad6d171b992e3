"""Samples of one day partition: each rating of that UTC day with the user's history before it.

History = the up-to-``history_len`` items the same user rated earlier in the total order
(timestamp, item_id), oldest first. Only rows that can influence the partition are touched:
the day's rows and the earlier rows of the day's users.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from llmcf_core.layout import day_bounds

SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
        ("label", pa.int8()),
        ("history_item_ids", pa.list_(pa.int64())),
        ("history_timestamps", pa.list_(pa.int64())),
        ("history_labels", pa.list_(pa.int8())),
        ("split", pa.string()),
        ("dt", pa.string()),
    ]
)

SPLITS = ("train", "valid", "test")


class HistoryInputError(ValueError):
    """Earlier rows of this partition's users are unusable (their own partition must be fixed)."""


def sample_id(user_id: int, item_id: int, timestamp: int) -> str:
    return f"{user_id}-{item_id}-{timestamp}"


def split_of(day: dt.date, valid_start: dt.date | None, test_start: dt.date | None) -> str:
    if test_start is not None and day >= test_start:
        return "test"
    if valid_start is not None and day >= valid_start:
        return "valid"
    return "train"


def coerce_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric view of raw interactions (bad values become NaN; the check reports them)."""
    out = pd.DataFrame(index=df.index)
    for col in ("user_id", "item_id", "rating", "timestamp"):
        out[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    return out


def rows_for_partition(raw: pd.DataFrame, day: dt.date) -> pd.Series:
    """Mask of the raw rows the partition's check must see: the day's rows and rows without a
    usable timestamp (their day is unknown, so every partition refuses them until fixed)."""
    start, end = day_bounds(day)
    ts = pd.to_numeric(raw["timestamp"], errors="coerce") if "timestamp" in raw.columns else None
    if ts is None:
        return pd.Series(True, index=raw.index)
    whole = ts.notna() & (ts == ts.round())
    return (whole & (ts >= start) & (ts < end)) | ~whole


def build_samples(
    interactions: pd.DataFrame,
    day: dt.date,
    *,
    history_len: int,
    positive_rating: float,
    valid_start: dt.date | None,
    test_start: dt.date | None,
) -> pa.Table:
    """Build the samples table of ``day`` from (already checked) interactions."""
    start, end = day_bounds(day)
    num = coerce_interactions(interactions)
    day_mask = (num["timestamp"] >= start) & (num["timestamp"] < end)
    users = num.loc[day_mask, "user_id"].unique()
    scope = num[num["user_id"].isin(users) & (num["timestamp"] < end)]
    bad = scope[scope.isna().any(axis=1)]
    if len(bad):
        days = sorted({str(pd.to_datetime(t, unit="s", utc=True).date()) for t in bad["timestamp"].dropna()})
        raise HistoryInputError(
            f"{len(bad)} earlier rows of this partition's users have null or non-numeric values "
            f"(in partitions {days[:10]}); fix and re-run those partitions first"
        )
    scope = scope.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64"})
    scope = scope.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)

    uid = scope["user_id"].to_numpy()
    iid = scope["item_id"].to_numpy()
    ts = scope["timestamp"].to_numpy()
    rating = scope["rating"].to_numpy(dtype="float64")
    label = (rating >= positive_rating).astype("int8")
    # First row index of each row's user (rows are grouped by user after the sort).
    new_user = np.r_[True, uid[1:] != uid[:-1]]
    user_first = np.maximum.accumulate(np.where(new_user, np.arange(len(uid)), 0))

    targets = np.flatnonzero(ts >= start)
    hist_items, hist_ts, hist_labels = [], [], []
    for i in targets:
        lo = max(user_first[i], i - history_len)
        hist_items.append(iid[lo:i])
        hist_ts.append(ts[lo:i])
        hist_labels.append(label[lo:i])

    t_uid, t_iid, t_ts = uid[targets], iid[targets], ts[targets]
    order = np.lexsort((t_iid, t_uid, t_ts))  # publish in (timestamp, user_id, item_id) order
    split = split_of(day, valid_start, test_start)
    n = len(targets)
    return pa.table(
        {
            "sample_id": pa.array([sample_id(t_uid[k], t_iid[k], t_ts[k]) for k in order], pa.string()),
            "user_id": pa.array(t_uid[order], pa.int64()),
            "item_id": pa.array(t_iid[order], pa.int64()),
            "timestamp": pa.array(t_ts[order], pa.int64()),
            "rating": pa.array(rating[targets][order], pa.float64()),
            "label": pa.array(label[targets][order], pa.int8()),
            "history_item_ids": pa.array([hist_items[k] for k in order], pa.list_(pa.int64())),
            "history_timestamps": pa.array([hist_ts[k] for k in order], pa.list_(pa.int64())),
            "history_labels": pa.array([hist_labels[k] for k in order], pa.list_(pa.int8())),
            "split": pa.array([split] * n, pa.string()),
            "dt": pa.array([day.isoformat()] * n, pa.string()),
        },
        schema=SAMPLES_SCHEMA,
    )
