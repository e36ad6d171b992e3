"""Cheap post-publish gates for DAG check tasks: read manifests only (no numpy, no Qdrant).

    verify_pool_published(settings, "ml-100k", "1998-01-15", "smollm2-135m__v1-lc")  # embed_upsert
    verify_neighbors_published(settings, "ml-100k", "1998-01-15", "ctr", "smollm2-135m__v1-lc")

Each returns a small summary dict (for XCom) or raises ``InvalidArgument`` saying what is wrong;
the DAG task turns that into a non-retried failure.
"""

from __future__ import annotations

from typing import Any

from llmcf_core.config import Settings
from llmcf_core.layout import (
    CotVersion,
    InvalidArgument,
    RetrievalPaths,
    parse_partition,
    resolve_cot_version,
)
from llmcf_core.quality.publish import verify_published


def _check_cot_version(manifest: dict[str, Any], expected: CotVersion, where: str) -> str:
    """The CoT version (MODEL__PROMPT) the artifact was built from; must be ``expected`` (the
    version the run resolved: a mismatch means the stage read another version)."""
    spec = manifest.get("spec") or {}
    built = f"{spec.get('cot_model_version')}__{spec.get('cot_prompt_version')}"
    if built != expected.folder:
        raise InvalidArgument(f"{where} was built from CoT version {built}, not this run's {expected.folder}")
    return built


def verify_pool_published(
    settings: Settings, dataset: str, partition: str, cot_version: str | None = None
) -> dict[str, Any]:
    """The day's pool of CoT version ``cot_version`` (None: the promoted one) is published with
    passed ``checks`` (pool) and ``qdrant`` (counts) reports."""
    paths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
    version = resolve_cot_version(paths, cot_version)
    folder = paths.pool(parse_partition(partition), version)
    manifest = verify_published(folder, partition=partition, reports=("checks", "qdrant"))
    spec = manifest.get("spec") or {}
    if spec.get("embedder") != settings.embedding.embedder or spec.get("dim") != settings.embedding.dim:
        raise InvalidArgument(f"{folder} was built for {spec}, not the configured embedder")
    return {
        "partition": partition,
        "rows": manifest.get("rows"),
        "sha256": manifest.get("sha256"),
        "collection": manifest.get("collection"),
        "cot_version": _check_cot_version(manifest, version, str(folder)),
    }


def verify_neighbors_published(
    settings: Settings, dataset: str, partition: str, task: str = "ctr", cot_version: str | None = None
) -> dict[str, Any]:
    """The day's neighbours retrieved from CoT version ``cot_version``'s pool (None: the promoted
    one) are published with passed ``checks`` and ``agreement`` reports."""
    paths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
    version = resolve_cot_version(paths, cot_version)
    folder = paths.neighbors(parse_partition(partition), task, version)
    manifest = verify_published(folder, partition=partition, reports=("checks", "agreement"))
    if manifest.get("k") != settings.retrieval.k:
        raise InvalidArgument(f"{folder} has k={manifest.get('k')}, configured k={settings.retrieval.k}")
    return {
        "partition": partition,
        "task": task,
        "rows": manifest.get("rows"),
        "sha256": manifest.get("sha256"),
        "padded_share": manifest.get("padded_share"),
        "collection": manifest.get("collection"),
        "cot_version": _check_cot_version(manifest, version, str(folder)),
    }
