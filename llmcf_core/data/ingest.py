"""Ingest one day partition: raw logs -> checked items, users and samples, published atomically.

Order of work: load -> check items -> check users (if the source has a users file) -> check the
partition's raw interactions -> build samples -> check samples -> publish items, users and
samples. Any failed check quarantines the failing rows under
``<dataset>/quarantine/<artifact>/dt=.../`` and publishes nothing.

The users table (``DataPaths.users``) exists only for datasets with user attributes: MovieLens
ships them; a custom dataset brings them with ``--users`` (or ``users:`` in its config). Without a
users file, ingest removes a users table left by an earlier ingest, so the table always matches
the inputs of the latest ingest. With one, every interaction's and sample's user_id must be in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import pyarrow as pa

from llmcf_core import fsio, quality, storage
from llmcf_core.config import DatasetConfig, Settings
from llmcf_core.data import items as items_mod
from llmcf_core.data import samples as samples_mod
from llmcf_core.data import users as users_mod
from llmcf_core.data.sources import RawSource, load_interactions, load_items, load_users, resolve_source
from llmcf_core.layout import INTERACTIONS, ITEMS, SAMPLES, USERS, DataPaths, InvalidArgument, utc_day
from llmcf_core.quality.publish import publish_checked, reject

log = logging.getLogger(__name__)

# Bump when the staged layout or the loaders change, so old caches are not reused.
_STAGING_VERSION = "2"


@dataclass
class IngestResult:
    dataset: str
    partition: str
    samples_path: Path
    rows: int
    changed: bool
    split: str
    checks: dict[str, Any] = field(default_factory=dict)
    users_rows: int | None = None  # rows of the published users table; None: the dataset has none

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "partition": self.partition,
            "samples_path": str(self.samples_path),
            "rows": self.rows,
            "changed": self.changed,
            "split": self.split,
            "checks": self.checks,
            "users_rows": self.users_rows,
        }


def dataset_config(
    settings: Settings,
    dataset: str,
    interactions: str | None,
    items: str | None,
    users: str | None = None,
) -> DatasetConfig:
    """The configured dataset, or an ad-hoc custom one when the user passes their own files."""
    if dataset in settings.datasets:
        cfg = settings.datasets[dataset]
        if interactions or items or users:
            update = {"source": "custom", "interactions": interactions, "items": items, "users": users}
            cfg = cfg.model_copy(update=update)
        return cfg
    if interactions and items:
        return DatasetConfig(source="custom", interactions=interactions, items=items, users=users)
    known = ", ".join(sorted(settings.datasets))
    raise InvalidArgument(
        f"unknown dataset {dataset!r}: configured datasets are {known}; "
        "pass --interactions and --items to ingest your own"
    )


def _staged_frames(paths: DataPaths, src: RawSource) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed sources are parsed once and cached as Parquet keyed by the input files' identity."""
    if src.kind == "custom":
        items = load_items(src)
        return items, load_interactions(src, items)
    key = hashlib.sha256("|".join([_STAGING_VERSION, *src.fingerprint_parts()]).encode()).hexdigest()[:16]
    folder = paths.staged_raw(key)
    # Two published tables (atomic each, local or object store); concurrent runs write the same bytes.
    inter_dir, items_dir = folder / INTERACTIONS, folder / ITEMS
    if storage.is_published(inter_dir) and storage.is_published(items_dir):
        return storage.read_partition(items_dir).to_pandas(), storage.read_partition(inter_dir).to_pandas()
    items = load_items(src)
    inter = load_interactions(src, items)
    items = items.drop(columns=[c for c in items.columns if c.startswith("_")])
    storage.publish_table(pa.Table.from_pandas(items, preserve_index=False), items_dir)
    storage.publish_table(pa.Table.from_pandas(inter, preserve_index=False), inter_dir)
    return items, inter


def _day_range(interactions: pd.DataFrame) -> tuple[dt.date, dt.date] | None:
    ts = pd.to_numeric(interactions["timestamp"], errors="coerce").dropna()
    if ts.empty:
        return None
    return utc_day(int(ts.min())), utc_day(int(ts.max()))


def _fail(
    paths: DataPaths, artifact: str, day: dt.date, df: pd.DataFrame, report: quality.CheckReport, limit: int
) -> NoReturn:
    folder = paths.quarantine(artifact, day)
    log.error("%s check failed: quarantining the failing rows at %s", artifact, folder)
    # items/users are unpartitioned: the note names the partition whose ingest failed.
    reject(df, report, folder, limit=limit, context=f"ingest dt={day.isoformat()}", what=f"{artifact} rows")


def ingest_partition(
    settings: Settings,
    dataset: str,
    day: dt.date,
    *,
    interactions: str | None = None,
    items: str | None = None,
    users: str | None = None,
) -> IngestResult:
    """Build, check and publish the samples of ``day`` (and the dataset's items and users tables)."""
    paths = DataPaths(settings.home, dataset)
    cfg = dataset_config(settings, dataset, interactions, items, users)
    src = resolve_source(cfg, interactions, items, users)
    items_raw, inter_raw = _staged_frames(paths, src)
    users_raw = load_users(src)
    limit = settings.quality.quarantine_max_rows
    partition = day.isoformat()

    bounds = _day_range(inter_raw)
    if bounds is None:
        raise InvalidArgument(f"dataset {dataset!r} has no interactions with a usable timestamp")
    if not bounds[0] <= day <= bounds[1]:
        raise InvalidArgument(
            f"partition {partition} is outside dataset {dataset!r}'s range {bounds[0]} .. {bounds[1]}"
        )

    items_df = items_mod.render_items(items_raw)
    items_report = quality.check_items(items_df, dataset=dataset)
    if not items_report.success:
        _fail(paths, "items", day, items_df, items_report, limit)
    known = set(items_df["item_id"].dropna().astype("int64").tolist())

    users_df, users_report, known_users = None, None, None
    if users_raw is not None:
        users_df = users_mod.render_users(users_raw)
        users_report = quality.check_users(users_df, dataset=dataset)
        if not users_report.success:
            _fail(paths, "users", day, users_df, users_report, limit)
        known_users = pd.to_numeric(users_df["user_id"]).astype("int64").to_numpy()

    scope = inter_raw[samples_mod.rows_for_partition(inter_raw, day)]
    inter_report = quality.check_interactions(
        scope, dataset=dataset, partition=day, known_item_ids=known, known_user_ids=known_users
    )
    if not inter_report.success:
        _fail(paths, "interactions", day, scope, inter_report, limit)

    table = samples_mod.build_samples(
        inter_raw,
        day,
        history_len=cfg.history_len,
        positive_rating=cfg.positive_rating,
        valid_start=cfg.valid_start,
        test_start=cfg.test_start,
    )
    samples_df = table.to_pandas()
    samples_report = quality.check_samples(
        samples_df,
        dataset=dataset,
        partition=day,
        known_item_ids=known,
        history_len=cfg.history_len,
        min_rows=cfg.min_rows_per_partition,
        positive_rating=cfg.positive_rating,
        known_user_ids=known_users,
    )
    if not samples_report.success:
        _fail(paths, "samples", day, samples_df, samples_report, limit)

    storage.publish_table(items_mod.items_to_arrow(items_df), paths.items, {"dataset": dataset})
    users_rows = None
    if users_df is not None:
        users_rows = storage.publish_table(
            users_mod.users_to_arrow(users_df), paths.users, {"dataset": dataset}
        ).rows
    elif paths.users.exists():
        log.warning("dataset %s has no users file now: removing its users table %s", dataset, paths.users)
        fsio.rmtree(paths.users)
    published = publish_checked(
        table,
        paths.samples(day),
        samples_report,
        {"dataset": dataset, "partition": partition, "source": src.kind},
        # a clean run clears the stale quarantine of every table it checked
        clear=[paths.quarantine(artifact, day) for artifact in (ITEMS, USERS, INTERACTIONS, SAMPLES)],
    )
    split = samples_mod.split_of(day, cfg.valid_start, cfg.test_start)
    return IngestResult(
        dataset=dataset,
        partition=partition,
        samples_path=published.path,
        rows=published.rows,
        changed=published.changed,
        split=split,
        checks={
            "items": items_report.success,
            **({"users": users_report.success} if users_report is not None else {}),
            "interactions": inter_report.success,
            "samples": samples_report.success,
        },
        users_rows=users_rows,
    )
