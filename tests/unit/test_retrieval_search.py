"""Exact retrieval on hand-built timelines: leakage rules, label balance, padding, next_item, online."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcf_core.retrieval.embed import ItemVectors, normalise, sample_vectors
from llmcf_core.retrieval.online import OnlineIndex
from llmcf_core.retrieval.pool import PoolIndex
from llmcf_core.retrieval.search import brute_force, exact_search, neighbors_table, query_vectors
from llmcf_core.retrieval.store import joint_vectors


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def make_pool(rows: list[tuple[str, int, int, int, np.ndarray, np.ndarray]]) -> PoolIndex:
    """rows: (sample_id, user_id, timestamp, label, history_vec, target_vec)."""
    return PoolIndex.from_arrays(
        sample_ids=np.array([r[0] for r in rows], dtype=object),
        user_ids=np.array([r[1] for r in rows], dtype=np.int64),
        timestamps=np.array([r[2] for r in rows], dtype=np.int64),
        labels=np.array([r[3] for r in rows], dtype=np.int8),
        history=np.stack([r[4] for r in rows]),
        target=np.stack([r[5] for r in rows]),
        cot=np.stack([r[5] for r in rows]),
    )


X, Y, Z = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)

# A timeline (user, time): the query is user 1 at t=100 with history X and target X.
TIMELINE = [
    ("u1-a", 1, 10, 1, X, X),  # same user, earlier: allowed, best positive
    ("u2-a", 2, 20, 1, X, Y),  # earlier positive, half match
    ("u3-a", 3, 30, 1, Y, Y),  # earlier positive, no match
    ("u2-b", 2, 40, 0, X, X),  # earlier negative, perfect match
    ("u1-later", 1, 150, 1, X, X),  # same user, later position: forbidden
    ("u4-later", 4, 120, 0, X, X),  # another user, later: forbidden
    ("u5-same-second", 5, 100, 0, X, X),  # same timestamp: not strictly earlier
    ("q", 1, 100, 1, X, X),  # the query itself (in the pool): forbidden
]


def search_one(pool: PoolIndex, h: np.ndarray, t: np.ndarray, ts: int, task: str = "ctr", block: int = 1024):
    return exact_search(pool, h[None, :], t[None, :], np.array([ts]), task=task, per_label=2, block=block)


def test_leakage_rules_balance_and_padding_on_a_hand_built_timeline():
    pool = make_pool(TIMELINE)
    res = search_one(pool, X, X, 100)
    got = [pool.sample_ids[r] if r >= 0 else None for r in res.rows[0]]
    # positives best first, then negatives; one negative is missing -> padded
    assert got == ["u1-a", "u2-a", "u2-b", None]
    np.testing.assert_allclose(res.scores[0], [1.0, 0.5, 1.0, 0.0], atol=1e-6)
    assert res.padded[0].tolist() == [False, False, False, True]


def test_next_item_scores_by_history_alone():
    pool = make_pool(TIMELINE)
    res = search_one(pool, X, Z, 100, task="next_item")  # target unknown: Z must not matter
    got = [pool.sample_ids[r] for r in res.rows[0][:2]]
    assert set(got) == {"u1-a", "u2-a"}  # both have history X: cos 1
    np.testing.assert_allclose(res.scores[0][:3], [1.0, 1.0, 1.0], atol=1e-6)


def test_cold_start_query_gets_k_padded_slots_not_dropped():
    pool = make_pool(TIMELINE)
    res = search_one(pool, X, X, 5)
    assert res.padded.all() and (res.scores == 0).all()
    table = neighbors_table(pool, res, ["cold"], shuffle=True).to_pylist()[0]
    assert table == {
        "sample_id": "cold",
        "neighbor_ids": ["", "", "", ""],
        "neighbor_labels": [0, 0, 0, 0],
        "neighbor_scores": [0.0, 0.0, 0.0, 0.0],
        "neighbor_padded": [True, True, True, True],
        "n_padded": 4,
    }


def test_joint_vector_dot_is_half_history_plus_half_target_cosine():
    rng = np.random.default_rng(0)
    h1, t1, h2, t2 = normalise(rng.normal(size=(4, 16)))
    j1 = joint_vectors(h1[None], t1[None])[0]
    j2 = joint_vectors(h2[None], t2[None])[0]
    assert math.isclose(float(j1 @ j2), 0.5 * float(h1 @ h2) + 0.5 * float(t1 @ t2), abs_tol=1e-6)
    assert math.isclose(float(np.linalg.norm(j1)), 1.0, abs_tol=1e-6)


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_blocked_search_equals_brute_force_on_random_timelines(block):
    rng = np.random.default_rng(1)
    n, m, d = 300, 60, 8
    pool = PoolIndex.from_arrays(
        sample_ids=np.array([f"p{i}" for i in range(n)], dtype=object),
        user_ids=rng.integers(0, 20, n),
        timestamps=rng.integers(0, 50, n),  # many equal timestamps
        labels=rng.integers(0, 2, n).astype(np.int8),
        history=normalise(rng.normal(size=(n, d))),
        target=normalise(rng.normal(size=(n, d))),
        cot=np.zeros((n, d), np.float32),
    )
    # Queries: some are pool samples themselves (self must be excluded), some are new.
    picks = rng.choice(n, m // 2, replace=False)
    q_ids = [str(pool.sample_ids[i]) for i in picks] + [f"new{i}" for i in range(m - len(picks))]
    q_user = np.concatenate([pool.user_ids[picks], rng.integers(0, 20, m - len(picks))])
    q_ts = np.concatenate([pool.timestamps[picks], rng.integers(0, 60, m - len(picks))])
    h = np.concatenate([pool.history[picks], normalise(rng.normal(size=(m - len(picks), d)))])
    t = np.concatenate([pool.target[picks], normalise(rng.normal(size=(m - len(picks), d)))])
    q = query_vectors(h, t, "ctr")
    res = exact_search(pool, h, t, q_ts, per_label=2, block=block)
    for i in range(m):
        for slot0, label in ((0, 1), (2, 0)):
            rows, scores = brute_force(
                pool, q[i], int(q_ts[i]), int(q_user[i]), q_ids[i], label=label, per_label=2
            )
            got = [r for r in res.rows[i, slot0 : slot0 + 2] if r >= 0]
            assert got == rows, (i, label)
            np.testing.assert_allclose(res.scores[i, slot0 : slot0 + len(got)], scores, atol=1e-5)


def test_shuffle_is_deterministic_puts_padding_last_and_keeps_contents():
    pool = make_pool(TIMELINE)
    res = search_one(pool, X, X, 100)
    a = neighbors_table(pool, res, ["q"], shuffle=True).to_pylist()[0]
    b = neighbors_table(pool, res, ["q"], shuffle=True).to_pylist()[0]
    assert a == b
    assert a["neighbor_padded"][-1] is True and a["n_padded"] == 1
    assert sorted(a["neighbor_ids"][:3]) == sorted(["u1-a", "u2-a", "u2-b"])
    table = neighbors_table(pool, res, ["q"], shuffle=True)
    assert str(table.schema.field("neighbor_ids").type) == "list<item: string>"
    assert str(table.schema.field("neighbor_scores").type) == "list<item: float>"


def test_sample_vectors_mean_history_and_zero_for_empty_history():
    items = ItemVectors(np.array([1, 2, 3]), np.stack([X, Y, Z]))
    h, t = sample_vectors(items, [3, 1], [[1, 2], []])
    np.testing.assert_allclose(h[0], unit(1, 1, 0), atol=1e-6)
    assert (h[1] == 0).all()
    np.testing.assert_allclose(t, np.stack([Z, X]))
    with pytest.raises(KeyError, match="99"):
        items.positions([99])


def _random_online_setup(seed: int, n: int = 400, n_items: int = 30, d: int = 8):
    rng = np.random.default_rng(seed)
    catalog = ItemVectors(np.arange(100, 100 + n_items), normalise(rng.normal(size=(n_items, d))))
    items = rng.integers(100, 100 + n_items, n)
    hist = [rng.integers(100, 100 + n_items, rng.integers(0, 6)).tolist() for _ in range(n)]
    ts = rng.integers(0, 1000, n)
    labels = rng.integers(0, 2, n).astype(np.int8)
    ids = [f"s{i}" for i in range(n)]
    h, t = sample_vectors(catalog, items, hist)
    pool = PoolIndex.from_arrays(
        sample_ids=np.array(ids, dtype=object),
        user_ids=np.arange(n),
        timestamps=ts,
        labels=labels,
        history=h,
        target=t,
        cot=t,
    )
    index = OnlineIndex(
        catalog=catalog,
        sample_ids=ids,
        timestamps=ts,
        labels=labels,
        item_ids=items,
        history_item_ids=hist,
        cot=t,
    )
    return rng, catalog, pool, index


@pytest.mark.parametrize("task", ["ctr", "next_item"])
@pytest.mark.parametrize("now", [None, 500])
def test_online_index_equals_the_exact_offline_search(task, now):
    rng, catalog, pool, index = _random_online_setup(2)
    history = [101, 105, 105, 120]
    cands = rng.choice(catalog.ids, 12, replace=False)
    res = index.retrieve(history, cands, now_ts=now, task=task, request_key="r1")
    h, t = sample_vectors(catalog, cands, [history] * len(cands))
    ts = np.full(len(cands), 10**9 if now is None else now)
    ref = exact_search(pool, h, t, ts, task=task, per_label=2)
    for c in range(len(cands)):
        got_mask = ~res.padded[c]
        # same scores (ids may differ only between exactly tied examples)
        np.testing.assert_allclose(
            np.sort(res.scores[c][got_mask]), np.sort(ref.scores[c][ref.rows[c] >= 0]), atol=1e-5
        )
        assert res.padded[c].sum() == (ref.rows[c] < 0).sum()
        # labels balanced, padding last
        assert (res.labels[c][got_mask] == 1).sum() <= 2 and (res.labels[c][got_mask] == 0).sum() <= 2
        assert list(res.padded[c]) == sorted(res.padded[c])
    assert index.cot_vectors(res.rows).shape == (len(cands), 4, 8)


def test_online_index_respects_now_and_empty_history():
    _, catalog, _, index = _random_online_setup(3)
    res = index.retrieve([], catalog.ids[:3], now_ts=0)  # nothing is earlier than t=0
    assert res.padded.all()
    res = index.retrieve([], catalog.ids[:3])
    assert not res.padded.any()
    assert (index.history_scores([]) == 0).all()


def test_online_index_never_repeats_an_example_when_groups_are_few():
    catalog = ItemVectors(np.array([1, 2, 3]), np.stack([X, Y, Z]))
    index = OnlineIndex(
        catalog=catalog,
        sample_ids=["p1", "p2", "n1"],
        timestamps=np.array([1, 2, 3]),
        labels=np.array([1, 1, 0], dtype=np.int8),
        item_ids=np.array([1, 1, 2]),  # both positives share one item: a single group
        history_item_ids=[[1], [2], []],
    )
    res = index.retrieve([1], [1, 3])
    for c in range(2):
        real = res.sample_ids[c][~res.padded[c]].tolist()
        assert sorted(real) == ["n1", "p1", "p2"] and res.padded[c].sum() == 1


def test_online_vector_api_and_the_scorer_adapter_match_the_id_api():
    from types import SimpleNamespace

    rng, catalog, _, index = _random_online_setup(4)
    history = [103, 104, 111]
    cands = rng.choice(catalog.ids, 6, replace=False)
    by_ids = index.retrieve(history, cands, request_key="7")
    h, t = sample_vectors(catalog, cands, [history] * len(cands))
    by_vecs = index.retrieve_vectors(h[0], t, request_key="7")
    np.testing.assert_array_equal(by_vecs.rows, by_ids.rows)
    np.testing.assert_allclose(by_vecs.scores, by_ids.scores, atol=1e-5)
    # vectors that are not catalogue rows are multiplied out instead of looked up
    off = index.retrieve_vectors(h[0], t + np.float32(1e-7), request_key="7")
    np.testing.assert_allclose(np.sort(off.scores, axis=1), np.sort(by_ids.scores, axis=1), atol=1e-5)
    retriever = index.as_retriever()
    query = SimpleNamespace(user_id=7, timestamp=None, history_vec=h[0], target_vecs=t, k=4)
    assert retriever(query) == by_ids.sample_ids.tolist()
    next_item = retriever(SimpleNamespace(user_id=7, timestamp=None, history_vec=h[0], target_vecs=None, k=4))
    assert len(next_item) == 1 and len(next_item[0]) == 4
    with pytest.raises(ValueError, match="k=4"):
        retriever(SimpleNamespace(user_id=7, timestamp=None, history_vec=h[0], target_vecs=t, k=6))
