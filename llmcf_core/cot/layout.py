"""Where CoT versions, work blocks, the CURRENT pointer and the generating models live.

::

    <home>/<dataset>/cot/CURRENT                                   {"model_version", "prompt_version", "model"}
    <home>/<dataset>/cot/dt=D/<model_version>__<prompt_version>/   published (part + _SUCCESS)
    <home>/<dataset>/cot/dt=D/_blocks/<model_version>__<prompt_version>/block-00000.parquet
    <home>/models/recgen/<version>/  +  <home>/models/recgen/latest  {"version": ...}

One published folder per version inside the day partition, so an old version stays readable
while a new one is generated; ``CURRENT`` names the promoted version: what downstream stages read
when a run names no version, and what ``--model current`` (the refresh DAG's default) extends. Only
a promotion moves it (``llmcf_core.retrieval.promote``, ``jobs.promote_cot``), never a CoT run.
Standard library only: DAG check tasks import this module.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcf_core import fsio
from llmcf_core.paths import DataPaths, InvalidArgument

ARTIFACT = "cot"
CURRENT_FILE = "CURRENT"
BLOCKS_DIR = "_blocks"
RECGEN_PREFIX = "recgen:"
CURRENT_MODEL = "current"  # --model current: the model of the promoted version
_VERSION_SEP = "__"
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_REGISTRY_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def sanitize_version(value: str) -> str:
    """A version string safe as one path component: ``[a-z0-9._-]``, no ``__`` (our separator).

    >>> sanitize_version("RecGen:2024-05-01/run 3")
    'recgen-2024-05-01-run-3'
    """
    text = _UNSAFE.sub("-", str(value).strip().lower())
    text = re.sub(r"_{2,}", "_", text)
    text = re.sub(r"-{2,}", "-", text).strip("-._")[:96].strip("-._")
    if not text:
        raise InvalidArgument(f"version {value!r} has no usable characters")
    return text


def version_name(model_version: str, prompt_version: str) -> str:
    return f"{sanitize_version(model_version)}{_VERSION_SEP}{sanitize_version(prompt_version)}"


def cot_root(paths: DataPaths) -> Path:
    return paths.artifact(ARTIFACT)


def version_dir(paths: DataPaths, day: dt.date, model_version: str, prompt_version: str) -> Path:
    return paths.partition(ARTIFACT, day) / version_name(model_version, prompt_version)


def blocks_dir(paths: DataPaths, day: dt.date, model_version: str, prompt_version: str) -> Path:
    return paths.partition(ARTIFACT, day) / BLOCKS_DIR / version_name(model_version, prompt_version)


def list_versions(paths: DataPaths, day: dt.date) -> list[str]:
    """Published version folders (``<model>__<prompt>``) of one day."""
    folder = paths.partition(ARTIFACT, day)
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and (p / "_SUCCESS").is_file()
    )


def read_current(paths: DataPaths) -> dict[str, str] | None:
    """``{"model_version", "prompt_version"[, "model"]}`` named by ``<dataset>/cot/CURRENT``, or
    None. ``model`` is the model spec that wrote the version (pointers written before it lack it)."""
    try:
        data = json.loads((cot_root(paths) / CURRENT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    out = {"model_version": str(data["model_version"]), "prompt_version": str(data["prompt_version"])}
    if data.get("model"):
        out["model"] = str(data["model"])
    return out


def write_current(
    paths: DataPaths, model_version: str, prompt_version: str, model: str | None = None
) -> bool:
    """Point ``CURRENT`` at a version (write a temp file, then one atomic rename). True if it moved.
    Called by the promotion only (``llmcf_core.retrieval.promote``)."""
    wanted = {
        "model_version": sanitize_version(model_version),
        "prompt_version": sanitize_version(prompt_version),
    }
    if model:
        wanted["model"] = model
    if read_current(paths) == wanted:
        return False
    fsio.write_text_atomic(cot_root(paths) / CURRENT_FILE, json.dumps(wanted, sort_keys=True))
    return True


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


def recgen_dir(home: Any) -> Any:
    return fsio.as_path(home) / "models" / "recgen"


def _recgen_version(home: Path, requested: str) -> str:
    if requested in ("", "latest"):
        pointer = recgen_dir(home) / "latest"
        try:
            requested = str(json.loads(pointer.read_text(encoding="utf-8"))["version"])
        except FileNotFoundError:
            raise InvalidArgument(
                f"no RecGen model registered: {pointer} does not exist (train one, or pass a base model)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"unreadable RecGen pointer {pointer}: {exc}") from None
    if not _REGISTRY_VERSION.match(requested) or ".." in requested:
        raise InvalidArgument(f"invalid RecGen version {requested!r}")
    return requested


def resolve_cot_model(spec: str, home: Path) -> ModelRef:
    """``recgen:latest`` / ``recgen:<version>`` (the RecGen registry), a base model name, or a folder.

    The model version is ``recgen-<version>`` for registry models (the resolved version, never
    "latest", so a new RecGen model writes a new CoT version), the name for base models and the
    folder's name for folders.
    """
    from llmcf_core.llm import models

    if spec.startswith(RECGEN_PREFIX):
        version = _recgen_version(home, spec[len(RECGEN_PREFIX) :])
        folder = recgen_dir(home) / version
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
    from llmcf_core.paths import parse_partition

    day = parse_partition(partition)
    paths = DataPaths(home, dataset)
    if model_version is None or prompt_version is None:
        current = read_current(paths)
        if current is None:
            raise InvalidArgument(
                f"{cot_root(paths) / CURRENT_FILE} does not exist: no CoT version published"
            )
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
