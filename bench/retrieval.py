"""Benchmark of the retrieval stage on ML-100K (real samples, MiniLM vectors) and a synthetic 80k pool.

    .venv/bin/python bench/retrieval.py                      # everything, ~5-10 min on 2 busy cores
    .venv/bin/python bench/retrieval.py --skip-qdrant --online-requests 200

Measures (results as JSON on stdout's last line, a table on stderr):
1. item / CoT text embedding throughput (in-process; Ray Data with --ray);
2. Qdrant local-mode upsert points/s of the ML-100K CoT pool (4 named vectors per point);
3. whole-range batch retrieval samples/s: ``search.exact_search`` (blocked torch matmul +
   prefix masks) vs a plain numpy brute force (full matmul + masks + argpartition) on the same
   vectors, with their agreement, and the >= 10k samples/s target against the ~8k pool;
4. Qdrant filtered single-query latency p50/p99 and its recall against the exact answers;
5. ``OnlineIndex.retrieve`` latency p50/p99 for one request (history + 256 candidates) at an
   80k-point synthetic pool, checked against the exact search on a few requests.

The pool is a deterministic 10% of the train samples (as the paper's code sampled for CoTs); CoT
vectors are random unit vectors except for a sample embedded for the throughput number (they do
not enter the similarity).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from llmcf_core import storage  # noqa: E402
from llmcf_core.config import EmbeddingConfig, load_config  # noqa: E402
from llmcf_core.data import items as items_mod  # noqa: E402
from llmcf_core.data.samples import build_samples  # noqa: E402
from llmcf_core.data.sources import load_interactions, load_items, resolve_source  # noqa: E402
from llmcf_core.layout import (
    RetrievalPaths,  # noqa: E402
    utc_day,  # noqa: E402
)
from llmcf_core.retrieval.embed import (  # noqa: E402
    ItemVectors,
    embed_texts,
    ensure_item_vectors,
    normalise,
    sample_vectors,
    vectors_to_arrow,
)
from llmcf_core.retrieval.online import OnlineIndex  # noqa: E402
from llmcf_core.retrieval.pool import PoolIndex, pool_schema  # noqa: E402
from llmcf_core.retrieval.retrieve import retrieve_partition  # noqa: E402
from llmcf_core.retrieval.search import exact_search, query_vectors  # noqa: E402
from llmcf_core.retrieval.spec import PoolSpec
from llmcf_core.retrieval.store import PoolPoints, QdrantStore, joint_vectors  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATASET = "ml-100k"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def ml100k_samples() -> tuple[pd.DataFrame, pd.DataFrame]:
    settings = load_config("local")
    cfg = settings.datasets["ml-100k"]
    src = resolve_source(cfg)
    items = items_mod.render_items(load_items(src))
    inter = load_interactions(src, items)
    first, last = utc_day(int(inter.timestamp.min())), utc_day(int(inter.timestamp.max()))
    frames = []
    day = first
    while day <= last:
        table = build_samples(
            inter,
            day,
            history_len=cfg.history_len,
            positive_rating=cfg.positive_rating,
            valid_start=cfg.valid_start,
            test_start=cfg.test_start,
        )
        if table.num_rows:
            frames.append(table.to_pandas())
        day += dt.timedelta(days=1)
    return items, pd.concat(frames, ignore_index=True)


def publish_pool_table(paths: RetrievalPaths, spec: PoolSpec, day: dt.date, pts: PoolPoints) -> None:
    """A pool partition as jobs.embed_upsert publishes it (vectors computed above, checks skipped)."""
    table = pa.table(
        {
            "sample_id": pa.array(pts.sample_ids, pa.string()),
            "user_id": pa.array(pts.user_ids, pa.int64()),
            "timestamp": pa.array(pts.timestamps, pa.int64()),
            "label": pa.array(pts.labels, pa.int8()),
            "history_vec": vectors_to_arrow(pts.history),
            "target_vec": vectors_to_arrow(pts.target),
            "cot_vec": vectors_to_arrow(pts.cot),
        },
        schema=pool_schema(spec.dim),
    )
    meta = {
        "dataset": DATASET,
        "partition": day.isoformat(),
        "spec": spec.to_dict(),
        "checks": {"success": True},
    }
    storage.publish_table(table, paths.pool(day, spec.cot), meta)


def in_fraction(sample_id: str, fraction: float) -> bool:
    return zlib.crc32(sample_id.encode()) % 10_000 < fraction * 10_000


def numpy_baseline(pool: PoolIndex, q: np.ndarray, q_ts: np.ndarray, per_label: int = 2, block: int = 1024):
    """Plain brute force: every query against the whole pool, masks, argpartition."""
    joint = joint_vectors(pool.history, pool.target)
    rows = np.full((len(q), 2 * per_label), -1, np.int64)
    scores = np.zeros((len(q), 2 * per_label), np.float32)
    for start in range(0, len(q), block):
        sl = slice(start, start + block)
        sims = q[sl] @ joint.T
        earlier = pool.timestamps[None, :] < q_ts[sl, None]
        for slot0, label in ((0, 1), (per_label, 0)):
            s = np.where(earlier & (pool.labels[None, :] == label), sims, -np.inf)
            top = np.argpartition(-s, per_label - 1, axis=1)[:, :per_label]
            val = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-val, axis=1, kind="stable")
            top, val = np.take_along_axis(top, order, axis=1), np.take_along_axis(val, order, axis=1)
            ok = np.isfinite(val)
            rows[sl, slot0 : slot0 + per_label] = np.where(ok, top, -1)
            scores[sl, slot0 : slot0 + per_label] = np.where(ok, val, 0)
    return rows, scores


def agreement(a_rows, a_scores, b_rows, b_scores, tol=1e-5) -> float:
    """Share of slots where two results agree (same row, or a tie in score)."""
    same = (a_rows == b_rows) | (np.abs(a_scores - b_scores) <= tol) & ((a_rows >= 0) == (b_rows >= 0))
    return float(same.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-fraction", type=float, default=0.1)
    ap.add_argument(
        "--cot-texts", type=int, default=512, help="CoT-like texts embedded for the throughput number"
    )
    ap.add_argument("--ray", action="store_true", help="also time the Ray Data embedding path")
    ap.add_argument("--skip-qdrant", action="store_true")
    ap.add_argument("--qdrant-queries", type=int, default=100)
    ap.add_argument("--online-pool", type=int, default=80_000)
    ap.add_argument("--online-items", type=int, default=3_900, help="catalogue size (ML-1M: 3,883)")
    ap.add_argument("--candidates", type=int, default=256)
    ap.add_argument("--online-requests", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--home", help="data root to reuse between runs (item vectors are cached there)")
    ap.add_argument("--skip-cot-embedding", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true", help="skip the numpy brute-force baseline")
    ap.add_argument("--online-only", action="store_true", help="only the online index (synthetic pool)")
    ap.add_argument("--job-day", default="1998-03-01", help="day the retrieve stage is run on (needs Qdrant)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
    }
    out["loadavg_start"] = os.getloadavg()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="llmcf-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["LLMCF_HOME"] = str(home)
    load_config.cache_clear()
    settings = load_config("local")
    emb = settings.embedding.model_copy(update={"backend": "local"})
    settings = settings.model_copy(update={"embedding": emb})
    paths = RetrievalPaths(home, DATASET, emb.embedder)

    rng = np.random.default_rng(0)
    if not args.online_only:
        # 1. Embeddings -----------------------------------------------------------------------
        log("building ML-100K samples for every day")
        items, samples = ml100k_samples()
        out["samples"] = len(samples)
        storage.publish_table(items_mod.items_to_arrow(items), paths.data.items, {"dataset": DATASET})
        embed_texts(items.text.tolist()[:16], emb, home)  # load the model once
        cached = storage.is_published(paths.items)
        t0 = time.perf_counter()
        catalog = ensure_item_vectors(settings, DATASET)  # embeds and caches every item text
        if cached:
            out["item_vectors"] = "cached from an earlier run (not an embedding measurement)"
        else:
            out["item_texts_per_s_local"] = round(len(catalog.ids) / (time.perf_counter() - t0), 1)
        cot_texts = [
            f"The user often watches {items.text.iloc[i % len(items)]} and similar films; the target item "
            f"shares {i % 3 + 1} genres with the history, so the match is moderate. The user purchases the target item."
            for i in range(args.cot_texts)
        ]
        if not args.skip_cot_embedding:
            t0 = time.perf_counter()
            embed_texts(cot_texts, emb, home)
            out["cot_texts_per_s_local"] = round(len(cot_texts) / (time.perf_counter() - t0), 1)
        if args.ray:
            ray_cfg = EmbeddingConfig(backend="ray", ray_min_texts=0, actors=2, actor_num_cpus=0.5)
            t0 = time.perf_counter()
            embed_texts(cot_texts, ray_cfg, home)
            out["cot_texts_per_s_ray_incl_startup"] = round(len(cot_texts) / (time.perf_counter() - t0), 1)
            t0 = time.perf_counter()
            embed_texts(cot_texts, ray_cfg, home)
            out["cot_texts_per_s_ray_warm"] = round(len(cot_texts) / (time.perf_counter() - t0), 1)
            import ray

            ray.shutdown()
        log(f"embeddings: {out}")

        # Pool and queries ----------------------------------------------------------------------
        h_all, t_all = sample_vectors(
            catalog, samples.item_id.to_numpy(np.int64), list(samples.history_item_ids)
        )
        is_pool = (samples.split == "train").to_numpy() & np.array(
            [in_fraction(s, args.pool_fraction) for s in samples.sample_id]
        )
        n_pool = int(is_pool.sum())
        cot = normalise(rng.normal(size=(n_pool, emb.dim)))
        pool = PoolIndex.from_arrays(
            sample_ids=samples.sample_id.to_numpy(object)[is_pool],
            user_ids=samples.user_id.to_numpy(np.int64)[is_pool],
            timestamps=samples.timestamp.to_numpy(np.int64)[is_pool],
            labels=samples.label.to_numpy(np.int8)[is_pool],
            history=h_all[is_pool],
            target=t_all[is_pool],
            cot=cot,
        )
        out["pool_rows"] = n_pool
        q = query_vectors(h_all, t_all, "ctr")
        q_ts = samples.timestamp.to_numpy(np.int64)

        # 3. Batch retrieval ----------------------------------------------------------------------
        log(f"exact search: {len(q)} queries against {n_pool} pool rows")
        exact_search(pool, h_all[:2048], t_all[:2048], q_ts[:2048])  # warm-up
        t0 = time.perf_counter()
        res = exact_search(pool, h_all, t_all, q_ts, per_label=2, block=1024)
        dt_exact = time.perf_counter() - t0
        out["exact_samples_per_s_whole_range"] = round(len(q) / dt_exact, 1)
        late = q_ts >= np.sort(pool.timestamps)[int(0.95 * n_pool)]  # queries that see >= 95% of the pool
        t0 = time.perf_counter()
        exact_search(pool, h_all[late], t_all[late], q_ts[late], per_label=2, block=1024)
        out["exact_samples_per_s_vs_full_pool"] = round(int(late.sum()) / (time.perf_counter() - t0), 1)
        out["late_queries"] = int(late.sum())
        if not args.skip_baseline:
            log("numpy brute-force baseline")
            t0 = time.perf_counter()
            b_rows, b_scores = numpy_baseline(pool, q, q_ts)
            out["numpy_bruteforce_samples_per_s_whole_range"] = round(len(q) / (time.perf_counter() - t0), 1)
            out["exact_vs_bruteforce_slot_agreement"] = agreement(res.rows, res.scores, b_rows, b_scores)
        out["padded_share_whole_range"] = round(float((res.rows < 0).any(axis=1).mean()), 4)
        log(f"batch: {out}")

        # 2 + 4. Qdrant, and the retrieve stage end to end on one day ---------------------------
        if not args.skip_qdrant:
            spec = PoolSpec(DATASET, emb.embedder, emb.dim, "bench", "v1")
            (paths.cot_root).mkdir(parents=True, exist_ok=True)
            paths.cot_pointer.write_text(json.dumps({"model_version": "bench", "prompt_version": "v1"}))
            item_of = dict(zip(samples.sample_id, samples.item_id, strict=True))
            days = np.array([str(utc_day(int(t))) for t in pool.timestamps])
            with QdrantStore.open(settings.qdrant, home, owner="bench") as store:
                name = store.create_collection(spec)
                upsert_s = 0.0
                for day in sorted(set(days)):
                    sel = days == day
                    pts = PoolPoints(
                        dt=day,
                        sample_ids=pool.sample_ids[sel].tolist(),
                        user_ids=pool.user_ids[sel],
                        item_ids=np.array([item_of[x] for x in pool.sample_ids[sel]], np.int64),
                        timestamps=pool.timestamps[sel],
                        labels=pool.labels[sel],
                        history=pool.history[sel],
                        target=pool.target[sel],
                        cot=pool.cot[sel],
                    )
                    t0 = time.perf_counter()
                    store.upsert(name, DATASET, pts)
                    upsert_s += time.perf_counter() - t0
                    publish_pool_table(paths, spec, dt.date.fromisoformat(day), pts)
                out["qdrant_local_upsert_points_per_s"] = round(n_pool / upsert_s, 1)
                store.finish_load(name)
                store.swap_alias(DATASET, name)
                out["qdrant_points"] = store.count(name)
                pick = rng.choice(np.flatnonzero(late), args.qdrant_queries, replace=False)
                lat, hits, total = [], 0, 0
                for i in pick:
                    for slot0, label in ((0, 1), (2, 0)):
                        t0 = time.perf_counter()
                        found = store.query(
                            name,
                            q[i],
                            using="joint",
                            label=label,
                            before_ts=int(q_ts[i]),
                            user_id=int(samples.user_id.iloc[i]),
                            exclude_sample_id=str(samples.sample_id.iloc[i]),
                            dataset=DATASET,
                            limit=2,
                        )
                        lat.append(time.perf_counter() - t0)
                        want = {str(pool.sample_ids[r]) for r in res.rows[i, slot0 : slot0 + 2] if r >= 0}
                        floor = min((s for s in res.scores[i, slot0 : slot0 + 2]), default=0)
                        hits += sum(1 for f in found if f.sample_id in want or abs(f.score - floor) <= 1e-5)
                        total += max(len(want), len(found))
                out["qdrant_local_query_ms_p50"] = round(pct(lat, 50), 2)
                out["qdrant_local_query_ms_p99"] = round(pct(lat, 99), 2)
                out["qdrant_local_queries_per_s"] = round(len(lat) / sum(lat), 2)
                out["qdrant_recall_vs_exact"] = round(hits / total, 4) if total else None
            log(f"qdrant: {out}")

            job_day = dt.date.fromisoformat(args.job_day)
            cfg = load_config("local").datasets[DATASET]
            inter = load_interactions(resolve_source(cfg), items)
            day_samples = build_samples(
                inter,
                job_day,
                history_len=cfg.history_len,
                positive_rating=cfg.positive_rating,
                valid_start=cfg.valid_start,
                test_start=cfg.test_start,
            )
            storage.publish_table(day_samples, paths.data.samples(job_day), {"dataset": DATASET})
            t0 = time.perf_counter()
            job = retrieve_partition(settings, DATASET, job_day)
            out["retrieve_stage_s"] = round(time.perf_counter() - t0, 2)
            out["retrieve_stage"] = {
                k: job[k] for k in ("rows", "pool_rows", "padded_share", "timings", "metrics")
            }
            log(f"retrieve stage: {out['retrieve_stage']} in {out['retrieve_stage_s']} s")

    # 5. Online index at a synthetic 80k pool ---------------------------------------------------------
    n, n_items, d = args.online_pool, args.online_items, emb.dim
    syn_catalog = ItemVectors(np.arange(1, n_items + 1), normalise(rng.normal(size=(n_items, d))))
    syn_items = rng.integers(1, n_items + 1, n)
    syn_hist = [rng.integers(1, n_items + 1, rng.integers(0, 21)) for _ in range(n)]
    syn_ts = np.sort(rng.integers(0, 10**8, n))
    syn_labels = rng.integers(0, 2, n).astype(np.int8)
    t0 = time.perf_counter()
    index = OnlineIndex(
        catalog=syn_catalog,
        sample_ids=[f"s{i}" for i in range(n)],
        timestamps=syn_ts,
        labels=syn_labels,
        item_ids=syn_items,
        history_item_ids=syn_hist,
        cot=None,
    )
    out["online_build_s"] = round(time.perf_counter() - t0, 2)
    lat = []
    for r in range(args.online_requests):
        hist = rng.integers(1, n_items + 1, 20)
        cands = rng.choice(n_items, args.candidates, replace=False) + 1
        t0 = time.perf_counter()
        index.retrieve(hist, cands, request_key=str(r))
        lat.append(time.perf_counter() - t0)
    out["online_request_ms_p50"] = round(pct(lat, 50), 2)
    out["online_request_ms_p99"] = round(pct(lat, 99), 2)
    out["online_request_ms_mean"] = round(float(np.mean(lat)) * 1000, 2)
    # The vector API (what llmcf_core.rec.scoring's Retriever hands over), same kind of requests.
    lat = []
    for r in range(args.online_requests):
        hist = rng.integers(1, n_items + 1, 20)
        cands = rng.choice(n_items, args.candidates, replace=False) + 1
        t0 = time.perf_counter()
        h_req = normalise(syn_catalog.lookup(hist).sum(axis=0, keepdims=True))[0]
        index.retrieve_vectors(h_req, syn_catalog.lookup(cands), request_key=str(r))
        lat.append(time.perf_counter() - t0)
    out["online_vector_request_ms_p50"] = round(pct(lat, 50), 2)
    out["online_vector_request_ms_p99"] = round(pct(lat, 99), 2)
    # correctness on a few requests against the offline exact search over the same pool
    h_s, t_s = sample_vectors(syn_catalog, syn_items, syn_hist)
    syn_pool = PoolIndex.from_arrays(
        sample_ids=np.array([f"s{i}" for i in range(n)], dtype=object),
        user_ids=np.arange(n),
        timestamps=syn_ts,
        labels=syn_labels,
        history=h_s,
        target=t_s,
        cot=t_s,
    )
    agree = []
    for _ in range(3):
        hist = rng.integers(1, n_items + 1, 20)
        cands = rng.choice(n_items, args.candidates, replace=False) + 1
        got = index.retrieve(hist, cands)
        hq, tq = sample_vectors(syn_catalog, cands, [hist] * len(cands))
        ref = exact_search(syn_pool, hq, tq, np.full(len(cands), 10**9))
        agree.append(np.allclose(np.sort(got.scores, axis=1), np.sort(ref.scores, axis=1), atol=1e-5))
    out["online_equals_exact"] = bool(all(agree))
    out["loadavg_end"] = os.getloadavg()
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)
    log(f"online: {out}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
