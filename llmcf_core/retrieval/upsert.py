"""Stage ``embed_upsert``: embed a day's CoT pool, load it into Qdrant, check, publish.

Every run works on the CoT version it resolved (``--cot-version``, else the promoted one) and on
that version's collection (:meth:`QdrantStore.collection_of`); it never moves the alias
``llmcf_<dataset>`` to another version: only ``jobs.promote_cot`` does (``retrieval.promote``).

Daily (the version has a loaded collection): the day's points are upserted into it (deterministic
ids: a rerun rewrites the same points; points of the day that left the pool are deleted), then the
counts are verified (points of the day == pool rows of the day; points in the collection == rows of
all published pool partitions of the version) and only then is the pool partition published.

Full build (``rebuild=True``, or the version has no collection yet): a new collection (next
generation) is created with payload indexes and HNSW off, every day that has a CoT partition of
the version is loaded and its count verified, the total is verified, HNSW is switched on and the
collection is marked loaded. The alias mirrors ``cot/CURRENT``: only a build of the promoted version
(its rebuild, or its first build) is swapped in, in one atomic request (the previous collection
stays for rollback); a build of any other version leaves the alias where it is. Readers see the
old collection until then. Any failure drops the new collection and leaves the alias alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from llmcf_core import quality, storage
from llmcf_core.config import Settings
from llmcf_core.layout import POOL, InvalidArgument, RetrievalPaths, promoted_cot, resolve_cot_version
from llmcf_core.quality.publish import reject
from llmcf_core.retrieval import checks
from llmcf_core.retrieval.embed import ItemVectors, ensure_item_vectors
from llmcf_core.retrieval.pool import PreparedPool, prepare_pool, publish_pool
from llmcf_core.retrieval.spec import PoolSpec, alias_name, generation_of
from llmcf_core.retrieval.store import QdrantStore

log = logging.getLogger(__name__)


def current_spec(settings: Settings, dataset: str, cot_version: str | None = None) -> PoolSpec:
    """The pool spec of the configured embedder and CoT version ``cot_version`` (MODEL__PROMPT;
    None: the dataset's promoted version, ``cot/CURRENT``)."""
    emb = settings.embedding
    version = resolve_cot_version(RetrievalPaths(settings.home, dataset, emb.embedder), cot_version)
    return PoolSpec(dataset, emb.embedder, emb.dim, version.model_version, version.prompt_version)


def has_cot_partition(settings: Settings, dataset: str, day: dt.date, cot_version: str | None = None) -> bool:
    """Whether ``day`` has a published CoT partition of the pool's CoT version (what
    :func:`embed_upsert` needs for that day)."""
    spec = current_spec(settings, dataset, cot_version)
    paths = RetrievalPaths(settings.home, dataset, spec.embedder)
    return storage.is_published(paths.cot_partition(day, spec.cot))


def embed_upsert(
    settings: Settings,
    dataset: str,
    day: dt.date | None,
    *,
    cot_version: str | None = None,
    rebuild: bool = False,
    on_batch: Callable[[QdrantStore, str, int], None] | None = None,
) -> dict[str, Any]:
    """Embed and load ``day``'s pool (or rebuild everything); returns the job summary."""
    spec = current_spec(settings, dataset, cot_version)
    paths = RetrievalPaths(settings.home, dataset, spec.embedder)
    if day is None and not rebuild:
        raise InvalidArgument("a partition is required unless --rebuild is given")
    if day is not None and not storage.is_published(paths.cot_partition(day, spec.cot)):
        raise InvalidArgument(
            f"no published CoT partition for {day} and CoT version {spec.cot.folder}: "
            f"{paths.cot_partition(day, spec.cot)} (run the CoT stage for this day first)"
        )
    # The slow parts (embedding) run before the store is opened: the local store admits one client.
    items = ensure_item_vectors(settings, dataset)
    prepared = prepare_pool(settings, spec, day, items) if day is not None else None

    owner = f"embed_upsert {dataset} {day or 'rebuild'}"
    with QdrantStore.open(settings.qdrant, settings.home, owner=owner) as store:
        name = store.collection_of(spec)
        if rebuild or name is None:
            reason = "requested" if rebuild else f"first build of CoT version {spec.cot.folder}"
            log.info("full build of %s for %s: %s", alias_name(dataset), spec.cot.folder, reason)
            result = _rebuild(settings, store, spec, items, prepared, on_batch=on_batch)
            return {
                **result,
                "rebuilt": True,
                "reason": reason,
                "partition": day.isoformat() if day else None,
            }

        assert prepared is not None
        counts = store.replace_day(name, dataset, prepared.points())
        others = _published_rows(paths, spec, exclude=prepared.day)
        report = checks.check_metrics(
            [
                checks.equal(
                    "points_of_partition", store.count(name, dt=prepared.day.isoformat()), prepared.rows
                ),
                checks.equal("points_in_collection", store.count(name), others + prepared.rows),
            ],
            suite="qdrant",
            dataset=dataset,
            partition=prepared.day.isoformat(),
        )
        if not report.success:
            _quarantine(paths, prepared.day, report)
        published = publish_pool(settings, prepared, {"collection": name, "qdrant": report.to_dict()})
    return {
        **_summary(spec, name, prepared),
        "rebuilt": False,
        "partition": prepared.day.isoformat(),
        "changed": published.changed,
        "points_in_collection": others + prepared.rows,
        **counts,
    }


def _rebuild(
    settings: Settings,
    store: QdrantStore,
    spec: PoolSpec,
    items: ItemVectors,
    current: PreparedPool | None,
    *,
    on_batch: Callable[[QdrantStore, str, int], None] | None,
) -> dict[str, Any]:
    paths = RetrievalPaths(settings.home, spec.dataset, spec.embedder)
    days = paths.cot_days(spec.cot)
    if not days:
        raise InvalidArgument(f"no published CoT partition of version {spec.cot.folder} to build from")
    name = store.create_collection(spec)
    total = 0
    try:
        for day in days:
            prepared = (
                current
                if current is not None and current.day == day
                else prepare_pool(settings, spec, day, items)
            )
            hook = (lambda n, _name=name: on_batch(store, _name, n)) if on_batch else None
            store.upsert(name, spec.dataset, prepared.points(), on_batch=hook)
            total += prepared.rows
            day_report = checks.check_metrics(
                [checks.equal("points_of_partition", store.count(name, dt=day.isoformat()), prepared.rows)],
                suite="qdrant",
                dataset=spec.dataset,
                partition=day.isoformat(),
            )
            if not day_report.success:
                _quarantine(paths, day, day_report)
            publish_pool(settings, prepared, {"collection": name, "qdrant": day_report.to_dict()})
        report = checks.check_metrics(
            [checks.equal("points_in_collection", store.count(name), total)],
            suite="qdrant",
            dataset=spec.dataset,
        )
        if not report.success:
            raise quality.DataCheckFailed(report)
        store.finish_load(name)
        # The alias mirrors cot/CURRENT: a new build of the promoted version becomes live (a rebuild,
        # or its first build); a build of any other version leaves the alias where it is.
        swap = promoted_cot(paths) == spec.cot and store.alias_target(spec.dataset) != name
        previous = store.swap_alias(spec.dataset, name) if swap else None
    except BaseException:
        with contextlib.suppress(Exception):
            store.drop(name)
        raise
    _drop_superseded(store, spec, keep=name)
    return {
        **_summary(spec, name, current),
        "days_loaded": len(days),
        "points_in_collection": total,
        "previous_collection": previous,
        "alias_moved": swap,
    }


def _drop_superseded(store: QdrantStore, spec: PoolSpec, keep: str) -> None:
    """Older, fully loaded generations of ``spec`` that were never live (a version's earlier
    builds). Collections that were live once stay for rollback (``swap_alias`` prunes those); one
    without ``loaded_at`` may be another job's load in progress."""
    newest = generation_of(keep, spec) or 0
    live = store.alias_target(spec.dataset)
    for name in store.collections(spec.dataset):
        generation = generation_of(name, spec)
        if name == live or generation is None or generation >= newest:
            continue
        meta = store.metadata(name)
        if meta.get("loaded_at") and not meta.get("live_since"):
            with contextlib.suppress(Exception):
                store.drop(name)


def _quarantine(paths: RetrievalPaths, day: dt.date, report: quality.CheckReport) -> None:
    """Record a failed store check beside the pool's other quarantines, then raise."""
    reject(None, report, paths.data.quarantine(POOL, day))


def _published_rows(paths: RetrievalPaths, spec: PoolSpec, exclude: dt.date | None = None) -> int:
    """Rows of every published pool partition built for ``spec`` (what the collection must hold)."""
    total = 0
    for day in paths.pool_days(spec.cot):
        if day == exclude:
            continue
        manifest = storage.read_manifest(paths.pool(day, spec.cot)) or {}
        if manifest.get("spec") == spec.to_dict():
            total += int(manifest.get("rows", 0))
    return total


def _summary(spec: PoolSpec, collection: str, prepared: PreparedPool | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dataset": spec.dataset,
        "embedder": spec.embedder,
        "cot_version": spec.cot.folder,
        "collection": collection,
        "alias": alias_name(spec.dataset),
    }
    if prepared is not None:
        out.update({"rows": prepared.rows, "reused_pool": prepared.reused, "stats": prepared.stats})
    return out
