"""A tiny synthetic dataset written in the shared artifact schemas, for tests and benchmarks.

Every artifact the recommender reads is published with ``storage.publish_table`` exactly where the
real stages put it (samples, items, item embeddings, the in-context pool, neighbours for both
tasks), so tests exercise the real assembly path without the LLM, encoder or Qdrant stages.

The world: each user likes one of ``n_groups`` item groups; a rating is positive when the item's
group is the user's (10% of labels flipped). Item text vectors cluster by group; a CoT vector
points towards the item's group with the sign of the label, so CoTs carry label information the
ICT can learn from. Neighbours are exact: label-balanced top 2 + 2 among strictly earlier pool
examples (0.5 history + 0.5 target cosine for ranking, history only for next item), shuffled.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmcf_core import storage
from llmcf_core.data.samples import SAMPLES_SCHEMA
from llmcf_core.layout import CotVersion, DataPaths, RetrievalPaths, day_bounds, write_current

FIRST_DAY = dt.date(2024, 1, 1)
SYNTH_COT_VERSION = "synth-cot__v1"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _vec_array(m: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1).astype(np.float32)), m.shape[1])


def write_synthetic_dataset(
    home: Path,
    dataset: str = "synth",
    *,
    n_users: int = 24,
    n_items: int = 30,
    n_groups: int = 3,
    dim: int = 16,
    days: tuple[int, int, int] = (4, 1, 1),  # train, valid, test days
    per_user_per_day: int = 2,
    history_len: int = 8,
    k: int = 4,
    embedder: str = "synth-enc",
    seed: int = 0,
    users: bool = False,
    cot_version: str = SYNTH_COT_VERSION,
) -> dict[str, object]:
    """Publish samples, items, embeddings, pool and neighbours; returns a small summary. The pool
    and neighbours are CoT version ``cot_version``'s, and ``cot/CURRENT`` names it (promoted).

    ``users``: also a users table (age_group, gender at random; the occupation names the user's
    group, so it carries what the user id does, for cold users too)."""
    rng = np.random.default_rng(seed)
    paths = DataPaths(home, dataset)
    rpaths = RetrievalPaths(home, dataset, embedder)
    version = CotVersion.parse(cot_version)
    user_group = rng.integers(0, n_groups, n_users + 1)
    item_group = rng.integers(0, n_groups, n_items + 1)
    centroids = _unit(rng.normal(size=(n_groups, dim)))
    item_vec = _unit(centroids[item_group] + 0.5 * rng.normal(size=(n_items + 1, dim)))
    genre_names = [f"g{i}" for i in range(n_groups)]

    items = pa.table(
        {
            "item_id": pa.array(np.arange(1, n_items + 1), pa.int64()),
            "title": [f"Item {i}" for i in range(1, n_items + 1)],
            "year": pa.array([2000 + i % 20 for i in range(1, n_items + 1)], pa.int64()),
            "genres": [[genre_names[item_group[i]]] for i in range(1, n_items + 1)],
            "text": [f"title: Item {i}; genres: {genre_names[item_group[i]]}" for i in range(1, n_items + 1)],
        }
    )
    storage.publish_table(items, paths.items, {"dataset": dataset})
    if users:
        ages = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
        storage.publish_table(
            pa.table(
                {
                    "user_id": pa.array(np.arange(1, n_users + 1), pa.int64()),
                    "age_group": [ages[i] for i in rng.integers(0, len(ages), n_users)],
                    "gender": [("M", "F")[i] for i in rng.integers(0, 2, n_users)],
                    "occupation": [f"occ{user_group[u]}" for u in range(1, n_users + 1)],
                }
            ),
            paths.users,
            {"dataset": dataset},
        )
    storage.publish_table(
        pa.table(
            {"item_id": pa.array(np.arange(1, n_items + 1), pa.int64()), "vector": _vec_array(item_vec[1:])}
        ),
        paths.item_vectors(embedder),
        {"dataset": dataset, "embedder": embedder},
    )

    # Samples, day by day; each user's history is what they rated before.
    split_of_day = ["train"] * days[0] + ["valid"] * days[1] + ["test"] * days[2]
    history: dict[int, list[tuple[int, int, int]]] = {u: [] for u in range(1, n_users + 1)}
    rows: list[dict] = []
    for d, split in enumerate(split_of_day):
        day = FIRST_DAY + dt.timedelta(days=d)
        start, _ = day_bounds(day)
        for u in range(1, n_users + 1):
            seen = {i for i, _, _ in history[u]}
            choices = [i for i in range(1, n_items + 1) if i not in seen]
            for j, i in enumerate(
                rng.choice(choices, size=min(per_user_per_day, len(choices)), replace=False)
            ):
                ts = start + 60 * u + j
                label = int(item_group[i] == user_group[u]) ^ int(rng.random() < 0.1)
                past = history[u][-history_len:]
                rows.append(
                    {
                        "sample_id": f"{u}-{i}-{ts}",
                        "user_id": u,
                        "item_id": int(i),
                        "timestamp": ts,
                        "rating": 5.0 if label else 2.0,
                        "label": label,
                        "history_item_ids": [p[0] for p in past],
                        "history_timestamps": [p[1] for p in past],
                        "history_labels": [p[2] for p in past],
                        "split": split,
                        "dt": day.isoformat(),
                    }
                )
                history[u].append((int(i), ts, label))

    schema = SAMPLES_SCHEMA

    all_rows = pa.Table.from_pylist(rows, schema=schema)
    hist_vec = _unit(
        np.stack(
            [
                item_vec[r["history_item_ids"]].mean(0) if r["history_item_ids"] else np.zeros(dim)
                for r in rows
            ]
        )
    )
    target_vec = item_vec[[r["item_id"] for r in rows]]
    labels = np.array([r["label"] for r in rows])
    cot_vec = _unit(
        centroids[item_group[[r["item_id"] for r in rows]]] * np.where(labels == 1, 1.0, -1.0)[:, None]
        + 0.3 * rng.normal(size=(len(rows), dim))
    )
    ts = np.array([r["timestamp"] for r in rows])
    users = np.array([r["user_id"] for r in rows])
    ids = np.array([r["sample_id"] for r in rows])
    in_pool = np.array([r["split"] == "train" for r in rows])

    for d, _split in enumerate(split_of_day):
        day = FIRST_DAY + dt.timedelta(days=d)
        mask = np.array([r["dt"] == day.isoformat() for r in rows])
        meta = {"dataset": dataset, "partition": day.isoformat(), "checks": {"success": True}}
        storage.publish_table(all_rows.filter(pa.array(mask)), paths.samples(day), meta)
        pool_mask = mask & in_pool
        pool = pa.table(
            {
                "sample_id": ids[pool_mask],
                "user_id": pa.array(users[pool_mask], pa.int64()),
                "timestamp": pa.array(ts[pool_mask], pa.int64()),
                "label": pa.array(labels[pool_mask], pa.int8()),
                "history_vec": _vec_array(hist_vec[pool_mask]),
                "target_vec": _vec_array(target_vec[pool_mask]),
                "cot_vec": _vec_array(cot_vec[pool_mask]),
            }
        )
        storage.publish_table(pool, rpaths.pool(day, version), meta)
        for task, w_target in (("ctr", 0.5), ("next_item", 0.0)):
            table = _neighbors(
                np.flatnonzero(mask), in_pool, ts, labels, ids, hist_vec, target_vec, w_target, k, rng
            )
            storage.publish_table(table, rpaths.neighbors(day, task, version), meta)
    write_current(paths, version.model_version, version.prompt_version)
    return {"rows": len(rows), "pool": int(in_pool.sum()), "embedder": embedder, "days": len(split_of_day)}


def _neighbors(
    queries: np.ndarray,
    in_pool: np.ndarray,
    ts: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    hist_vec: np.ndarray,
    target_vec: np.ndarray,
    w_target: float,
    k: int,
    rng: np.random.Generator,
) -> pa.Table:
    out: dict[str, list] = {
        "sample_id": [],
        "neighbor_ids": [],
        "neighbor_labels": [],
        "neighbor_scores": [],
        "neighbor_padded": [],
        "n_padded": [],
    }
    for q in queries:
        sim = (1 - w_target) * hist_vec @ hist_vec[q] + w_target * target_vec @ target_vec[q]
        picked: list[tuple[str, int, float]] = []
        for lab in (1, 0):
            cand = np.flatnonzero(in_pool & (ts < ts[q]) & (labels == lab))
            best = cand[np.argsort(-sim[cand], kind="stable")[: k // 2]]
            picked += [(str(ids[j]), lab, float(sim[j])) for j in best]
        rng.shuffle(picked)
        pad = k - len(picked)
        out["sample_id"].append(str(ids[q]))
        out["neighbor_ids"].append([p[0] for p in picked] + [""] * pad)
        out["neighbor_labels"].append([p[1] for p in picked] + [0] * pad)
        out["neighbor_scores"].append([p[2] for p in picked] + [0.0] * pad)
        out["neighbor_padded"].append([False] * len(picked) + [True] * pad)
        out["n_padded"].append(pad)
    return pa.table(
        {
            "sample_id": pa.array(out["sample_id"], pa.string()),
            "neighbor_ids": pa.array(out["neighbor_ids"], pa.list_(pa.string())),
            "neighbor_labels": pa.array(out["neighbor_labels"], pa.list_(pa.int8())),
            "neighbor_scores": pa.array(out["neighbor_scores"], pa.list_(pa.float32())),
            "neighbor_padded": pa.array(out["neighbor_padded"], pa.list_(pa.bool_())),
            "n_padded": pa.array(out["n_padded"], pa.int8()),
        }
    )
