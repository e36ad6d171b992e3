"""Refresh cost of the ingest stage: does day k cost more than day 1 for the same new rows?

    .venv/bin/python bench/ingest_refresh.py [--dataset ml-1m] [--repeats 3]

Picks early and late days of the dataset with similar row counts, ingests each (in-process, into
a temporary data root, after one warm-up that pays GX's import and the raw-file staging) and
reports seconds per day, interleaving early and late days so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["LLMCF_HOME"] = tempfile.mkdtemp(prefix="llmcf-bench-")

    import pandas as pd

    from llmcf_core.config import load_config
    from llmcf_core.data.ingest import _staged_frames, ingest_partition
    from llmcf_core.data.sources import resolve_source
    from llmcf_core.layout import DataPaths

    settings = load_config()
    cfg = settings.dataset(args.dataset)
    _, inter = _staged_frames(DataPaths(settings.home, args.dataset), resolve_source(cfg))
    days = pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.date
    counts = days.value_counts().sort_index()
    first = counts.index[0]
    # Late days (last year of the history) with >= 50 rows, each paired with the early day (first
    # 120 days) whose row count is closest.
    early_pool = counts[counts.index <= first + dt.timedelta(days=120)]
    late = list(
        counts[(counts.index >= counts.index[-1] - dt.timedelta(days=365)) & (counts >= 50)].index[-3:]
    )
    early = [(early_pool - counts[d]).abs().idxmin() for d in late]
    ingest_partition(settings, args.dataset, early[0])  # warm-up: GX import, caches
    timings: dict[dt.date, list[float]] = {d: [] for d in early + late}
    for _ in range(args.repeats):
        for a, b in zip(early, late, strict=False):
            for day in (a, b):
                t0 = time.perf_counter()
                ingest_partition(settings, args.dataset, day)
                timings[day].append(time.perf_counter() - t0)
    print(f"dataset={args.dataset} history={len(inter):,} ratings {counts.index[0]}..{counts.index[-1]}")
    print(f"{'day':<12} {'rows':>5} {'prior ratings':>14} {'median s':>9}")
    for day in early + late:
        prior = int((inter["timestamp"] < pd.Timestamp(day, tz="UTC").timestamp()).sum())
        print(f"{day!s:<12} {counts[day]:>5} {prior:>14,} {statistics.median(timings[day]):>9.3f}")
    ratios = [
        statistics.median(timings[b]) / statistics.median(timings[a])
        for a, b in zip(early, late, strict=True)
    ]
    print("late/early per pair: " + ", ".join(f"{r:.2f}" for r in ratios) + f"; worst {max(ratios):.2f}")


if __name__ == "__main__":
    main()
