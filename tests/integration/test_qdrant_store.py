"""The Qdrant store in embedded local mode: idempotent upserts, aliases, filters, one client per folder."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llmcf_core.config import QdrantConfig
from llmcf_core.layout import InvalidArgument
from llmcf_core.retrieval.embed import normalise
from llmcf_core.retrieval.pool import PoolIndex
from llmcf_core.retrieval.search import brute_force, query_vectors
from llmcf_core.retrieval.spec import PoolSpec, alias_name
from llmcf_core.retrieval.store import PoolPoints, QdrantStore, StoreBusy, point_id

DS = "toy"
SPEC = PoolSpec(DS, "toy-enc", 8, "m1", "p1")


def points(day: str, n: int, seed: int = 0, prefix: str = "s") -> PoolPoints:
    rng = np.random.default_rng(seed)
    return PoolPoints(
        dt=day,
        sample_ids=[f"{prefix}{day}-{i}" for i in range(n)],
        user_ids=rng.integers(0, 5, n),
        item_ids=rng.integers(1, 50, n),
        timestamps=np.sort(rng.integers(0, 1000, n)),
        labels=rng.integers(0, 2, n).astype(np.int8),
        history=normalise(rng.normal(size=(n, 8))),
        target=normalise(rng.normal(size=(n, 8))),
        cot=normalise(rng.normal(size=(n, 8))),
    )


@pytest.fixture
def cfg(tmp_path):
    return QdrantConfig(path=str(tmp_path / "qdrant"), upsert_batch=64, keep_previous=1, lock_timeout_s=0.5)


@pytest.fixture
def store(cfg, tmp_path):
    with QdrantStore.open(cfg, tmp_path, owner="test") as s:
        yield s


def test_upserts_are_idempotent_and_replace_day_removes_stale_points(store):
    name = store.create_collection(SPEC)
    day = points("2024-01-01", 150)
    store.upsert(name, DS, day)
    store.upsert(name, DS, day)  # rerun
    assert store.count(name) == 150 and store.count(name, dt="2024-01-01") == 150
    fields = ("sample_ids", "user_ids", "item_ids", "timestamps", "labels", "history", "target", "cot")
    smaller = dataclasses.replace(day, **{f: getattr(day, f)[:100] for f in fields})
    assert store.replace_day(name, DS, smaller) == {"upserted": 100, "deleted_stale": 50}
    assert store.count(name) == 100
    assert point_id(DS, "x") == point_id(DS, "x") != point_id("other", "x")
    # local mode's per-point sqlite commits run in WAL mode (30x faster upserts on a busy disk)
    conn = store.client._client.collections[name].storage.storage
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_alias_swap_keeps_the_previous_collection_and_prunes_older_ones(store):
    names = []
    for gen in range(3):
        name = store.create_collection(SPEC)
        store.upsert(name, DS, points("2024-01-01", 10 + gen, seed=gen))
        names.append(name)
        assert store.swap_alias(DS, name) == (names[-2] if gen else None)
        assert store.count(alias_name(DS)) == 10 + gen
    assert names == [f"llmcf_toy__toy-enc__m1__p1__g{i}" for i in (1, 2, 3)]
    # keep_previous=1: g1 was dropped, g2 kept for rollback
    assert store.collections(DS) == names[1:]
    assert store.rollback(DS) == names[1] and store.alias_target(DS) == names[1]
    with pytest.raises(InvalidArgument, match="no previous"):
        QdrantStore.rollback(store, "nothing-here")


def test_filtered_queries_apply_every_leakage_rule_and_match_brute_force(store):
    name = store.create_collection(SPEC)
    day = points("2024-01-01", 120, seed=3)
    store.upsert(name, DS, day)
    pool = PoolIndex.from_arrays(
        sample_ids=np.array(day.sample_ids, dtype=object),
        user_ids=day.user_ids,
        timestamps=day.timestamps,
        labels=day.labels,
        history=day.history,
        target=day.target,
        cot=day.cot,
    )
    assert store.count(name, before_ts=500) == int((day.timestamps < 500).sum())
    for i in range(0, 120, 17):  # queries that are pool members: self and same-user-later excluded
        q = query_vectors(day.history[i : i + 1], day.target[i : i + 1], "ctr")[0]
        for label in (0, 1):
            hits = store.query(
                name,
                q,
                using="joint",
                label=label,
                before_ts=int(day.timestamps[i]),
                user_id=int(day.user_ids[i]),
                exclude_sample_id=day.sample_ids[i],
                dataset=DS,
                limit=2,
            )
            rows, scores = brute_force(
                pool,
                q,
                int(day.timestamps[i]),
                int(day.user_ids[i]),
                day.sample_ids[i],
                label=label,
                per_label=2,
            )
            assert [h.sample_id for h in hits] == [pool.sample_ids[r] for r in rows]
            np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)


def test_a_second_client_on_the_same_folder_gets_a_clear_error(cfg, tmp_path):
    with QdrantStore.open(cfg, tmp_path, owner="jobs.embed_upsert toy 2024-01-01"):
        with pytest.raises(StoreBusy, match=r"in use by jobs.embed_upsert toy 2024-01-01 \(pid \d+"):
            QdrantStore.open(cfg, tmp_path, lock_timeout_s=0.2)
        # ...and from another process, as two jobs would be.
        code = textwrap.dedent(
            f"""
            from llmcf_core.config import QdrantConfig
            from llmcf_core.retrieval.store import QdrantStore, StoreBusy
            try:
                QdrantStore.open(QdrantConfig(path={cfg.path!r}, lock_timeout_s=0.2), "/")
            except StoreBusy as exc:
                print("BUSY:", exc)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert "BUSY:" in out.stdout and "one client per folder" in out.stdout, out.stderr[-2000:]
    with QdrantStore.open(cfg, tmp_path) as again:  # released on close
        assert again.collections(DS) == []


def test_a_waiting_client_gets_the_folder_once_the_holder_closes(cfg, tmp_path):
    import threading

    holder = QdrantStore.open(cfg, tmp_path)
    timer = threading.Timer(0.5, holder.close)
    timer.start()
    with QdrantStore.open(cfg, tmp_path, lock_timeout_s=30) as waited:
        assert waited.alias_target(DS) is None
    timer.join()


def test_server_mode_needs_a_url(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMCF_QDRANT_URL", raising=False)
    with pytest.raises(InvalidArgument, match="LLMCF_QDRANT_URL"):
        QdrantStore.open(QdrantConfig(mode="server"), tmp_path)
