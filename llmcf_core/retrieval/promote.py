"""Promotion: the one step that moves the dataset's shared pointers to a CoT version.

Two pointers say which CoT version serves a dataset: ``<ds>/cot/CURRENT`` (what stages read when
a run names no version, what ``--model current`` extends, what online scoring and experiments
default to) and the Qdrant alias ``llmcf_<ds>`` (the live collection). CoT, embedding and
retrieval runs never move them: each run writes and reads the version it resolved. A promotion
(``jobs.promote_cot``, run by an operator or by the recgen DAG after a new model's CoTs exist):

1. checks that the new version covers the days it must: every day the promoted version has a
   published CoT partition for (up to ``through`` when given), so readers lose no day;
2. makes sure the version has a fully loaded collection holding exactly its published pool rows
   (building it from the version's CoT partitions with ``embed_upsert(rebuild=True)`` if not);
3. swaps the alias to that collection (one atomic request), then writes ``CURRENT`` (one atomic
   rename). A failure before 3 leaves both pointers as they were; rerunning finishes the job.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from llmcf_core import layout as cot_layout
from llmcf_core import storage
from llmcf_core.config import Settings
from llmcf_core.layout import CotVersion, InvalidArgument, RetrievalPaths, promoted_cot
from llmcf_core.retrieval.spec import alias_name
from llmcf_core.retrieval.store import QdrantStore
from llmcf_core.retrieval.upsert import current_spec, embed_upsert

log = logging.getLogger(__name__)


def missing_days(paths: RetrievalPaths, new: CotVersion, through: dt.date | None = None) -> list[dt.date]:
    """Days the promoted version has a CoT partition for (up to ``through``) and ``new`` lacks."""
    old = promoted_cot(paths)
    if old is None or old == new:
        return []
    must = {d for d in paths.cot_days(old) if through is None or d <= through}
    return sorted(must - set(paths.cot_days(new)))


def _pool_rows(paths: RetrievalPaths, version: CotVersion) -> tuple[int, list[dt.date]]:
    rows, days = 0, paths.pool_days(version)
    for day in days:
        rows += int((storage.read_manifest(paths.pool(day, version)) or {}).get("rows", 0))
    return rows, days


def promote(
    settings: Settings,
    dataset: str,
    version: str,
    *,
    through: dt.date | None = None,
    build: bool = True,
) -> dict[str, Any]:
    """Make CoT version ``version`` (MODEL__PROMPT) the dataset's promoted one; returns a summary."""
    spec = current_spec(settings, dataset, version)
    paths = RetrievalPaths(settings.home, dataset, spec.embedder)
    new = spec.cot
    cot_days = paths.cot_days(new)
    if not cot_days:
        raise InvalidArgument(
            f"promotion refused: CoT version {new.folder} has no published partition of {dataset}"
        )
    missing = missing_days(paths, new, through)
    if missing:
        old = promoted_cot(paths)
        assert old is not None
        raise InvalidArgument(
            f"promotion refused: CoT version {new.folder} lacks {len(missing)} day(s) that the promoted "
            f"{old.folder} covers ({missing[0]} .. {missing[-1]}); generate them first "
            "(jobs.replay --stages cot, or jobs.generate_cot per day), or pass --through"
        )

    owner = f"promote_cot {dataset} {new.folder}"
    built = False
    with QdrantStore.open(settings.qdrant, settings.home, owner=owner) as store:
        name = store.collection_of(spec)
    rows, pool_days = _pool_rows(paths, new)
    if name is None or set(pool_days) != set(cot_days):
        if not build:
            raise InvalidArgument(
                f"promotion refused: CoT version {new.folder} has no complete pool and collection "
                f"({len(pool_days)} of {len(cot_days)} days embedded); run jobs.embed_upsert --rebuild "
                f"--cot-version {new.folder}, or promote without --no-build"
            )
        log.info("building the pool and collection of %s before promoting it", new.folder)
        embed_upsert(settings, dataset, None, cot_version=new.folder, rebuild=True)
        built = True
        rows, pool_days = _pool_rows(paths, new)

    with QdrantStore.open(settings.qdrant, settings.home, owner=owner) as store:
        name = store.collection_of(spec)
        points = store.count(name) if name is not None else 0
        if name is None or points != rows:
            raise InvalidArgument(
                f"promotion refused: collection {name} of {new.folder} holds {points} points, its "
                f"published pool {rows} rows; rebuild it (jobs.embed_upsert --rebuild --cot-version "
                f"{new.folder})"
            )
        previous_collection = store.alias_target(dataset)
        if previous_collection != name:
            store.swap_alias(dataset, name)
    previous = promoted_cot(paths)
    model = model_of(paths, new, cot_days[-1])
    moved = cot_layout.write_current(paths.data, new.model_version, new.prompt_version, model)
    log.info("promoted %s for %s (alias %s -> %s)", new.folder, dataset, alias_name(dataset), name)
    return {
        "dataset": dataset,
        "cot_version": new.folder,
        "previous_cot_version": previous.folder if previous else None,
        "current_moved": moved,
        "alias": alias_name(dataset),
        "collection": name,
        "previous_collection": previous_collection,
        "alias_moved": previous_collection != name,
        "points": points,
        "days": len(cot_days),
        "built": built,
    }


def model_of(paths: RetrievalPaths, version: CotVersion, day: dt.date) -> str | None:
    """The model spec that wrote ``version`` (from a CoT partition's manifest), for ``--model current``."""
    manifest = storage.read_manifest(paths.cot_partition(day, version)) or {}
    return manifest.get("model")
