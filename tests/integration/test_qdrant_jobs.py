"""`jobs.embed_upsert` and `jobs.retrieve` on real ingested samples and hand-built CoT partitions.

Embedded default: local Qdrant under LLMCF_HOME, the packaged all-MiniLM-L6-v2 encoder (the
handful of texts here is embedded in-process; the Ray Data path has its own test).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest
from qdrant_client import models

from jobs import embed_upsert as embed_job
from jobs import ingest
from jobs import retrieve as retrieve_job
from llmcf_core import storage
from llmcf_core.config import load_config
from llmcf_core.layout import CotVersion, DataPaths, InvalidArgument, RetrievalPaths
from llmcf_core.retrieval import admin, gates
from llmcf_core.retrieval.embed import read_item_vectors, sample_vectors
from llmcf_core.retrieval.pool import load_pool
from llmcf_core.retrieval.search import brute_force, query_vectors
from llmcf_core.retrieval.spec import PoolSpec, alias_name
from llmcf_core.retrieval.store import QdrantStore
from llmcf_core.retrieval.upsert import embed_upsert

from .retrieval_timeline import DATASET, DAYS, MODEL, PROMPT, publish_cot, sample_ids, set_current, write_logs

pytestmark = pytest.mark.slow

V1 = CotVersion(MODEL, PROMPT)


def _result(capsys) -> dict:
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("LLMCF_RESULT "))
    return json.loads(line.removeprefix("LLMCF_RESULT "))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Ingested samples for three days and CoT v1 for each (built once, copied per test)."""
    home = tmp_path_factory.mktemp("tiny_home")
    flags = write_logs(tmp_path_factory.mktemp("logs"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMCF_HOME", str(home))
        load_config.cache_clear()
        for day in DAYS:
            assert ingest.main(["--dataset", DATASET, "--partition", day.isoformat(), *flags]) == 0
        load_config.cache_clear()
    failed = set(sample_ids(home, DAYS[1])[:1])
    for day in DAYS:
        publish_cot(home, day, fail=failed if day == DAYS[1] else set())
    set_current(home)
    return home


@pytest.fixture
def home(template, llmcf_home):
    shutil.copytree(template, llmcf_home, dirs_exist_ok=True)
    return llmcf_home


def _spec(settings, model: str = MODEL) -> PoolSpec:
    e = settings.embedding
    return PoolSpec(DATASET, e.embedder, e.dim, model, PROMPT)


def _store(settings) -> QdrantStore:
    return QdrantStore.open(settings.qdrant, settings.home, lock_timeout_s=5)


def test_embed_upsert_is_idempotent_and_retrieve_is_leakage_free(home, settings, capsys):
    args = ["--dataset", DATASET, "--partition"]
    assert embed_job.main([*args, "2024-05-01"]) == 0
    first = _result(capsys)
    assert first["rebuilt"] is True and first["reason"].startswith("first build")
    assert first["days_loaded"] == 3 and first["points_in_collection"] == 29  # 30 samples, 1 failed CoT

    assert embed_job.main([*args, "2024-05-02"]) == 0
    daily = _result(capsys)
    assert daily["rebuilt"] is False and daily["rows"] == 9 and daily["points_in_collection"] == 29
    paths = RetrievalPaths(home, DATASET, settings.embedding.embedder)
    sha = storage.read_manifest(paths.pool(DAYS[1], V1))["sha256"]
    items_sha = storage.read_manifest(paths.items)["sha256"]

    assert embed_job.main([*args, "2024-05-02"]) == 0  # rerun: same points, same counts
    rerun = _result(capsys)
    assert rerun["changed"] is False and rerun["reused_pool"] is True and rerun["deleted_stale"] == 0
    assert storage.read_manifest(paths.pool(DAYS[1], V1))["sha256"] == sha
    assert storage.read_manifest(paths.items)["sha256"] == items_sha  # items embedded once
    with _store(settings) as store:
        live = store.alias_target(DATASET)
        assert store.count(live) == 29 and store.count(live, dt="2024-05-02") == 9
        assert store.collections(DATASET) == [live]
    assert gates.verify_pool_published(settings, DATASET, "2024-05-02")["rows"] == 9

    for day in DAYS:
        assert retrieve_job.main([*args, day.isoformat()]) == 0
        out = _result(capsys)
        assert out["rows"] == 10 and out["metrics"]["qdrant_recall"] == 1.0
        assert out["metrics"]["recall_vs_brute_force"] == 1.0
        _assert_leakage_free_and_exact(settings, day, "ctr")
    assert gates.verify_neighbors_published(settings, DATASET, "2024-05-03")["rows"] == 10
    first_day = storage.read_partition(paths.neighbors(DAYS[0], "ctr", V1)).to_pylist()
    assert first_day[0]["n_padded"] == 4  # the very first sample has no past: padded, not dropped

    assert retrieve_job.main([*args, "2024-05-03", "--task", "next_item"]) == 0
    assert _result(capsys)["path"].endswith(f"neighbors_next_item/{V1.folder}/dt=2024-05-03")
    _assert_leakage_free_and_exact(settings, DAYS[2], "next_item")
    assert retrieve_job.main([*args, "2024-05-03"]) == 0
    assert _result(capsys)["changed"] is False  # deterministic output, rerun is a no-op


def _assert_leakage_free_and_exact(settings, day: dt.date, task: str) -> None:
    """Re-derive the rules here, independently of the job's own checks."""
    paths = RetrievalPaths(settings.home, DATASET, settings.embedding.embedder)
    pool = load_pool(settings, _spec(settings), until=day).index
    samples = storage.read_partition(paths.data.samples(day)).to_pandas()
    neighbors = storage.read_partition(paths.neighbors(day, task, V1)).to_pandas()
    items = read_item_vectors(paths, settings.embedding.dim)
    h, t = sample_vectors(items, samples.item_id, list(samples.history_item_ids))
    q = query_vectors(h, t, task)
    where = {s: i for i, s in enumerate(pool.sample_ids)}
    assert neighbors.sample_id.tolist() == samples.sample_id.tolist()
    for i, (s, n) in enumerate(zip(samples.itertuples(), neighbors.itertuples(), strict=True)):
        real = [
            (nid, lab, sc)
            for nid, lab, sc, pad in zip(
                n.neighbor_ids, n.neighbor_labels, n.neighbor_scores, n.neighbor_padded, strict=True
            )
            if not pad
        ]
        assert len(n.neighbor_ids) == 4 and n.n_padded == 4 - len(real)
        for nid, lab, _ in real:
            j = where[nid]
            assert pool.timestamps[j] < s.timestamp and nid != s.sample_id
            assert not (pool.user_ids[j] == s.user_id and pool.timestamps[j] >= s.timestamp)
            assert pool.labels[j] == lab
        for label in (1, 0):
            want, scores = brute_force(
                pool, q[i], s.timestamp, s.user_id, s.sample_id, label=label, per_label=2
            )
            got = sorted(sc for _, lab, sc in real if lab == label)
            np.testing.assert_allclose(got, sorted(scores), atol=1e-5)


def test_new_cot_version_rebuilds_and_swaps_the_alias_atomically(home, settings):
    embed_upsert(settings, DATASET, DAYS[0])
    with _store(settings) as store:
        old = store.alias_target(DATASET)
        old_points = store.count(old)
    for day in DAYS:
        publish_cot(home, day, model="recgen-v2")
    set_current(home, model="recgen-v2")

    seen = []

    def observe(store, name, written):  # called after every upserted batch of the new collection
        seen.append((store.alias_target(DATASET), store.count(alias_name(DATASET)), store.count(name)))

    out = embed_upsert(settings, DATASET, DAYS[2], on_batch=observe)
    assert out["rebuilt"] is True and out["reason"] == "first build of CoT version recgen-v2__v1-lc"
    assert out["previous_collection"] == old and out["points_in_collection"] == 30
    # While loading, readers of the alias saw the old, complete collection; the new one was filling.
    assert seen and all(alias == old and n == old_points for alias, n, _ in seen)
    assert [loaded for *_, loaded in seen] == sorted({loaded for *_, loaded in seen})
    with _store(settings) as store:
        new = store.alias_target(DATASET)
        assert new != old and store.count(alias_name(DATASET)) == 30
        assert store.spec_of(new) == _spec(settings, "recgen-v2")
        assert set(store.collections(DATASET)) == {old, new}  # previous kept for rollback
    rolled = admin.rollback(settings, DATASET)
    assert rolled["collection"] == old and rolled["cot_version"] == V1.folder
    assert admin.status(settings, DATASET)["live"] == old
    # cot/CURRENT follows the alias back: stages and the live collection agree on the version
    current = json.loads(RetrievalPaths(home, DATASET, settings.embedding.embedder).cot_pointer.read_text())
    assert (current["model_version"], current["prompt_version"]) == (MODEL, PROMPT)


def test_a_failed_rebuild_leaves_the_alias_alone_and_a_rerun_recovers(home, settings):
    embed_upsert(settings, DATASET, DAYS[0])
    with _store(settings) as store:
        old = store.alias_target(DATASET)
    for day in DAYS:
        publish_cot(home, day, model="recgen-v2")
    set_current(home, model="recgen-v2")

    def crash(store, name, written):
        if store.count(name) > 15:
            raise RuntimeError("worker lost mid-load")

    with pytest.raises(RuntimeError, match="mid-load"):
        embed_upsert(settings, DATASET, DAYS[2], on_batch=crash)
    with _store(settings) as store:
        assert store.alias_target(DATASET) == old and store.collections(DATASET) == [old]
    assert embed_upsert(settings, DATASET, DAYS[2])["rebuilt"] is True


def test_argument_and_check_failures_exit_2_and_3(home, settings, capsys):
    args = ["--dataset", DATASET, "--partition", "2024-05-03"]
    paths = RetrievalPaths(home, DATASET, settings.embedding.embedder)
    shutil.rmtree(paths.cot_partition(DAYS[2], paths_version := _spec(settings).cot))
    assert embed_job.main(args) == 2
    assert "no published CoT partition" in capsys.readouterr().err
    assert embed_job.main([*args, "--cot-version", "nope"]) == 2
    assert "malformed CoT version" in capsys.readouterr().err
    assert retrieve_job.main(["--dataset", DATASET, "--partition", "2024-06-01"]) == 2
    assert "no published samples" in capsys.readouterr().err

    # A CoT whose label contradicts its sample fails the pool check: exit 3, quarantined, nothing loaded.
    flipped = set(sample_ids(home, DAYS[2])[:2])
    publish_cot(home, DAYS[2], fail=set(), label_flip=flipped)
    assert paths_version.folder == f"{MODEL}__{PROMPT}"
    assert embed_job.main(args) == 3
    err = capsys.readouterr().err
    assert "expect_cot_label_to_equal_sample_label" in err
    quarantined = storage.read_partition(DataPaths(home, DATASET).quarantine("pool", DAYS[2])).to_pandas()
    assert set(quarantined.sample_id) == flipped
    assert not storage.is_published(paths.pool(DAYS[2], V1))
    with pytest.raises(InvalidArgument, match="not published"):
        gates.verify_pool_published(settings, DATASET, "2024-05-03")


def test_retrieve_verifies_leakage_instead_of_trusting_the_search(home, settings, capsys, monkeypatch):
    embed_upsert(settings, DATASET, DAYS[0])
    from llmcf_core.retrieval import retrieve as stage

    real_search = stage.exact_search

    def leaky(pool, history, target, ts, **kw):  # a broken search that lets the future in
        return real_search(pool, history, target, ts + 10**6, **kw)

    monkeypatch.setattr(stage, "exact_search", leaky)
    assert retrieve_job.main(["--dataset", DATASET, "--partition", "2024-05-02"]) == 3
    err = capsys.readouterr().err
    assert "expect_neighbors_strictly_earlier_than_sample (leakage)" in err
    paths = RetrievalPaths(home, DATASET, settings.embedding.embedder)
    assert not storage.is_published(paths.neighbors(DAYS[1], "ctr", V1))
    assert storage.is_published(DataPaths(home, DATASET).quarantine("neighbors", DAYS[1]))


def test_a_collection_that_lost_points_fails_the_count_check(home, settings, capsys):
    embed_upsert(settings, DATASET, DAYS[0])
    with _store(settings) as store:
        live = store.alias_target(DATASET)
        lost = sorted(store.ids_of_day(live, "2024-05-01"))[:3]
        store.client.delete(live, points_selector=models.PointIdsList(points=lost), wait=True)
    assert embed_job.main(["--dataset", DATASET, "--partition", "2024-05-02"]) == 3
    assert "expect_points_in_collection == 29" in capsys.readouterr().err
    quarantine = DataPaths(home, DATASET).quarantine("pool", DAYS[1])
    assert storage.read_manifest(quarantine)["report"]["suite"] == "qdrant"
    # the fix: a full rebuild reloads every day from the CoT partitions
    assert embed_job.main(["--dataset", DATASET, "--partition", "2024-05-02", "--rebuild"]) == 0
    assert _result(capsys)["points_in_collection"] == 29


def test_items_only_embeds_item_texts_without_a_cot_pool(home, settings, capsys):
    """A dataset with samples but no CoT pool yet (bases only): `--items-only` publishes the item
    vectors the recommender's text fields read, touches no collection, and refuses pool arguments."""
    shutil.rmtree(DataPaths(home, DATASET).artifact("cot"))  # no CoT at all
    assert embed_job.main(["--dataset", DATASET, "--items-only"]) == 0
    result = _result(capsys)
    items = storage.read_partition(result["path"])
    assert result["items"] == items.num_rows > 0
    assert storage.read_manifest(result["path"])["embedder"] == settings.embedding.embedder
    with _store(settings) as store:
        assert store.live(DATASET) is None
    assert embed_job.main(["--dataset", DATASET, "--items-only", "--partition", "2024-05-01"]) == 2
    assert "--items-only takes no --partition" in capsys.readouterr().err
