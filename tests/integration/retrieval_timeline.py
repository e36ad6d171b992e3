"""A tiny dataset for the retrieval tests: real samples from ``jobs.ingest`` plus hand-built CoTs.

Three days (2024-05-01 .. 03), five users, eight items, ~30 ratings; every sample of a day gets a
CoT row in ``cot/dt=D/<model>__<prompt>/`` (one of them failed), published with
``storage.publish_table`` exactly as the CoT stage does, and ``cot/CURRENT`` names the version.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa

from llmcf_core import storage
from llmcf_core.layout import DataPaths, day_bounds

DATASET = "tiny"
DAYS = [dt.date(2024, 5, 1), dt.date(2024, 5, 2), dt.date(2024, 5, 3)]
ITEMS = [
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "GoldenEye (1995)", "Action|Adventure|Thriller"),
    (3, "Heat (1995)", "Action|Crime|Thriller"),
    (4, "Sense and Sensibility (1995)", "Drama|Romance"),
    (5, "Babe (1995)", "Children's|Comedy|Drama"),
    (6, "Casino (1995)", "Drama|Thriller"),
    (7, "Jumanji (1995)", "Adventure|Children's|Fantasy"),
    (8, "Sabrina (1995)", "Comedy|Romance"),
]
# (user, item, rating, day index, second of the day)
RATINGS = [
    (1, 1, 5, 0, 100), (1, 2, 2, 0, 200), (2, 3, 4, 0, 150), (2, 4, 1, 0, 400), (3, 5, 5, 0, 500),
    (3, 1, 3, 0, 600), (4, 6, 4, 0, 700), (5, 7, 2, 0, 800), (4, 2, 5, 0, 900), (5, 8, 4, 0, 950),
    (1, 3, 4, 1, 100), (2, 5, 2, 1, 200), (3, 6, 5, 1, 300), (4, 7, 1, 1, 400), (5, 1, 5, 1, 500),
    (1, 4, 2, 1, 600), (2, 6, 5, 1, 700), (3, 8, 1, 1, 800), (4, 8, 4, 1, 900), (5, 2, 3, 1, 950),
    (1, 5, 5, 2, 100), (2, 7, 4, 2, 200), (3, 2, 2, 2, 300), (4, 3, 5, 2, 400), (5, 4, 1, 2, 500),
    (1, 6, 3, 2, 600), (2, 8, 5, 2, 700), (3, 3, 4, 2, 800), (4, 1, 2, 2, 900), (5, 6, 5, 2, 950),
]  # fmt: skip
MODEL, PROMPT = "smollm2-135m", "v1-lc"


def write_logs(folder: Path) -> list[str]:
    """The dataset as CSV files; returns the jobs.ingest flags."""
    inter = pd.DataFrame(
        [(u, i, r, day_bounds(DAYS[d])[0] + s) for u, i, r, d, s in RATINGS],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    items = pd.DataFrame(ITEMS, columns=["item_id", "title", "genres"])
    folder.mkdir(parents=True, exist_ok=True)
    inter.to_csv(folder / "interactions.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return ["--interactions", str(folder / "interactions.csv"), "--items", str(folder / "items.csv")]


def cot_text(row: dict) -> str:
    verdict = "purchases" if row["label"] == 1 else "does not purchase"
    return (
        f"User {row['user_id']} has a history of {len(row['history_item_ids'])} films. "
        f"The target item {row['item_id']} matches their taste in part. The user {verdict} the target item."
    )


def publish_cot(
    home: Path,
    day: dt.date,
    model: str = MODEL,
    prompt: str = PROMPT,
    *,
    fail: set[str] = frozenset(),
    label_flip: set[str] = frozenset(),
) -> int:
    """One CoT row per sample of the day (``fail``: rows recorded as failed); returns rows."""
    paths = DataPaths(home, DATASET)
    samples = storage.read_partition(paths.samples(day)).to_pylist()
    rows = []
    for s in samples:
        failed = s["sample_id"] in fail
        rows.append(
            {
                "sample_id": s["sample_id"],
                "label": (1 - s["label"]) if s["sample_id"] in label_flip else s["label"],
                "cot_text": None if failed else f"[{model}/{prompt}] " + cot_text(s),
                "model_version": model,
                "prompt_version": prompt,
                "n_tokens": 0 if failed else 40,
                "finish_reason": "error" if failed else "stop",
                "score": None,
                "error": "generation failed" if failed else None,
            }
        )
    schema = pa.schema(
        [
            ("sample_id", pa.string()),
            ("label", pa.int8()),
            ("cot_text", pa.string()),
            ("model_version", pa.string()),
            ("prompt_version", pa.string()),
            ("n_tokens", pa.int32()),
            ("finish_reason", pa.string()),
            ("score", pa.float32()),
            ("error", pa.string()),
        ]
    )
    folder = paths.partition("cot", day) / f"{model}__{prompt}"
    storage.publish_table(
        pa.Table.from_pylist(rows, schema=schema), folder, {"dataset": DATASET, "partition": day.isoformat()}
    )
    return len(rows)


def set_current(home: Path, model: str = MODEL, prompt: str = PROMPT) -> None:
    root = DataPaths(home, DATASET).artifact("cot")
    root.mkdir(parents=True, exist_ok=True)
    (root / "CURRENT").write_text(json.dumps({"model_version": model, "prompt_version": prompt}))


def sample_ids(home: Path, day: dt.date) -> list[str]:
    return storage.read_partition(DataPaths(home, DATASET).samples(day)).column("sample_id").to_pylist()
