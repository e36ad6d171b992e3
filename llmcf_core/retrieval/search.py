"""Exact, batched, leakage-safe K-nearest-example search over a pool (no I/O).

Score of pool example j for query i (task ``ctr``): 0.5 cos(h_i, h_j) + 0.5 cos(t_i, t_j),
computed as one dot product of the single vectors q_i = [h_i; t_i]/sqrt(2) and
p_j = [h_j; t_j]/sqrt(2). Task ``next_item`` (target unknown) uses q_i = [sqrt(2) h_i; 0], so the
score is cos(h_i, h_j) against the same pool vectors.

Leakage rules: an example must be strictly earlier than the query (timestamp), which also
excludes the query itself and every later sample of the same user. With the pool sorted by
timestamp, the allowed examples of query i are a prefix of each label's rows, so a block of
queries (sorted by that prefix length) is one matmul against the longest prefix plus a mask on
the band where the prefixes differ. Per label the top ``per_label`` by score are kept (K =
2 * per_label: label-balanced); missing ones are padding (row -1).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from llmcf_core.retrieval.pool import PoolIndex
from llmcf_core.retrieval.store import joint_vectors

LABELS = (1, 0)  # slot order before shuffling: positives, then negatives


def query_vectors(history: np.ndarray, target: np.ndarray, task: str) -> np.ndarray:
    """Query vectors in the joint space of the pool: (m, 2d)."""
    if task == "ctr":
        return joint_vectors(history, target)
    if task == "next_item":
        scaled = history.astype(np.float32) * np.float32(math.sqrt(2.0))
        return np.concatenate([scaled, np.zeros_like(target, dtype=np.float32)], axis=1)
    raise ValueError(f"unknown task {task!r}")


@dataclass(frozen=True)
class SearchResult:
    """Per query, ``k = 2 * per_label`` slots: positives then negatives, best first."""

    rows: np.ndarray  # (m, k) int64: pool row, -1 = padding
    scores: np.ndarray  # (m, k) float32: 0 for padding

    @property
    def padded(self) -> np.ndarray:
        return self.rows < 0


def exact_search(
    pool: PoolIndex,
    history: np.ndarray,
    target: np.ndarray,
    query_timestamps: np.ndarray,
    *,
    task: str = "ctr",
    per_label: int = 2,
    block: int = 1024,
    threads: int | None = None,
) -> SearchResult:
    """Top ``per_label`` examples of each label, strictly earlier than each query.

    ``history`` / ``target``: the queries' unit vectors (m, d). The score is computed as
    0.5 h.h_j + 0.5 t.t_j (``ctr``) or h.h_j (``next_item``), the same numbers as the joint dot
    product. The target part is a product with the pool's *distinct* target vectors (one per
    item, far fewer than pool rows) gathered back per row, which halves the work of a joint
    matmul.
    """
    import torch

    if task not in ("ctr", "next_item"):
        raise ValueError(f"unknown task {task!r}")
    if threads:
        torch.set_num_threads(threads)
    m = len(history)
    k = 2 * per_label
    rows = np.full((m, k), -1, dtype=np.int64)
    scores = np.zeros((m, k), dtype=np.float32)
    q_ts = np.asarray(query_timestamps, dtype=np.int64)
    # Queries in time order: every label's allowed prefix grows with it, so blocks are contiguous.
    by_time = np.argsort(q_ts, kind="stable")
    q_ts = q_ts[by_time]
    half = 0.5 if task == "ctr" else 1.0
    q_hist = torch.from_numpy(np.ascontiguousarray(history[by_time] * np.float32(half), dtype=np.float32))
    q_targ = torch.from_numpy(np.ascontiguousarray(target[by_time] * np.float32(0.5), dtype=np.float32))

    for slot0, label in zip((0, per_label), LABELS, strict=True):
        of_label = np.flatnonzero(pool.labels == label)  # sorted by timestamp, as the pool is
        if len(of_label) == 0:
            continue
        p_hist = torch.from_numpy(np.ascontiguousarray(pool.history[of_label]))
        distinct, which = np.unique(pool.target[of_label], axis=0, return_inverse=True)
        p_targ, which = torch.from_numpy(np.ascontiguousarray(distinct)), torch.from_numpy(which.reshape(-1))
        allowed = np.searchsorted(pool.timestamps[of_label], q_ts, side="left")  # prefix length
        for start in range(0, m, block):
            sl = slice(start, start + block)
            prefix = allowed[sl]
            hi, lo = int(prefix[-1]), int(prefix[0])  # non-decreasing
            if hi == 0:
                continue
            sims = q_hist[sl] @ p_hist[:hi].T  # (B, hi): 0.5 h.h_j (ctr) or h.h_j (next_item)
            if task == "ctr":  # + 0.5 t.t_j, from the distinct target vectors
                sims.add_(torch.index_select(q_targ[sl] @ p_targ.T, 1, which[:hi]))
            if lo < hi:  # the band where prefixes differ: mask what is not strictly earlier
                band = torch.arange(lo, hi).unsqueeze(0) >= torch.from_numpy(prefix).unsqueeze(1)
                sims[:, lo:hi].masked_fill_(band, float("-inf"))
            take = min(per_label, hi)
            top_val, top_pos = torch.topk(sims, take, dim=1)
            val, pos = top_val.numpy(), top_pos.numpy()
            ok = np.isfinite(val)
            qi = by_time[sl]
            rows[qi, slot0 : slot0 + take] = np.where(ok, of_label[pos], -1)
            scores[qi, slot0 : slot0 + take] = np.where(ok, val, 0.0)
    return SearchResult(rows, scores)


def brute_force(
    pool: PoolIndex,
    query: np.ndarray,
    query_ts: int,
    query_user: int,
    query_sample_id: str,
    *,
    label: int,
    per_label: int,
    joint: np.ndarray | None = None,
) -> tuple[list[int], list[float]]:
    """The plain reference for one query and label: scan everything, apply every rule, sort.

    ``query`` is in the joint space (``query_vectors``); ``joint`` may hold the pool's joint
    vectors when many queries are checked.
    """
    if joint is None:
        joint = joint_vectors(pool.history, pool.target)
    scores = joint.astype(np.float64) @ np.asarray(query, dtype=np.float64)
    ok = (
        (pool.labels == label)
        & (pool.timestamps < query_ts)
        & (pool.sample_ids != query_sample_id)
        & ~((pool.user_ids == query_user) & (pool.timestamps >= query_ts))
    )
    cand = np.flatnonzero(ok)
    best = cand[np.lexsort((cand, -scores[cand]))][:per_label]
    return best.tolist(), scores[best].astype(np.float32).tolist()


def _shuffle_keys(sample_ids: Sequence[str], k: int) -> np.ndarray:
    """Deterministic pseudo-random keys per (sample, slot): splitmix64 of crc32(sample_id)."""
    seeds = np.fromiter((zlib.crc32(s.encode()) for s in sample_ids), dtype=np.uint64, count=len(sample_ids))
    x = seeds[:, None] * np.uint64(64) + np.arange(k, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def slot_order(keys: Sequence[str], padded: np.ndarray, *, shuffle: bool) -> np.ndarray:
    """Per row, the slot order: real slots shuffled (deterministically by key) or kept, padding last."""
    if not shuffle:
        return np.argsort(padded, axis=1, kind="stable")
    rand = _shuffle_keys(keys, padded.shape[1])
    rand[padded] = np.iinfo(np.uint64).max
    return np.argsort(rand, axis=1, kind="stable")


def neighbors_table(
    pool: PoolIndex, result: SearchResult, sample_ids: Sequence[str], *, shuffle: bool = True
) -> pa.Table:
    """The neighbours artifact: K slots per sample, real examples (shuffled) first, padding last."""
    m, k = result.rows.shape
    order = slot_order(sample_ids, result.padded, shuffle=shuffle)
    rows = np.take_along_axis(result.rows, order, axis=1)
    scores = np.take_along_axis(result.scores, order, axis=1)
    is_pad = rows < 0
    safe = np.where(is_pad, 0, rows)
    ids = np.where(is_pad, "", pool.sample_ids[safe] if len(pool) else "").astype(object)
    labels = np.where(is_pad, 0, pool.labels[safe] if len(pool) else 0).astype(np.int8)
    offsets = pa.array(np.arange(0, (m + 1) * k, k, dtype=np.int32))

    def lists(values: np.ndarray, typ: pa.DataType) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), typ))

    return pa.table(
        {
            "sample_id": pa.array(list(sample_ids), pa.string()),
            "neighbor_ids": lists(ids, pa.string()),
            "neighbor_labels": lists(labels, pa.int8()),
            "neighbor_scores": lists(np.where(is_pad, 0, scores).astype(np.float32), pa.float32()),
            "neighbor_padded": lists(is_pad, pa.bool_()),
            "n_padded": pa.array(is_pad.sum(axis=1).astype(np.int8), pa.int8()),
        }
    )
