"""Cheap post-publish gates for DAG check tasks: read manifests only (no numpy, no Qdrant).

    verify_pool_published(settings, "ml-100k", "1998-01-15")       # after jobs.embed_upsert
    verify_neighbors_published(settings, "ml-100k", "1998-01-15")  # after jobs.retrieve

Each returns a small summary dict (for XCom) or raises ``InvalidArgument`` saying what is wrong;
the DAG task turns that into a non-retried failure.
"""

from __future__ import annotations

from typing import Any

from llmcf_core.config import Settings
from llmcf_core.paths import InvalidArgument, parse_partition
from llmcf_core.quality.publish import verify_published
from llmcf_core.retrieval.layout import RetrievalPaths


def _check_cot_version(manifest: dict[str, Any], expected: str | None, where: str) -> str:
    """The CoT version (MODEL__PROMPT) the artifact was built from; must be ``expected`` when given
    (the version the run's CoT task wrote: a mismatch means the stage read another version)."""
    spec = manifest.get("spec") or {}
    built = f"{spec.get('cot_model_version')}__{spec.get('cot_prompt_version')}"
    if expected and built != expected:
        raise InvalidArgument(f"{where} was built from CoT version {built}, not this run's {expected}")
    return built


def verify_pool_published(
    settings: Settings, dataset: str, partition: str, cot_version: str | None = None
) -> dict[str, Any]:
    """The day's pool is published with passed ``checks`` (pool) and ``qdrant`` (counts) reports,
    built from CoT version ``cot_version`` when given."""
    paths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
    folder = paths.pool(parse_partition(partition))
    manifest = verify_published(folder, partition=partition, reports=("checks", "qdrant"))
    spec = manifest.get("spec") or {}
    if spec.get("embedder") != settings.embedding.embedder or spec.get("dim") != settings.embedding.dim:
        raise InvalidArgument(f"{folder} was built for {spec}, not the configured embedder")
    return {
        "partition": partition,
        "rows": manifest.get("rows"),
        "sha256": manifest.get("sha256"),
        "collection": manifest.get("collection"),
        "cot_version": _check_cot_version(manifest, cot_version, str(folder)),
    }


def verify_neighbors_published(
    settings: Settings, dataset: str, partition: str, task: str = "ctr", cot_version: str | None = None
) -> dict[str, Any]:
    """The day's neighbours are published with passed ``checks`` and ``agreement`` reports, built
    from CoT version ``cot_version`` when given."""
    paths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
    folder = paths.neighbors(parse_partition(partition), task)
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
        "cot_version": _check_cot_version(manifest, cot_version, str(folder)),
    }
