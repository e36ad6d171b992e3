"""Which model writes a CoT version, and the gate that a day's CoT version is published.

Where versions, blocks and the ``CURRENT`` pointer live is ``llmcf_core.layout``; this module
resolves a model spec (``recgen:latest`` / ``recgen:<version>``, a base model name, a folder) to
the folder to load and the model version it writes, and ``current`` to the promoted version's
model. Standard library + ``llmcf_core.layout`` at import: DAG check tasks import this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcf_core import fsio
from llmcf_core.layout import (
    LATEST,
    DataPaths,
    InvalidArgument,
    check_recgen_version,
    parse_partition,
    read_current,
    recgen_latest,
    recgen_version_dir,
    sanitize_version,
    version_dir,
)

RECGEN_PREFIX = "recgen:"
CURRENT_MODEL = "current"  # --model current: the model of the promoted version


def model_for_run(paths: DataPaths, requested: str, default: str) -> str:
    """The model spec a CoT run uses: ``requested``, or for ``current`` the model of the promoted
    version (``default``, the configured model, before any promotion or for an old pointer)."""
    if requested != CURRENT_MODEL:
        return requested
    current = read_current(paths) or {}
    return current.get("model") or default


@dataclass(frozen=True)
class ModelRef:
    """A generating model: what was asked for, the folder to load, and the version it writes."""

    spec: str
    path: Path
    model_version: str


def _recgen_version(home: Path, requested: str) -> str:
    if requested in ("", LATEST):
        pointer = recgen_latest(home)
        try:
            requested = str(json.loads(pointer.read_text(encoding="utf-8"))["version"])
        except FileNotFoundError:
            raise InvalidArgument(
                f"no RecGen model registered: {pointer} does not exist (train one, or pass a base model)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"unreadable RecGen pointer {pointer}: {exc}") from None
    return check_recgen_version(requested)


def resolve_cot_model(spec: str, home: Path) -> ModelRef:
    """``recgen:latest`` / ``recgen:<version>`` (the RecGen registry), a base model name, or a folder.

    The model version is ``recgen-<version>`` for registry models (the resolved version, never
    "latest", so a new RecGen model writes a new CoT version), the name for base models and the
    folder's name for folders.
    """
    from llmcf_core.llm import models

    if spec.startswith(RECGEN_PREFIX):
        version = _recgen_version(home, spec[len(RECGEN_PREFIX) :])
        folder = recgen_version_dir(home, version)
        if not (folder / "config.json").is_file():
            raise InvalidArgument(f"RecGen version {version!r} has no model at {folder}")
        # Engines load local folders: a model in an object-store registry is copied to the cache.
        # The spec records the resolved version ("recgen:latest" -> "recgen:<version>"): a promoted
        # CoT version's ``--model current`` must keep naming the model that wrote it.
        return ModelRef(
            f"{RECGEN_PREFIX}{version}", fsio.local_copy(folder), sanitize_version(f"recgen-{version}")
        )
    try:
        folder = models.resolve_model(spec, home)
    except FileNotFoundError as exc:
        raise InvalidArgument(str(exc)) from None
    name = spec if spec in (models.TINY_LLAMA, models.SMOLLM2_135M) else Path(spec).name
    return ModelRef(spec, folder, sanitize_version(name))


def verify_cot_published(
    home: Path,
    dataset: str,
    partition: str,
    model_version: str | None = None,
    prompt_version: str | None = None,
) -> dict[str, Any]:
    """Gate for a DAG check task: the day's CoT version (default: CURRENT) is published and checked.

    Raises :class:`InvalidArgument` (a non-retryable failure for the DAG) otherwise; returns small
    metadata for XCom: the folder downstream stages should read, rows, versions, sha256.
    """
    day = parse_partition(partition)
    paths = DataPaths(home, dataset)
    if model_version is None or prompt_version is None:
        current = read_current(paths)
        if current is None:
            raise InvalidArgument(f"{paths.cot_pointer} does not exist: no CoT version published")
        model_version = model_version or current["model_version"]
        prompt_version = prompt_version or current["prompt_version"]
    from llmcf_core.quality.publish import verify_published

    folder = version_dir(paths, day, model_version, prompt_version)
    manifest = verify_published(folder, partition=partition)
    return {
        "partition": partition,
        "path": str(folder),
        "rows": manifest.get("rows"),
        "sha256": manifest.get("sha256"),
        "model_version": manifest.get("model_version"),
        "prompt_version": manifest.get("prompt_version"),
        "failed_rows": manifest.get("failed_rows"),
    }
