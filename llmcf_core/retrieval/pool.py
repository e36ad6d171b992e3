"""The in-context pool of one day: the day's CoT rows joined to their samples, embedded.

A pool row is a training sample with a usable CoT (``cot_text`` present, no ``error``,
``finish_reason`` not "error") of the dataset's CoT version. Its vectors: ``history_vec`` (the
normalised mean of the history items' vectors, zero for an empty history), ``target_vec`` (the
target item's vector) and ``cot_vec`` (the CoT text's vector). The published partition
``<ds>/embeddings/<embedder>/pool/<cot version>/dt=D/`` mirrors what Qdrant holds for that day, so whole-pool
retrieval reads Parquet instead of querying Qdrant point by point.

:func:`prepare_pool` reuses a published partition when its inputs (CoT and samples partitions,
item texts, spec) are unchanged, so reruns do not re-embed CoTs.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from llmcf_core import quality, storage
from llmcf_core.config import Settings
from llmcf_core.layout import POOL, InvalidArgument, RetrievalPaths
from llmcf_core.quality.publish import publish_checked, reject
from llmcf_core.retrieval import checks
from llmcf_core.retrieval.embed import (
    ItemVectors,
    arrow_to_vectors,
    embed_texts,
    sample_vectors,
    vectors_to_arrow,
)
from llmcf_core.retrieval.spec import PoolSpec
from llmcf_core.retrieval.store import PoolPoints

log = logging.getLogger(__name__)

VECTOR_COLUMNS = ("history_vec", "target_vec", "cot_vec")


def pool_schema(dim: int) -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            ("sample_id", pa.string()),
            ("user_id", pa.int64()),
            ("timestamp", pa.int64()),
            ("label", pa.int8()),
            ("history_vec", vec),
            ("target_vec", vec),
            ("cot_vec", vec),
        ]
    )


@dataclass
class PreparedPool:
    """One day's pool, checked; ``reused`` when the published partition already matched."""

    day: dt.date
    spec: PoolSpec
    table: pa.Table
    item_ids: np.ndarray
    inputs: dict[str, Any]
    report: quality.CheckReport
    reused: bool
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def points(self) -> PoolPoints:
        t = self.table
        d = self.spec.dim
        return PoolPoints(
            dt=self.day.isoformat(),
            sample_ids=t.column("sample_id").to_pylist(),
            user_ids=t.column("user_id").to_numpy(),
            item_ids=self.item_ids,
            timestamps=t.column("timestamp").to_numpy(),
            labels=t.column("label").to_numpy(),
            history=arrow_to_vectors(t.column("history_vec"), d),
            target=arrow_to_vectors(t.column("target_vec"), d),
            cot=arrow_to_vectors(t.column("cot_vec"), d),
        )

    def metadata(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "dataset": self.spec.dataset,
            "partition": self.day.isoformat(),
            "checks": self.report.to_dict(),
            "spec": self.spec.to_dict(),
            "inputs": self.inputs,
            "stats": self.stats,
            **extra,
        }


def _usable_cot(cot: pd.DataFrame) -> np.ndarray:
    text_ok = cot["cot_text"].notna() & (cot["cot_text"].astype(str).str.strip() != "")
    error_ok = cot["error"].isna() if "error" in cot else True
    finish_ok = cot["finish_reason"].astype(str) != "error" if "finish_reason" in cot else True
    return (text_ok & error_ok & finish_ok).to_numpy(dtype=bool)


def _inputs(paths: RetrievalPaths, day: dt.date, spec: PoolSpec, items_sha: str | None) -> dict[str, Any]:
    cot = storage.read_manifest(paths.cot_partition(day, spec.cot)) or {}
    samples = storage.read_manifest(paths.data.samples(day)) or {}
    return {
        "cot_sha256": cot.get("sha256"),
        "samples_sha256": samples.get("sha256"),
        "items_sha256": items_sha,
    }


def prepare_pool(settings: Settings, spec: PoolSpec, day: dt.date, items: ItemVectors) -> PreparedPool:
    """Build (or reuse) and check the pool of ``day``; a failed check quarantines and raises."""
    paths = RetrievalPaths(settings.home, spec.dataset, spec.embedder)
    cot_dir = paths.cot_partition(day, spec.cot)
    if not storage.is_published(cot_dir):
        raise InvalidArgument(f"no published CoT partition {cot_dir} (CoT version {spec.cot.folder})")
    if not storage.is_published(paths.data.samples(day)):
        raise InvalidArgument(f"no published samples partition {paths.data.samples(day)}")
    items_manifest = storage.read_manifest(paths.items) or {}
    inputs = _inputs(paths, day, spec, items_manifest.get("texts_sha256"))

    published = storage.read_manifest(paths.pool(day, spec.cot))
    if published and published.get("inputs") == inputs and published.get("spec") == spec.to_dict():
        table = storage.read_partition(paths.pool(day, spec.cot))
        samples = storage.read_partition(
            paths.data.samples(day), columns=["sample_id", "item_id"]
        ).to_pandas()
        item_of = dict(zip(samples["sample_id"], samples["item_id"], strict=True))
        item_ids = np.array([item_of[s] for s in table.column("sample_id").to_pylist()], dtype=np.int64)
        report = _report_from_dict(published["checks"])
        return PreparedPool(day, spec, table, item_ids, inputs, report, True, published.get("stats", {}))

    cot = storage.read_partition(cot_dir).to_pandas()
    usable = _usable_cot(cot)
    cot_ok = cot.loc[usable, ["sample_id", "label", "cot_text"]].reset_index(drop=True)
    samples = storage.read_partition(
        paths.data.samples(day),
        columns=["sample_id", "user_id", "item_id", "timestamp", "label", "history_item_ids"],
    ).to_pandas()
    frame = cot_ok.rename(columns={"label": "cot_label"}).merge(samples, on="sample_id", how="left")
    frame = frame.sort_values(["timestamp", "sample_id"], kind="stable", na_position="last").reset_index(
        drop=True
    )
    in_samples = frame["user_id"].notna().to_numpy()

    n, d = len(frame), spec.dim
    history = np.zeros((n, d), np.float32)
    target = np.zeros((n, d), np.float32)
    if in_samples.any():
        ok = frame[in_samples]
        h, t = sample_vectors(items, ok["item_id"].astype("int64"), list(ok["history_item_ids"]))
        history[in_samples], target[in_samples] = h, t
    cot_vec = embed_texts(frame["cot_text"].astype(str).tolist(), settings.embedding, settings.home)
    history_len = np.array(
        [len(h) if isinstance(h, list | np.ndarray) else 0 for h in frame["history_item_ids"]]
    )

    report = checks.check_pool(
        frame,
        {"history_vec": history, "target_vec": target, "cot_vec": cot_vec},
        history_len=history_len,
        in_samples=in_samples,
        dataset=spec.dataset,
        day=day,
        dim=d,
    )
    if not report.success:
        reject(
            frame.drop(columns=["history_item_ids"]),
            report,
            paths.data.quarantine(POOL, day),
            limit=settings.quality.quarantine_max_rows,
        )

    table = pa.table(
        {
            "sample_id": pa.array(frame["sample_id"].astype(str), pa.string()),
            "user_id": pa.array(frame["user_id"].astype("int64"), pa.int64()),
            "timestamp": pa.array(frame["timestamp"].astype("int64"), pa.int64()),
            "label": pa.array(frame["label"].astype("int8"), pa.int8()),
            "history_vec": vectors_to_arrow(history),
            "target_vec": vectors_to_arrow(target),
            "cot_vec": vectors_to_arrow(cot_vec),
        },
        schema=pool_schema(d),
    )
    stats = {"cot_rows": len(cot), "cot_unusable": int((~usable).sum()), "pool_rows": n}
    item_ids = frame["item_id"].astype("int64").to_numpy()
    return PreparedPool(day, spec, table, item_ids, inputs, report, False, stats)


def _report_from_dict(raw: dict[str, Any]) -> quality.CheckReport:
    """The CheckReport recorded in a reused partition's manifest."""
    return quality.CheckReport(
        suite=raw["suite"],
        dataset=raw["dataset"],
        partition=raw["partition"],
        rows=raw["rows"],
        evaluated=raw["evaluated"],
        failures=[quality.Failure(**f) for f in raw.get("failures", [])],
    )


def publish_pool(settings: Settings, prepared: PreparedPool, extra: dict[str, Any]) -> storage.PublishResult:
    paths = RetrievalPaths(settings.home, prepared.spec.dataset, prepared.spec.embedder)
    return publish_checked(
        prepared.table,
        paths.pool(prepared.day, prepared.spec.cot),
        prepared.report,
        prepared.metadata(extra),
        clear=[paths.data.quarantine(POOL, prepared.day)],
    )


# --------------------------------------------------------------------------------------------
# Reading the published pool (retrieval, online index)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolIndex:
    """Pool rows of several days, sorted by (timestamp, sample_id)."""

    sample_ids: np.ndarray  # (n,) object (str)
    user_ids: np.ndarray  # (n,) int64
    timestamps: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) int8
    history: np.ndarray  # (n, d) float32
    target: np.ndarray  # (n, d) float32
    cot: np.ndarray  # (n, d) float32

    def __len__(self) -> int:
        return len(self.sample_ids)

    @classmethod
    def empty(cls, dim: int) -> PoolIndex:
        z = np.zeros((0, dim), np.float32)
        return cls(
            np.zeros(0, object), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), z, z, z
        )

    @classmethod
    def from_arrays(cls, **arrays: np.ndarray) -> PoolIndex:
        order = np.lexsort((arrays["sample_ids"].astype(str), arrays["timestamps"]))
        return cls(**{k: np.asarray(v)[order] for k, v in arrays.items()})


@dataclass
class LoadedPool:
    index: PoolIndex
    days: list[str]
    skipped: dict[str, str]  # day -> why it was left out


def load_pool(settings: Settings, spec: PoolSpec, until: dt.date) -> LoadedPool:
    """Every published pool partition of ``spec`` up to ``until`` (others are reported, not used)."""
    paths = RetrievalPaths(settings.home, spec.dataset, spec.embedder)
    tables, days, skipped = [], [], {}
    for day in paths.pool_days(spec.cot, until):
        manifest = storage.read_manifest(paths.pool(day, spec.cot)) or {}
        if manifest.get("spec") != spec.to_dict():
            skipped[day.isoformat()] = f"built for {manifest.get('spec')}"
            continue
        tables.append(storage.read_partition(paths.pool(day, spec.cot)))
        days.append(day.isoformat())
    if not tables:
        return LoadedPool(PoolIndex.empty(spec.dim), days, skipped)
    t = pa.concat_tables(tables)
    d = spec.dim
    index = PoolIndex.from_arrays(
        sample_ids=np.array(t.column("sample_id").to_pylist(), dtype=object),
        user_ids=t.column("user_id").to_numpy().astype(np.int64),
        timestamps=t.column("timestamp").to_numpy().astype(np.int64),
        labels=t.column("label").to_numpy().astype(np.int8),
        history=arrow_to_vectors(t.column("history_vec"), d),
        target=arrow_to_vectors(t.column("target_vec"), d),
        cot=arrow_to_vectors(t.column("cot_vec"), d),
    )
    return LoadedPool(index, days, skipped)
