"""The retrieval suites catch what they claim to: leaks, wrong labels/scores, padding, bad vectors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from llmcf_core.layout import day_bounds
from llmcf_core.retrieval import checks
from llmcf_core.retrieval.embed import ItemVectors
from llmcf_core.retrieval.search import exact_search, neighbors_table, query_vectors

from .test_retrieval_search import TIMELINE, X, Y, Z, make_pool

DAY = dt.date(1970, 1, 1)  # the timeline's timestamps are seconds of this day


def _neighbors(pool, ts=100):
    queries = checks.Queries(
        sample_ids=np.array(["q", "fresh"], dtype=object),
        user_ids=np.array([1, 9]),
        timestamps=np.array([ts, 5]),
        vectors=query_vectors(np.stack([X, Y]), np.stack([X, Z]), "ctr"),
    )
    res = exact_search(pool, np.stack([X, Y]), np.stack([X, Z]), queries.timestamps, per_label=2)
    return neighbors_table(pool, res, list(queries.sample_ids)).to_pandas(), queries


def _check(df, queries, pool, **kw):
    args = {"k": 4, "dataset": "toy", "day": DAY, "max_padded_share": 0.5, "padded_share_min_pool": 10**9}
    return checks.check_neighbors(df, queries=queries, pool=pool, **(args | kw))


def _failed(report) -> set[str]:
    return {f.rule for f in report.failures}


def test_correct_neighbors_pass_and_report_the_padded_share():
    pool = make_pool(TIMELINE)
    df, queries = _neighbors(pool)
    report, facts = _check(df, queries, pool)
    assert report.success, report.summary()
    assert facts["padded_share"] == 1.0 and facts["pool_rows"] == len(TIMELINE)


def _set(df: pd.DataFrame, row: int, slot: int, **values) -> pd.DataFrame:
    df = df.copy()
    for col, value in values.items():
        cell = list(df.at[row, col])
        cell[slot] = value
        df.at[row, col] = cell
    return df


@pytest.mark.parametrize(
    ("neighbor", "label", "rule"),
    [
        ("u4-later", 0, "expect_neighbors_strictly_earlier_than_sample (leakage)"),
        ("u1-later", 1, "expect_no_neighbor_from_same_user_at_a_later_position (leakage)"),
        ("q", 1, "expect_neighbors_not_the_sample_itself (leakage)"),
        ("not-in-pool", 0, "expect_neighbors_to_be_pool_examples"),
    ],
)
def test_each_leak_is_caught_and_located(neighbor, label, rule):
    pool = make_pool(TIMELINE)
    df, queries = _neighbors(pool)
    slot = df.at[0, "neighbor_labels"].tolist().index(0)  # overwrite the negative slot
    bad = _set(df, 0, slot, neighbor_ids=neighbor, neighbor_labels=label, neighbor_scores=1.0)
    report, _ = _check(bad, queries, pool)
    assert rule in _failed(report)
    assert report.failed_positions == [0]


def test_wrong_labels_scores_balance_and_silent_drops_are_caught():
    pool = make_pool(TIMELINE)
    df, queries = _neighbors(pool)
    real = [i for i, p in enumerate(df.at[0, "neighbor_padded"]) if not p]
    wrong_label = _set(df, 0, real[0], neighbor_labels=1 - df.at[0, "neighbor_labels"][real[0]])
    assert "expect_neighbor_labels_to_equal_pool_labels" in _failed(_check(wrong_label, queries, pool)[0])
    wrong_score = _set(df, 0, real[0], neighbor_scores=0.123)
    assert any("recomputed_similarity" in r for r in _failed(_check(wrong_score, queries, pool)[0]))
    # dropping a real example (flagged as padding) although the pool had it
    dropped = _set(
        df, 0, real[0], neighbor_ids="", neighbor_labels=0, neighbor_scores=0.0, neighbor_padded=True
    )
    dropped.at[0, "n_padded"] = 2
    assert "expect_padding_only_where_the_pool_lacks_examples" in _failed(_check(dropped, queries, pool)[0])
    inconsistent = df.copy()
    inconsistent.at[0, "n_padded"] = 0
    assert "expect_padding_flags_ids_labels_scores_and_n_padded_to_agree" in _failed(
        _check(inconsistent, queries, pool)[0]
    )
    short = df.copy()
    short.at[1, "neighbor_ids"] = ["", ""]
    assert "expect_neighbor_lists_to_have_k_entries(k=4)" in _failed(_check(short, queries, pool)[0])


def test_padded_share_is_bounded_once_the_pool_is_big_enough():
    pool = make_pool(TIMELINE)
    df, queries = _neighbors(pool)
    report, _ = _check(df, queries, pool, padded_share_min_pool=0, max_padded_share=0.5)
    assert "expect_padded_sample_share_to_be_at_most(0.5)" in _failed(report)


def test_pool_suite_catches_foreign_rows_label_mismatch_and_bad_vectors():
    start, _ = day_bounds(DAY)
    frame = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "cot_label": [1, 0, 1, 1],
            "cot_text": ["x"] * 4,
            "user_id": [1, 2, 3, None],
            "item_id": [1, 2, 3, None],
            "timestamp": [start + 1, start + 2, start + 3, None],
            "label": [1, 1, 1, None],  # b: CoT says 0, sample says 1
            "history_item_ids": [[1], [], [2], None],
        }
    )
    vectors = {
        "history_vec": np.stack([X, np.zeros(3), 2 * X, np.zeros(3)]).astype(np.float32),  # c: norm 2
        "target_vec": np.stack([X, Y, Z, np.zeros(3)]).astype(np.float32),
        "cot_vec": np.stack([X, Y, Z, X]).astype(np.float32),
    }
    report = checks.check_pool(
        frame,
        vectors,
        history_len=np.array([1, 0, 1, 0]),
        in_samples=np.array([True, True, True, False]),
        dataset="toy",
        day=DAY,
        dim=3,
    )
    by_rule = {f.rule: f.row_positions for f in report.failures}
    assert by_rule == {
        "expect_cot_rows_to_be_samples_of_the_day(sample_id in samples)": [3],
        "expect_cot_label_to_equal_sample_label": [1],
        "expect_vector_norm_to_be_1(history_vec, tol=0.001)": [2],
    }


def test_item_vectors_and_metrics_suites():
    good = ItemVectors(np.array([1, 2]), np.stack([X, Y]))
    assert checks.check_item_vectors(good, dataset="toy", dim=3).success
    bad = ItemVectors(np.array([1, 1]), np.stack([X, np.full(3, np.nan, np.float32)]))
    failed = _failed(checks.check_item_vectors(bad, dataset="toy", dim=4))
    assert {"expect_column_values_to_be_unique(item_id)", "expect_vector_dimension(vector == 4)"} <= failed
    assert "expect_vector_values_to_be_finite(vector)" in failed
    report = checks.check_metrics(
        [checks.equal("points_of_partition", 9, 9), checks.equal("points_in_collection", 28, 29)],
        suite="qdrant",
        dataset="toy",
    )
    assert _failed(report) == {"expect_points_in_collection == 29"}
    assert "points_in_collection" in report.summary()
