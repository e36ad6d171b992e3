"""The items table and its text, rendered like METHOD.md's item text."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("year", pa.int64()),
        ("genres", pa.list_(pa.string())),
        ("text", pa.string()),
    ]
)


def item_text(title: str, year: object, genres: Sequence[str] | None) -> str:
    """``title: ...; year: ...; genres: a, b`` (the paper's ``title; brand; category`` for movies)."""
    parts = [f"title: {title}"]
    if year is not None and not pd.isna(year):
        parts.append(f"year: {int(year)}")
    genres = [str(g) for g in (genres if genres is not None else [])]
    if genres:
        parts.append(f"genres: {', '.join(genres)}")
    return "; ".join(parts)


def render_items(items: pd.DataFrame) -> pd.DataFrame:
    """Add ``text`` and keep the published columns, sorted by item_id."""
    out = items[["item_id", "title", "year", "genres"]].copy()
    out["text"] = [
        item_text(t, y, g) for t, y, g in zip(out["title"], out["year"], out["genres"], strict=True)
    ]
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)


def items_to_arrow(items: pd.DataFrame) -> pa.Table:
    year = items["year"].astype("Int64")
    return pa.table(
        {
            "item_id": pa.array(items["item_id"].astype("int64"), pa.int64()),
            "title": pa.array(items["title"].astype(str), pa.string()),
            "year": pa.array([None if pd.isna(v) else int(v) for v in year], pa.int64()),
            "genres": pa.array([list(g) for g in items["genres"]], pa.list_(pa.string())),
            "text": pa.array(items["text"].astype(str), pa.string()),
        },
        schema=ITEMS_SCHEMA,
    )
