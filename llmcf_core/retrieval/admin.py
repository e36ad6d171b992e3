"""Collection and alias operations, as plain functions (an Airflow task and ``jobs.qdrant_admin``,
the CLI, call them).

Server mode reads ``LLMCF_QDRANT_URL`` / the API key variable (an Airflow task resolves the
connection ``qdrant_default`` into them: ``llmcf_airflow.qdrant_conn``). In local mode these
open the folder like any job, so they wait for a running job's client (``qdrant.lock_timeout_s``).
Bulk loading is never done here: that is ``jobs.embed_upsert`` (``--rebuild`` for a new collection).
The alias and ``cot/CURRENT`` move together: a swap or rollback to a collection of another CoT
version also points ``CURRENT`` at that version (as ``jobs.promote_cot`` does), so stages, online
scoring and the live collection never disagree on the version.
"""

from __future__ import annotations

from typing import Any

from llmcf_core.config import Settings
from llmcf_core.layout import InvalidArgument, RetrievalPaths
from llmcf_core.retrieval.spec import alias_name
from llmcf_core.retrieval.store import QdrantStore


def _open(settings: Settings, what: str) -> QdrantStore:
    return QdrantStore.open(settings.qdrant, settings.home, owner=f"admin {what}")


def status(settings: Settings, dataset: str) -> dict[str, Any]:
    """The alias, its collection and spec, and every collection of the dataset with its count."""
    with _open(settings, "status") as store:
        live = store.alias_target(dataset)
        collections = {}
        for name in store.collections(dataset):
            meta = store.metadata(name)
            collections[name] = {
                "points": store.count(name),
                "live": name == live,
                "live_since": meta.get("live_since"),
                "spec": meta.get("spec"),
            }
        return {"alias": alias_name(dataset), "live": live, "collections": collections}


def create_collection(settings: Settings, dataset: str, cot_version: str | None = None) -> str:
    """An empty collection (next generation) for the current spec; the alias is not touched."""
    from llmcf_core.retrieval.upsert import current_spec

    spec = current_spec(settings, dataset, cot_version)
    with _open(settings, "create") as store:
        return store.create_collection(spec)


def swap_alias(
    settings: Settings, dataset: str, collection: str, *, expect_points: int | None = None
) -> dict[str, Any]:
    """Point ``llmcf_<dataset>`` at ``collection`` atomically, refusing an empty or short one."""
    with _open(settings, "swap") as store:
        if collection not in store.collections(dataset):
            raise InvalidArgument(f"no collection {collection!r} for dataset {dataset!r}")
        points = store.count(collection)
        if points == 0 or (expect_points is not None and points != expect_points):
            raise InvalidArgument(
                f"refusing to swap to {collection}: {points} points (expected {expect_points or '> 0'})"
            )
        previous = store.swap_alias(dataset, collection)
        return {
            "alias": alias_name(dataset),
            "collection": collection,
            "previous": previous,
            "points": points,
            "cot_version": _follow(settings, dataset, store, collection),
        }


def rollback(settings: Settings, dataset: str) -> dict[str, Any]:
    """Point the alias back at the most recent previous collection."""
    with _open(settings, "rollback") as store:
        current = store.alias_target(dataset)
        target = store.rollback(dataset)
        return {
            "alias": alias_name(dataset),
            "collection": target,
            "previous": current,
            "cot_version": _follow(settings, dataset, store, target),
        }


def _follow(settings: Settings, dataset: str, store: QdrantStore, collection: str) -> str | None:
    """Point ``cot/CURRENT`` at the CoT version ``collection`` was built from; returns it."""
    from llmcf_core.layout import write_current
    from llmcf_core.retrieval.promote import model_of

    spec = store.spec_of(collection)
    if spec is None:
        return None
    paths = RetrievalPaths(settings.home, dataset, spec.embedder)
    days = paths.cot_days(spec.cot)
    model = model_of(paths, spec.cot, days[-1]) if days else None
    write_current(paths.data, spec.cot.model_version, spec.cot.prompt_version, model)
    return spec.cot.folder


def drop_collection(settings: Settings, dataset: str, collection: str) -> None:
    """Delete a collection that is not live."""
    with _open(settings, "drop") as store:
        if store.alias_target(dataset) == collection:
            raise InvalidArgument(f"{collection} is live: swap or roll back the alias first")
        store.drop(collection)
