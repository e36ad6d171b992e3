"""A small custom dataset (the `--interactions/--items` path) to corrupt in tests."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from llmcf_core.layout import day_bounds

DAY = dt.date(2024, 5, 2)


@pytest.fixture
def custom_logs():
    """Clean interactions over three days and a five-item catalogue, as DataFrames."""
    d0, _ = day_bounds(DAY - dt.timedelta(days=1))
    d1, _ = day_bounds(DAY)
    d2, _ = day_bounds(DAY + dt.timedelta(days=1))
    inter = pd.DataFrame(
        [
            (1, 1, 5, d0 + 10),
            (1, 2, 2, d0 + 20),
            (1, 3, 4, d1 + 100),
            (2, 1, 4, d1 + 50),
            (2, 4, 3, d1 + 70),
            (3, 5, 1, d1 + 90),
            (2, 2, 5, d2 + 5),
        ],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    items = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4, 5],
            "title": ["Alpha (1990)", "Beta (1991)", "Gamma (1992)", "Delta (1993)", "Epsilon (1994)"],
            "genres": ["Drama", "Comedy|Drama", "Action", "", "Horror"],
        }
    )
    return inter, items


@pytest.fixture
def write_logs(tmp_path):
    """Write (interactions, items) frames to files; returns CLI flags for jobs.ingest."""

    def _write(inter: pd.DataFrame, items: pd.DataFrame, fmt: str = "csv") -> list[str]:
        ip, tp = tmp_path / f"interactions.{fmt}", tmp_path / f"items.{fmt}"
        if fmt == "csv":
            inter.to_csv(ip, index=False)
            items.to_csv(tp, index=False)
        else:
            inter.to_parquet(ip, index=False)
            items.to_parquet(tp, index=False)
        return ["--interactions", str(ip), "--items", str(tp)]

    return _write
