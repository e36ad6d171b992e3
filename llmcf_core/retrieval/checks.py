"""Data checks of the retrieval stages (GX Core through ``llmcf_core.quality.run_rules``).

Suites, each run before anything is published:
- ``item_vectors``: unique ids, dimension, unit norm, finite values.
- ``pool``: one day's CoT pool: every CoT row belongs to a sample of the day with the same
  label, timestamps inside the day, vector dimensions, unit norms (a zero history vector only for
  an empty history), finite values.
- ``neighbors``: the leakage rules verified from the output (never trusted from the search):
  every example exists in the pool, is strictly earlier than the sample, is not the sample, is
  not a later sample of the same user; labels and scores equal the pool's and the recomputed
  similarity; label balance; padding consistent and exactly where the pool lacks examples; the
  share of padded samples bounded once the pool is big enough.
- ``qdrant`` / ``retrieval_agreement``: facts about the store as named metrics (point counts
  against pool rows, recall of Qdrant's and a plain brute force's answers against the search).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmcf_core.layout import day_bounds
from llmcf_core.quality import CheckReport, Rule, run_rules

if TYPE_CHECKING:
    from llmcf_core.retrieval.embed import ItemVectors
    from llmcf_core.retrieval.pool import PoolIndex

NORM_TOL = 1e-3
SCORE_TOL = 1e-4


def _true(name: str, col: str, examples: tuple[str, ...] = ("sample_id",)) -> Rule:
    """A rule computed in numpy as a boolean column; GX counts and locates the False rows."""
    return Rule(
        name, "ExpectColumnValuesToBeInSet", {"column": col, "value_set": [True]}, examples_from=examples
    )


def _unique(col: str) -> Rule:
    return Rule(
        f"expect_column_values_to_be_unique({col})",
        "ExpectColumnValuesToBeUnique",
        {"column": col},
        requires=(col,),
        examples_from=(col,),
    )


def _exists(col: str) -> Rule:
    return Rule(f"expect_column_to_exist({col})", "ExpectColumnToExist", {"column": col})


def _vector_rules(
    derived: dict[str, np.ndarray], name: str, vectors: np.ndarray, dim: int, allowed_zero: np.ndarray
) -> list[Rule]:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1) if vectors.size else np.zeros(len(vectors))
    derived[f"_chk_{name}_dim"] = np.full(len(vectors), vectors.shape[1] if vectors.ndim == 2 else 0)
    derived[f"_chk_{name}_unit"] = (np.abs(norms - 1.0) <= NORM_TOL) | (allowed_zero & (norms == 0))
    derived[f"_chk_{name}_finite"] = (
        np.isfinite(vectors).all(axis=1) if vectors.size else np.ones(len(vectors), bool)
    )
    return [
        Rule(
            f"expect_vector_dimension({name} == {dim})",
            "ExpectColumnValuesToBeInSet",
            {"column": f"_chk_{name}_dim", "value_set": [dim]},
            examples_from=(f"_chk_{name}_dim",),
        ),
        _true(f"expect_vector_norm_to_be_1({name}, tol={NORM_TOL})", f"_chk_{name}_unit"),
        _true(f"expect_vector_values_to_be_finite({name})", f"_chk_{name}_finite"),
    ]


def check_item_vectors(items: ItemVectors, *, dataset: str, dim: int) -> CheckReport:
    frame = pd.DataFrame({"item_id": items.ids, "sample_id": items.ids})
    derived: dict[str, np.ndarray] = {}
    rules = [_unique("item_id")]
    rules += _vector_rules(derived, "vector", items.vectors, dim, np.zeros(len(items.ids), bool))
    return run_rules(frame, rules, derived=derived, suite="item_vectors", dataset=dataset)


def check_pool(
    frame: pd.DataFrame,
    vectors: dict[str, np.ndarray],
    *,
    history_len: np.ndarray,
    in_samples: np.ndarray,
    dataset: str,
    day: dt.date,
    dim: int,
) -> CheckReport:
    """Suite ``pool``: ``frame`` is the day's usable CoT rows left-joined to the day's samples."""
    start, end = day_bounds(day)
    frame = frame.reset_index(drop=True)
    n = len(frame)
    derived: dict[str, np.ndarray] = {"_chk_in_samples": np.asarray(in_samples, bool)}
    with np.errstate(invalid="ignore"):
        label = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype=float)
        cot_label = pd.to_numeric(frame["cot_label"], errors="coerce").to_numpy(dtype=float)
        derived["_chk_label_matches_cot"] = ~in_samples | (label == cot_label)
        derived["_chk_label_num"] = label
        ts = pd.to_numeric(frame["timestamp"], errors="coerce").to_numpy(dtype=float)
    derived["_chk_timestamp_num"] = ts
    rules = [*(_exists(c) for c in ("sample_id", "cot_text", "cot_label")), _unique("sample_id")]
    rules += [
        _true("expect_cot_rows_to_be_samples_of_the_day(sample_id in samples)", "_chk_in_samples"),
        _true("expect_cot_label_to_equal_sample_label", "_chk_label_matches_cot"),
        Rule(
            "expect_column_values_to_be_in_set(label, [0, 1])",
            "ExpectColumnValuesToBeInSet",
            {"column": "_chk_label_num", "value_set": [0, 1]},
            examples_from=("sample_id",),
        ),
        Rule(
            f"expect_column_values_to_be_between(timestamp, min={start}, max={end}, strict_max)",
            "ExpectColumnValuesToBeBetween",
            {"column": "_chk_timestamp_num", "min_value": start, "max_value": end, "strict_max": True},
            examples_from=("sample_id",),
        ),
    ]
    # Zero vectors are right for an empty history, and for rows missing from the samples (those
    # are reported once, by the in-samples rule).
    missing = ~np.asarray(in_samples, bool)
    zero_ok = {
        "history_vec": missing | (np.asarray(history_len) == 0),
        "target_vec": missing,
        "cot_vec": np.zeros(n, bool),
    }
    for name, matrix in vectors.items():
        rules += _vector_rules(derived, name, matrix, dim, zero_ok[name])
    return run_rules(frame, rules, derived=derived, suite="pool", dataset=dataset, partition=day.isoformat())


# --------------------------------------------------------------------------------------------
# Neighbours: leakage verification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queries:
    """The partition's samples as retrieval queries (aligned with the neighbours table)."""

    sample_ids: np.ndarray  # (m,) object
    user_ids: np.ndarray  # (m,) int64
    timestamps: np.ndarray  # (m,) int64
    vectors: np.ndarray  # (m, 2d) float32 in the pool's joint space


def _list_matrix(column: pd.Series, k: int, fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """(m, k) matrix of a list column and a per-row 'has exactly k entries' flag."""
    lengths = np.fromiter(
        (len(v) if v is not None else -1 for v in column), dtype=np.int64, count=len(column)
    )
    ok = lengths == k
    out = np.full((len(column), k), fill, dtype=object)
    for i in np.flatnonzero(ok):
        out[i] = list(column.iloc[i])
    return out, ok


def check_neighbors(
    df: pd.DataFrame,
    *,
    queries: Queries,
    pool: PoolIndex,
    k: int,
    dataset: str,
    day: dt.date,
    max_padded_share: float,
    padded_share_min_pool: int,
) -> tuple[CheckReport, dict[str, Any]]:
    """Suite ``neighbors``; returns the report and observed facts (padded share, pool size)."""
    from llmcf_core.retrieval.store import joint_vectors

    frame = df.reset_index(drop=True)
    m, per_label = len(frame), k // 2
    ids, len_ok = _list_matrix(frame["neighbor_ids"], k, "")
    labels, ok_l = _list_matrix(frame["neighbor_labels"], k, 0)
    scores, ok_s = _list_matrix(frame["neighbor_scores"], k, 0.0)
    padded, ok_p = _list_matrix(frame["neighbor_padded"], k, True)
    labels, scores, padded = labels.astype(np.int64), scores.astype(np.float64), padded.astype(bool)

    row_of = {s: i for i, s in enumerate(pool.sample_ids.tolist())}
    rows = np.array([[row_of.get(s, -1) for s in r] for r in ids], dtype=np.int64).reshape(m, k)
    real = ~padded
    found = rows >= 0
    safe = np.where(found, rows, 0)
    has_pool = len(pool) > 0
    p_ts = pool.timestamps[safe] if has_pool else np.zeros((m, k), np.int64)
    p_user = pool.user_ids[safe] if has_pool else np.zeros((m, k), np.int64)
    p_label = pool.labels[safe].astype(np.int64) if has_pool else np.zeros((m, k), np.int64)
    q_ts, q_user = queries.timestamps[:, None], queries.user_ids[:, None]

    recomputed = np.zeros((m, k))
    if has_pool and m:
        joint = joint_vectors(pool.history, pool.target).astype(np.float64)
        for j in range(k):
            recomputed[:, j] = np.einsum("id,id->i", joint[safe[:, j]], queries.vectors.astype(np.float64))

    # Examples each sample could have had: pool rows of a label strictly earlier than it.
    need = np.zeros(m, np.int64)
    for label in (0, 1):
        ts_l = pool.timestamps[pool.labels == label]
        eligible = np.searchsorted(np.sort(ts_l), queries.timestamps, side="left")
        need += np.maximum(0, per_label - eligible)

    def over_real(ok: np.ndarray) -> np.ndarray:
        return (ok | ~real).all(axis=1)

    n_padded = pd.to_numeric(frame["n_padded"], errors="coerce").to_numpy()
    pos = (real & (labels == 1)).sum(axis=1)
    neg = (real & (labels == 0)).sum(axis=1)
    uniq = np.array([len(set(r[m_])) == int(m_.sum()) for r, m_ in zip(ids, real, strict=True)], dtype=bool)
    derived = {
        "_chk_lists_have_k": len_ok & ok_l & ok_s & ok_p,
        "_chk_padding_consistent": (padded == (ids == "")).all(axis=1)
        & (n_padded == padded.sum(axis=1))
        & ((labels == 0) | real).all(axis=1)
        & ((scores == 0) | real).all(axis=1),
        "_chk_in_pool": over_real(found),
        "_chk_earlier": over_real(found & (p_ts < q_ts)),
        "_chk_not_self": over_real(ids != queries.sample_ids[:, None]),
        "_chk_same_user_not_later": over_real(~((p_user == q_user) & (p_ts >= q_ts))),
        "_chk_label_matches_pool": over_real(found & (labels == p_label)),
        "_chk_score_matches": over_real(np.abs(scores - recomputed) <= SCORE_TOL),
        "_chk_balanced": (pos <= per_label) & (neg <= per_label),
        "_chk_unique": uniq,
        "_chk_padding_needed": n_padded == need,
        "_chk_sample_matches_query": frame["sample_id"].to_numpy(dtype=object) == queries.sample_ids,
    }
    start, _ = day_bounds(day)
    pool_before = int((pool.timestamps < start).sum())
    share = float((n_padded > 0).mean()) if m else 0.0
    rules = [
        Rule(
            f"expect_table_row_count_to_equal(samples of the day = {len(queries.sample_ids)})",
            "ExpectTableRowCountToEqual",
            {"value": len(queries.sample_ids)},
            detail="{observed} rows",
        ),
        _unique("sample_id"),
        _true(f"expect_neighbor_lists_to_have_k_entries(k={k})", "_chk_lists_have_k"),
        _true("expect_padding_flags_ids_labels_scores_and_n_padded_to_agree", "_chk_padding_consistent"),
        _true("expect_neighbors_to_be_pool_examples", "_chk_in_pool"),
        _true("expect_neighbors_strictly_earlier_than_sample (leakage)", "_chk_earlier"),
        _true("expect_neighbors_not_the_sample_itself (leakage)", "_chk_not_self"),
        _true("expect_no_neighbor_from_same_user_at_a_later_position (leakage)", "_chk_same_user_not_later"),
        _true("expect_neighbor_labels_to_equal_pool_labels", "_chk_label_matches_pool"),
        _true(
            f"expect_neighbor_scores_to_equal_recomputed_similarity(tol={SCORE_TOL})", "_chk_score_matches"
        ),
        _true(f"expect_label_balance(<= {per_label} per label)", "_chk_balanced"),
        _true("expect_neighbors_unique_per_sample", "_chk_unique"),
        _true("expect_padding_only_where_the_pool_lacks_examples", "_chk_padding_needed"),
        _true("expect_rows_in_samples_order", "_chk_sample_matches_query"),
    ]
    if m and pool_before >= padded_share_min_pool:
        derived["_chk_has_padding"] = (n_padded > 0).astype(float)
        rules.append(
            Rule(
                f"expect_padded_sample_share_to_be_at_most({max_padded_share})",
                "ExpectColumnMeanToBeBetween",
                {"column": "_chk_has_padding", "min_value": 0.0, "max_value": max_padded_share},
                detail="share {observed}",
            )
        )
    frame = frame.assign(sample_id=frame["sample_id"].astype(str))[["sample_id"]]
    report = run_rules(
        frame, rules, derived=derived, suite="neighbors", dataset=dataset, partition=day.isoformat()
    )
    facts = {
        "padded_share": round(share, 6),
        "pool_rows_before_partition": pool_before,
        "pool_rows": len(pool),
    }
    return report, facts


# --------------------------------------------------------------------------------------------
# Named metrics (Qdrant counts, recall)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str  # e.g. "points_of_partition"
    observed: float
    expected: str  # e.g. "== 30" (for the rule name and the report)
    ok: bool


def check_metrics(metrics: Sequence[Metric], *, suite: str, dataset: str, partition: str = "") -> CheckReport:
    """One rule per metric over a small table of facts (one row per metric)."""
    frame = pd.DataFrame(
        {
            "metric": [m.name for m in metrics],
            "observed": [float(m.observed) for m in metrics],
            "expected": [m.expected for m in metrics],
        }
    )
    derived, rules = {}, []
    for i, m in enumerate(metrics):
        col = f"_chk_{i}_{m.name}"
        derived[col] = np.array([j != i or m.ok for j in range(len(metrics))], dtype=bool)
        rules.append(_true(f"expect_{m.name} {m.expected}", col, ("metric", "observed", "expected")))
    return run_rules(frame, rules, derived=derived, suite=suite, dataset=dataset, partition=partition)


def equal(name: str, observed: int, expected: int) -> Metric:
    return Metric(name, observed, f"== {expected}", int(observed) == int(expected))


def at_least(name: str, observed: float, bound: float) -> Metric:
    return Metric(name, round(float(observed), 6), f">= {bound}", float(observed) >= bound)
