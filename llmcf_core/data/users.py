"""The users dimension table: one row per user with coarse, nullable attributes.

Published at ``DataPaths(home, dataset).users`` beside the items table, with ``USERS_SCHEMA``:
``user_id`` (int64, unique), ``age_group`` (one of ``AGE_GROUPS`` or null), ``gender`` and
``occupation`` (strings or null). Ages are bucketed into MovieLens-1M's groups for every dataset
(ML-1M's codes map to the same labels); zip codes are dropped (too sparse to be a feature).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("age_group", pa.string()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
    ]
)
USER_COLUMNS = tuple(USERS_SCHEMA.names)

# MovieLens-1M's age groups (its README), keyed by the lowest age of each group.
AGE_GROUPS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_GROUP_STARTS = np.array([0, 18, 25, 35, 45, 50, 56])
# ML-1M's users.dat ``Age`` codes are the groups' lowest ages, except 1 for "Under 18".
ML1M_AGE_CODES = {1: "<18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
# ML-1M's users.dat ``Occupation`` codes, as its README lists them (0 is '"other" or not specified').
ML1M_OCCUPATIONS = {
    0: "other",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
# A raw age outside this range (or not a whole number) is a data error, reported by check_users.
AGE_MIN, AGE_MAX = 0, 120


def age_groups(ages: pd.Series) -> pd.Series:
    """Raw ages -> their group label; null where the age is null, not a whole number or out of range."""
    num = pd.to_numeric(ages.map(lambda v: np.nan if isinstance(v, bool | np.bool_) else v), errors="coerce")
    values = num.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (np.floor(values) == values) & (values >= AGE_MIN) & (values <= AGE_MAX)
    idx = np.searchsorted(_GROUP_STARTS, np.where(ok, values, 0), side="right") - 1
    labels = np.array(AGE_GROUPS, dtype=object)[idx]
    return pd.Series(np.where(ok, labels, None), index=ages.index, dtype=object)


def _text(s: pd.Series) -> pd.Series:
    """Non-null values as stripped strings (an occupation code 7 -> "7"), nulls as None."""
    return s.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).strip())


def render_users(raw: pd.DataFrame) -> pd.DataFrame:
    """The checked frame: the published columns (values as loaded) plus raw ``age`` if given.

    ``age_group`` comes from the ``age_group`` column where given, else from bucketing ``age``.
    ``user_id`` keeps the loaded values so that the check sees what the file holds; the raw
    ``age`` column stays for the check's age rules and is not published. Sorted by user_id.
    """
    n = len(raw)
    out = pd.DataFrame({"user_id": raw["user_id"]} if "user_id" in raw.columns else {}, index=raw.index)
    group = pd.Series([None] * n, index=raw.index, dtype=object)
    if "age_group" in raw.columns:
        group = _text(raw["age_group"])
    if "age" in raw.columns:
        group = group.where(group.notna(), age_groups(raw["age"]))
    out["age_group"] = group
    for col in ("gender", "occupation"):
        out[col] = (
            _text(raw[col]) if col in raw.columns else pd.Series([None] * n, index=raw.index, dtype=object)
        )
    if "age" in raw.columns:
        out["age"] = raw["age"]
    if "user_id" in out.columns:
        key = pd.to_numeric(out["user_id"], errors="coerce")
        out = out.iloc[np.argsort(key.to_numpy(dtype="float64", na_value=np.inf), kind="stable")]
    return out.reset_index(drop=True)


def users_to_arrow(users: pd.DataFrame) -> pa.Table:
    """The published table (checked frame in, ``USERS_SCHEMA`` out; the raw age is dropped)."""

    def strings(col: str) -> pa.Array:
        return pa.array([None if v is None or pd.isna(v) else str(v) for v in users[col]], pa.string())

    return pa.table(
        {
            "user_id": pa.array(pd.to_numeric(users["user_id"]).astype("int64"), pa.int64()),
            "age_group": strings("age_group"),
            "gender": strings("gender"),
            "occupation": strings("occupation"),
        },
        schema=USERS_SCHEMA,
    )
