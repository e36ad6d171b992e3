"""The in-context pool in Qdrant: one client API for the embedded local mode and for a server.

Layout: one collection per (dataset, embedder, CoT version, generation) named
``llmcf_<ds>__<embedder>__<model>__<prompt>__g<N>``; the stages of a run write and read the newest
loaded generation of the CoT version they resolved (:meth:`QdrantStore.collection_of`); the alias
``llmcf_<ds>`` names the promoted one (moved only by ``jobs.promote_cot``, ``jobs.qdrant_admin``).
Each point has four named vectors (``history``, ``target``, ``cot``: d each; ``joint`` =
[history; target]/sqrt(2), 2d, whose dot product is the paper's 0.5 cos(h) + 0.5 cos(t)), all
with DOT distance so that scores equal the exact ones (an empty history is a zero vector, which
cosine distance would re-normalise), and the payload sample_id, user_id, item_id, timestamp,
label, dt. Point ids are UUID5 of ``<dataset>:<sample_id>``, so reruns overwrite.

Local mode allows one client per folder (qdrant-client locks it). :meth:`QdrantStore.open` waits
up to ``qdrant.lock_timeout_s`` for another job's client, then raises :class:`StoreBusy` naming
the holder. Jobs therefore open the store once, do their upserts and queries in that one client,
and close it. A server has no such limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmcf_core import fsio
from llmcf_core.config import QdrantConfig
from llmcf_core.layout import InvalidArgument
from llmcf_core.retrieval.spec import URL_ENV, PoolSpec, alias_name, collection_name, generation_of

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

log = logging.getLogger(__name__)

_POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "llmcf/qdrant-points")
_OWNER_FILE = ".llmcf-owner.json"
_BUSY_MARK = "already accessed by another instance"
VECTOR_NAMES = ("history", "target", "cot", "joint")
PAYLOAD_INDEXES = {
    "sample_id": "keyword",
    "dt": "keyword",
    "user_id": "integer",
    "item_id": "integer",
    "timestamp": "integer",
    "label": "integer",
}


class StoreBusy(RuntimeError):
    """The local Qdrant folder is held by another client (another job or process)."""


def point_id(dataset: str, sample_id: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{dataset}:{sample_id}"))


def joint_vectors(history: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[h; t] / sqrt(2): one vector whose dot product is 0.5 h.h' + 0.5 t.t'."""
    return (np.concatenate([history, target], axis=1) / np.float32(math.sqrt(2.0))).astype(np.float32)


@dataclass(frozen=True)
class PoolPoints:
    """One day's pool as points to upsert (arrays aligned by row)."""

    dt: str
    sample_ids: Sequence[str]
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray
    history: np.ndarray
    target: np.ndarray
    cot: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass(frozen=True)
class Hit:
    sample_id: str
    score: float


def local_path(cfg: QdrantConfig, home: Any) -> Path:
    """Qdrant's embedded (local mode) folder; always local: in the cache for an object-store root."""
    path = Path(cfg.path).expanduser()
    if path.is_absolute():
        return path
    return (fsio.cache_root() if fsio.is_url(home) else Path(home)) / path


def server_url(cfg: QdrantConfig) -> str | None:
    return os.environ.get(URL_ENV) or cfg.url


def _models() -> Any:
    from qdrant_client import models

    return models


class QdrantStore:
    """A Qdrant client bound to this project's naming; use as a context manager."""

    def __init__(
        self, client: QdrantClient, cfg: QdrantConfig, where: str, local: Path | None = None
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.where = where
        self._local = local

    # ---------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, cfg: QdrantConfig, home: Path, *, owner: str = "", lock_timeout_s: float | None = None
    ) -> QdrantStore:
        """Connect to the server, or open the local folder (waiting for another client to let go)."""
        from qdrant_client import QdrantClient

        if cfg.mode == "server":
            url = server_url(cfg)
            if not url:
                raise InvalidArgument(
                    f"qdrant.mode is 'server' but no URL is configured: set {URL_ENV} or qdrant.url"
                )
            api_key = os.environ.get(cfg.api_key_env) or None
            return cls(QdrantClient(url=url, api_key=api_key, timeout=cfg.timeout_s), cfg, url)

        path = local_path(cfg, home)
        path.mkdir(parents=True, exist_ok=True)
        wait = cfg.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "local mode is not for > 20k points"
                    client = QdrantClient(path=str(path))
                break
            except RuntimeError as exc:
                if _BUSY_MARK not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreBusy(_busy_message(path, wait)) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        _write_owner(path, owner)
        store = cls(client, cfg, str(path), local=path)
        store._fast_local_writes()
        return store

    def _fast_local_writes(self) -> None:
        """Local mode commits every point in its own sqlite transaction: one fsync per point, ~60
        points/s on a busy disk. WAL with synchronous=NORMAL makes those commits cheap (~30x) and
        stays consistent after a crash; the pool Parquet is the source of truth and the count
        checks catch a lost write. Reaches into qdrant-client's local internals; if they change,
        writes are only slower."""
        collections = getattr(getattr(self.client, "_client", None), "collections", None) or {}
        for collection in collections.values():
            conn = getattr(getattr(collection, "storage", None), "storage", None)
            if conn is not None:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")

    def close(self) -> None:
        if self._local is not None:
            with contextlib.suppress(OSError):
                (self._local / _OWNER_FILE).unlink()
        self.client.close()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- collections

    def collections(self, dataset: str) -> list[str]:
        prefix = f"{alias_name(dataset)}__"
        return sorted(c.name for c in self.client.get_collections().collections if c.name.startswith(prefix))

    def alias_target(self, dataset: str) -> str | None:
        alias = alias_name(dataset)
        for a in self.client.get_aliases().aliases:
            if a.alias_name == alias:
                return a.collection_name
        return None

    def metadata(self, name: str) -> dict[str, Any]:
        return dict(self.client.get_collection(name).config.metadata or {})

    def spec_of(self, name: str) -> PoolSpec | None:
        return PoolSpec.from_dict(self.metadata(name).get("spec"))

    def live(self, dataset: str) -> tuple[str, PoolSpec | None] | None:
        """(collection, its spec) behind the dataset's alias, or None before the first build."""
        name = self.alias_target(dataset)
        return None if name is None else (name, self.spec_of(name))

    def collection_of(self, spec: PoolSpec) -> str | None:
        """The collection of ``spec`` that stages read and write: the alias target when it was built
        for ``spec``, else the newest fully loaded generation of ``spec`` (None if there is none)."""
        live = self.live(spec.dataset)
        if live is not None and live[1] == spec:
            return live[0]
        loaded = []
        for name in self.collections(spec.dataset):
            generation = generation_of(name, spec)
            if generation is not None and self.metadata(name).get("loaded_at"):
                loaded.append((generation, name))
        return max(loaded)[1] if loaded else None

    def count(self, name: str, *, dt: str | None = None, before_ts: int | None = None) -> int:
        models = _models()
        must = []
        if dt is not None:
            must.append(models.FieldCondition(key="dt", match=models.MatchValue(value=dt)))
        if before_ts is not None:
            must.append(models.FieldCondition(key="timestamp", range=models.Range(lt=before_ts)))
        flt = models.Filter(must=must) if must else None
        return int(self.client.count(name, count_filter=flt, exact=True).count)

    def create_collection(self, spec: PoolSpec) -> str:
        """A new, empty collection for ``spec`` (next generation), payload indexes first, HNSW off."""
        models = _models()
        taken = [g for c in self.collections(spec.dataset) if (g := generation_of(c, spec)) is not None]
        name = collection_name(spec, max(taken, default=0) + 1)
        d = spec.dim
        vectors = {n: models.VectorParams(size=d, distance=models.Distance.DOT) for n in VECTOR_NAMES[:3]}
        vectors["joint"] = models.VectorParams(size=2 * d, distance=models.Distance.DOT)
        self.client.create_collection(
            name,
            vectors_config=vectors,
            hnsw_config=models.HnswConfigDiff(m=0),  # bulk load without building the graph
            metadata={"spec": spec.to_dict(), "created_at": _now()},
        )
        schema = {"keyword": models.PayloadSchemaType.KEYWORD, "integer": models.PayloadSchemaType.INTEGER}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # local mode: "payload indexes have no effect"
            for field, kind in PAYLOAD_INDEXES.items():
                self.client.create_payload_index(name, field, field_schema=schema[kind], wait=True)
        if self._local is not None:
            self._fast_local_writes()
        log.info("created collection %s", name)
        return name

    def finish_load(self, name: str) -> None:
        """Turn HNSW indexing on after a bulk load (a no-op in local mode, which is exact) and mark
        the collection complete (``loaded_at``): only then does :meth:`collection_of` return it."""
        models = _models()
        self.client.update_collection(
            name, hnsw_config=models.HnswConfigDiff(m=self.cfg.hnsw_m), metadata={"loaded_at": _now()}
        )

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)
        log.info("dropped collection %s", name)

    def swap_alias(self, dataset: str, name: str) -> str | None:
        """Point the dataset's alias at ``name`` in one atomic request; returns the previous target.

        The previous collection is kept for rollback; collections that were live before it are
        dropped beyond ``qdrant.keep_previous``.
        """
        models = _models()
        alias = alias_name(dataset)
        previous = self.alias_target(dataset)
        self.client.update_collection(name, metadata={"live_since": _now()})
        ops: list[Any] = []
        if previous is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)
        log.info("alias %s: %s -> %s", alias, previous, name)
        self._prune(dataset, keep=self.cfg.keep_previous)
        return previous

    def previous_collections(self, dataset: str) -> list[str]:
        """Collections that were live before the current one, newest first."""
        live = self.alias_target(dataset)
        was_live = []
        for c in self.collections(dataset):
            since = self.metadata(c).get("live_since")
            if c != live and since:
                was_live.append((since, c))
        return [c for _, c in sorted(was_live, reverse=True)]

    def rollback(self, dataset: str) -> str:
        """Point the alias back at the most recent previous collection."""
        previous = self.previous_collections(dataset)
        if not previous:
            raise InvalidArgument(f"no previous collection of {dataset!r} to roll back to")
        self.swap_alias(dataset, previous[0])
        return previous[0]

    def _prune(self, dataset: str, keep: int) -> None:
        # Only collections that were live once: a never-live one may be a load in progress.
        for name in self.previous_collections(dataset)[keep:]:
            self.drop(name)

    # ---------------------------------------------------------------------------- points

    def upsert(
        self,
        name: str,
        dataset: str,
        points: PoolPoints,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Upsert a day's pool in batches of ``qdrant.upsert_batch``; returns points written."""
        models = _models()
        joint = joint_vectors(points.history, points.target)
        size = self.cfg.upsert_batch
        for start in range(0, len(points), size):
            sl = slice(start, start + size)
            ids = [point_id(dataset, s) for s in points.sample_ids[sl]]
            payloads = [
                {
                    "sample_id": str(s),
                    "user_id": int(u),
                    "item_id": int(i),
                    "timestamp": int(t),
                    "label": int(lab),
                    "dt": points.dt,
                }
                for s, u, i, t, lab in zip(
                    points.sample_ids[sl],
                    points.user_ids[sl],
                    points.item_ids[sl],
                    points.timestamps[sl],
                    points.labels[sl],
                    strict=True,
                )
            ]
            vectors = {
                "history": points.history[sl].tolist(),
                "target": points.target[sl].tolist(),
                "cot": points.cot[sl].tolist(),
                "joint": joint[sl].tolist(),
            }
            batch = models.Batch(ids=ids, vectors=vectors, payloads=payloads)
            self.client.upsert(name, points=batch, wait=True)
            if on_batch is not None:
                on_batch(min(start + size, len(points)))
        return len(points)

    def ids_of_day(self, name: str, day: str) -> set[str]:
        models = _models()
        flt = models.Filter(must=[models.FieldCondition(key="dt", match=models.MatchValue(value=day))])
        found: set[str] = set()
        offset = None
        while True:
            records, offset = self.client.scroll(
                name, scroll_filter=flt, limit=1024, offset=offset, with_payload=False, with_vectors=False
            )
            found.update(str(r.id) for r in records)
            if offset is None:
                return found

    def replace_day(self, name: str, dataset: str, points: PoolPoints) -> dict[str, int]:
        """Upsert a day's pool and delete that day's points that are no longer in it."""
        models = _models()
        keep = {point_id(dataset, s) for s in points.sample_ids}
        stale = sorted(self.ids_of_day(name, points.dt) - keep)
        written = self.upsert(name, dataset, points)
        if stale:
            self.client.delete(name, points_selector=models.PointIdsList(points=stale), wait=True)
        return {"upserted": written, "deleted_stale": len(stale)}

    def query(
        self,
        name: str,
        vector: np.ndarray,
        *,
        using: str,
        label: int,
        before_ts: int,
        user_id: int,
        exclude_sample_id: str,
        dataset: str,
        limit: int,
    ) -> list[Hit]:
        """Top ``limit`` points with ``label`` under the leakage rules, by dot product on ``using``."""
        models = _models()
        flt = models.Filter(
            must=[
                models.FieldCondition(key="label", match=models.MatchValue(value=int(label))),
                models.FieldCondition(key="timestamp", range=models.Range(lt=int(before_ts))),
            ],
            must_not=[
                models.HasIdCondition(has_id=[point_id(dataset, exclude_sample_id)]),
                models.Filter(
                    must=[
                        models.FieldCondition(key="user_id", match=models.MatchValue(value=int(user_id))),
                        models.FieldCondition(key="timestamp", range=models.Range(gte=int(before_ts))),
                    ]
                ),
            ],
        )
        res = self.client.query_points(
            name,
            query=np.asarray(vector, dtype=np.float32).tolist(),
            using=using,
            query_filter=flt,
            limit=limit,
            with_payload=["sample_id"],
        )
        return [Hit(str(p.payload["sample_id"]), float(p.score)) for p in res.points]


@contextlib.contextmanager
def open_store(cfg: QdrantConfig, home: Path, *, owner: str = "") -> Iterator[QdrantStore]:
    store = QdrantStore.open(cfg, home, owner=owner)
    try:
        yield store
    finally:
        store.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _write_owner(path: Path, owner: str) -> None:
    info = {"pid": os.getpid(), "owner": owner or "unknown", "since": _now()}
    with contextlib.suppress(OSError):
        (path / _OWNER_FILE).write_text(json.dumps(info))


def _busy_message(path: Path, waited: float) -> str:
    try:
        info = json.loads((path / _OWNER_FILE).read_text())
        holder = f"{info.get('owner')} (pid {info.get('pid')}, since {info.get('since')})"
    except (OSError, ValueError):
        holder = "another process"
    return (
        f"the local Qdrant folder {path} is in use by {holder}; waited {waited:.0f} s. "
        "Local mode allows one client per folder: run upserts and queries in one job, wait for the "
        "other job to finish (qdrant.lock_timeout_s), or use a Qdrant server (qdrant.mode: server)."
    )
