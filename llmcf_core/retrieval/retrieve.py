"""Stage ``retrieve``: K label-balanced, leakage-safe in-context examples for a day's samples.

For every sample of the partition (all splits): the exact top ``k/2`` positives and ``k/2``
negatives among pool examples strictly earlier than the sample (``search.exact_search`` over
the published pool partitions up to the day, which mirror the live Qdrant collection). Before
publishing ``<ds>/neighbors/dt=D/`` (``neighbors_next_item`` for ``task="next_item"``):

1. suite ``neighbors`` re-verifies every leakage rule and the padding from the output;
2. suite ``retrieval_agreement``: a sample of queries is re-solved by a plain numpy brute force
   (recall must be 1) and asked of Qdrant's live collection (recall >= ``qdrant.min_recall``),
   and Qdrant's point count before the day's end must equal the pool rows used.

Failures quarantine the failing rows under ``<ds>/quarantine/neighbors/dt=D/`` and raise.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np

from llmcf_core import storage
from llmcf_core.config import Settings
from llmcf_core.layout import NEIGHBORS, TASKS, InvalidArgument, RetrievalPaths, day_bounds
from llmcf_core.quality.publish import publish_checked, reject
from llmcf_core.retrieval import checks
from llmcf_core.retrieval.embed import ensure_item_vectors, sample_vectors
from llmcf_core.retrieval.pool import PoolIndex, load_pool
from llmcf_core.retrieval.search import (
    LABELS,
    SearchResult,
    brute_force,
    exact_search,
    neighbors_table,
    query_vectors,
)
from llmcf_core.retrieval.spec import PoolSpec
from llmcf_core.retrieval.store import QdrantStore, joint_vectors
from llmcf_core.retrieval.upsert import current_spec

log = logging.getLogger(__name__)


def retrieve_partition(
    settings: Settings,
    dataset: str,
    day: dt.date,
    *,
    task: str = "ctr",
    cot_version: str | None = None,
    verify_store: bool = True,
) -> dict[str, Any]:
    """Retrieve, verify and publish the examples of ``day``'s samples; returns the job summary."""
    if task not in TASKS:
        raise InvalidArgument(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    cfg = settings.retrieval
    spec = current_spec(settings, dataset, cot_version)
    paths = RetrievalPaths(settings.home, dataset, spec.embedder)
    samples_dir = paths.data.samples(day)
    if not storage.is_published(samples_dir):
        raise InvalidArgument(f"no published samples partition {samples_dir}: run jobs.ingest first")

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    samples = storage.read_partition(
        samples_dir, columns=["sample_id", "user_id", "item_id", "timestamp", "history_item_ids"]
    ).to_pandas()
    items = ensure_item_vectors(settings, dataset)
    history, target = sample_vectors(
        items, samples["item_id"].astype("int64"), list(samples["history_item_ids"])
    )
    loaded = load_pool(settings, spec, until=day)
    pool = loaded.index
    queries = checks.Queries(
        sample_ids=samples["sample_id"].to_numpy(dtype=object),
        user_ids=samples["user_id"].to_numpy(dtype=np.int64),
        timestamps=samples["timestamp"].to_numpy(dtype=np.int64),
        vectors=query_vectors(history, target, task),
    )
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = exact_search(
        pool,
        history,
        target,
        queries.timestamps,
        task=task,
        per_label=cfg.k // 2,
        block=cfg.query_block,
        threads=cfg.threads,
    )
    table = neighbors_table(pool, result, queries.sample_ids.tolist(), shuffle=cfg.shuffle)
    timings["search_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frame = table.to_pandas()
    report, facts = checks.check_neighbors(
        frame,
        queries=queries,
        pool=pool,
        k=cfg.k,
        dataset=dataset,
        day=day,
        max_padded_share=cfg.max_padded_share,
        padded_share_min_pool=cfg.padded_share_min_pool,
    )
    metrics = _verify_exact(pool, queries, result, cfg.k // 2, cfg.verify_exact_queries, seed=day.toordinal())
    collection = None
    if verify_store:
        collection, store_metrics = _verify_store(settings, spec, pool, queries, result, task, day)
        metrics += store_metrics
    agreement = checks.check_metrics(
        metrics, suite="retrieval_agreement", dataset=dataset, partition=day.isoformat()
    )
    timings["checks_s"] = time.perf_counter() - t0

    folder = paths.neighbors(day, task, spec.cot)
    quarantine = paths.data.quarantine(NEIGHBORS[task], day)
    if not (report.success and agreement.success):
        reject(
            frame if not report.success else None,
            report if not report.success else agreement,
            quarantine,
            limit=settings.quality.quarantine_max_rows,
            reports={"neighbors": report.to_dict(), "agreement": agreement.to_dict()},
        )

    published = publish_checked(
        table,
        folder,
        report,
        {
            "dataset": dataset,
            "partition": day.isoformat(),
            "agreement": agreement.to_dict(),
            "task": task,
            "k": cfg.k,
            "spec": spec.to_dict(),
            "collection": collection,
            "pool_days": len(loaded.days),
            "pool_days_skipped": loaded.skipped,
            **facts,
        },
        clear=[quarantine],
    )
    n = len(samples)
    return {
        "dataset": dataset,
        "partition": day.isoformat(),
        "task": task,
        "cot_version": spec.cot.folder,
        "path": str(published.path),
        "rows": published.rows,
        "changed": published.changed,
        "collection": collection,
        "pool_days_skipped": sorted(loaded.skipped),
        "samples_per_s": round(n / timings["search_s"], 1) if n and timings["search_s"] > 0 else None,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "metrics": {m["metric"]: m["observed"] for m in _metric_rows(metrics)},
        **facts,
    }


def _metric_rows(metrics: list[checks.Metric]) -> list[dict[str, Any]]:
    return [{"metric": m.name, "observed": m.observed} for m in metrics]


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if size <= 0 or n == 0:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def _recall(found: list[tuple[str, float]], expected: list[tuple[str, float]]) -> tuple[int, int]:
    """Hits of ``found`` in ``expected``; an answer tied in score with the last expected one counts."""
    if not expected:
        return (0, 0) if not found else (0, len(found))
    ids = {s for s, _ in expected}
    floor = min(score for _, score in expected)
    hits = sum(1 for s, score in found if s in ids or abs(score - floor) <= checks.SCORE_TOL)
    return min(hits, len(expected)), max(len(expected), len(found))


def _expected(
    pool: PoolIndex, result: SearchResult, i: int, slot0: int, per_label: int
) -> list[tuple[str, float]]:
    rows = result.rows[i, slot0 : slot0 + per_label]
    return [
        (str(pool.sample_ids[r]), float(s))
        for r, s in zip(rows, result.scores[i, slot0 : slot0 + per_label], strict=True)
        if r >= 0
    ]


def _verify_exact(
    pool: PoolIndex, queries: checks.Queries, result: SearchResult, per_label: int, size: int, seed: int
) -> list[checks.Metric]:
    """Recall of the search against a plain brute force on a sample of queries (must be 1)."""
    hits = total = 0
    joint = joint_vectors(pool.history, pool.target)
    for i in _sample(len(queries.sample_ids), size, seed):
        for slot0, label in zip((0, per_label), LABELS, strict=True):
            rows, scores = brute_force(
                pool,
                queries.vectors[i],
                int(queries.timestamps[i]),
                int(queries.user_ids[i]),
                str(queries.sample_ids[i]),
                label=label,
                per_label=per_label,
                joint=joint,
            )
            reference = [(str(pool.sample_ids[r]), s) for r, s in zip(rows, scores, strict=True)]
            h, t = _recall(_expected(pool, result, i, slot0, per_label), reference)
            hits, total = hits + h, total + t
    return [checks.at_least("recall_vs_brute_force", hits / total if total else 1.0, 1.0)]


def _verify_store(
    settings: Settings,
    spec: PoolSpec,
    pool: PoolIndex,
    queries: checks.Queries,
    result: SearchResult,
    task: str,
    day: dt.date,
) -> tuple[str | None, list[checks.Metric]]:
    """The CoT version's collection (the one embed_upsert loaded) must hold the same pool and give
    the same answers."""
    qcfg = settings.qdrant
    per_label = settings.retrieval.k // 2
    _, day_end = day_bounds(day)
    with QdrantStore.open(qcfg, settings.home, owner=f"retrieve {spec.dataset} {day}") as store:
        name = store.collection_of(spec)
        if name is None:
            ok = len(pool) == 0
            return None, [checks.Metric("version_collection", float(ok), "exists (pool is not empty)", ok)]
        metrics = [
            checks.equal("points_before_partition_end", store.count(name, before_ts=day_end), len(pool)),
        ]
        hits = total = 0
        d = spec.dim
        for i in _sample(len(queries.sample_ids), qcfg.verify_queries, seed=day.toordinal() + 1):
            q = queries.vectors[i]
            vector, using = (q, "joint") if task == "ctr" else (q[:d] / np.float32(np.sqrt(2.0)), "history")
            for slot0, label in zip((0, per_label), LABELS, strict=True):
                found = store.query(
                    name,
                    vector,
                    using=using,
                    label=label,
                    before_ts=int(queries.timestamps[i]),
                    user_id=int(queries.user_ids[i]),
                    exclude_sample_id=str(queries.sample_ids[i]),
                    dataset=spec.dataset,
                    limit=per_label,
                )
                h, t = _recall(
                    [(x.sample_id, x.score) for x in found], _expected(pool, result, i, slot0, per_label)
                )
                hits, total = hits + h, total + t
        metrics.append(checks.at_least("qdrant_recall", hits / total if total else 1.0, qcfg.min_recall))
    return name, metrics
