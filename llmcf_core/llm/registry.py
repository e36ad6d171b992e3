"""The RecGen model registry on the data root.

::

    <home>/models/recgen/<version>/               published model: HF folder + metadata.json + eval/
    <home>/models/recgen/latest                   {"version": ...}, replaced atomically
    <home>/models/recgen/_candidates/<version>/   trained, not yet gated (written by the fine-tune job)
    <home>/models/recgen/_runs/<version>/         Ray Train run: checkpoints (resume by run name)

A candidate becomes a version only through :func:`publish`, and only when its evaluation passed
the gate (``eval/gate.json``): the folder is renamed into place, then ``latest`` is replaced with
``os.replace`` (one atomic step; readers see the old or the new pointer, never a partial file).
On an object store (a URL data root) a folder rename does not exist: publishing copies the
candidate with ``metadata.json`` last (a folder without it is not a model) and then deletes the
candidate; the pointer is one PUT. Light at import (standard library + ``llmcf_core.fsio``):
Airflow check tasks import this module.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from llmcf_core import fsio, layout
from llmcf_core.layout import InvalidArgument

LATEST = layout.LATEST
EVAL_DIR = "eval"
GATE_FILE = "gate.json"
METRICS_FILE = "metrics.json"
METADATA_FILE = "metadata.json"


class GateRefused(InvalidArgument):
    """The candidate failed (or has not passed) the evaluation gate: it is not published."""


def check_version(version: str) -> str:
    return layout.check_recgen_version(version)


def root(home: Any) -> Any:
    return layout.recgen_root(home)


def version_dir(home: Path, version: str) -> Path:
    return layout.recgen_version_dir(home, version)


def candidate_dir(home: Path, version: str) -> Path:
    return layout.recgen_candidate_dir(home, version)


def runs_dir(home: Path) -> Path:
    return layout.recgen_runs_dir(home)


def latest_pointer(home: Path) -> Path:
    return layout.recgen_latest(home)


def is_model_dir(folder: Any) -> bool:
    folder = fsio.as_path(folder)
    return (folder / "config.json").is_file() and (folder / METADATA_FILE).is_file()


def read_json(path: Any) -> dict[str, Any] | None:
    return fsio.read_json(path)


def read_metadata(folder: Any) -> dict[str, Any] | None:
    return read_json(fsio.as_path(folder) / METADATA_FILE)


def write_json_atomic(path: Any, payload: dict[str, Any]) -> None:
    fsio.write_json_atomic(path, payload)


def latest_version(home: Path) -> str | None:
    pointer = read_json(latest_pointer(home))
    return str(pointer["version"]) if pointer and pointer.get("version") else None


def resolve(home: Path, version: str = LATEST) -> Path:
    """The folder of a published version (``latest`` follows the pointer)."""
    if version == LATEST:
        current = latest_version(home)
        if current is None:
            raise InvalidArgument(f"no RecGen model is published yet ({latest_pointer(home)} is missing)")
        version = current
    folder = version_dir(home, version)
    if not is_model_dir(folder):
        raise InvalidArgument(f"RecGen version {version!r} is not published at {folder}")
    return folder


def model_folder(home: Path, version: str) -> Path:
    """A published version, else the candidate of that name (evaluation runs before publication)."""
    published = version_dir(home, version)
    if is_model_dir(published):
        return published
    candidate = candidate_dir(home, version)
    if is_model_dir(candidate):
        return candidate
    raise InvalidArgument(f"no RecGen model {version!r}: neither {published} nor {candidate} holds one")


def gate_of(folder: Any) -> dict[str, Any] | None:
    return read_json(fsio.as_path(folder) / EVAL_DIR / GATE_FILE)


def publish(home: Path, version: str) -> dict[str, Any]:
    """Publish a gated candidate as ``version`` and move ``latest`` to it (idempotent).

    Raises :class:`GateRefused` when the candidate has no passing gate decision; then nothing moves.
    """
    final = version_dir(home, version)
    candidate = candidate_dir(home, version)
    if not is_model_dir(final):
        if not is_model_dir(candidate):
            raise InvalidArgument(f"no candidate model {version!r} at {candidate}: run jobs.finetune_recgen")
        gate = gate_of(candidate)
        if gate is None:
            raise GateRefused(
                f"candidate {version!r} has not been evaluated ({candidate / EVAL_DIR / GATE_FILE})"
            )
        if not gate.get("passed"):
            raise GateRefused(
                f"candidate {version!r} failed the gate: {'; '.join(gate.get('reasons') or [])}"
            )
        _move_folder(candidate, final)
    gate = gate_of(final) or {}
    if not gate.get("passed"):
        raise GateRefused(f"published folder {final} has no passing gate decision")
    previous = latest_version(home)
    if previous == version:  # a retry after the pointer already moved
        return {
            "version": version,
            "path": str(final),
            "previous": read_json(latest_pointer(home)).get("previous"),
            "gate": gate,
            "changed": False,
        }
    write_json_atomic(
        latest_pointer(home),
        {
            "version": version,
            "previous": previous,
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gate": gate,
        },
    )
    return {"version": version, "path": str(final), "previous": previous, "gate": gate, "changed": True}


def _move_folder(candidate: Any, final: Any) -> None:
    if not fsio.is_url(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(candidate, final)  # same filesystem: one atomic step
        return
    # Object store: copy (metadata.json last: until then `final` is not a model), then delete.
    fsio.copy_dir(candidate, final, last=METADATA_FILE)
    fsio.rmtree(candidate)


def remove_candidate(home: Any, version: str) -> None:
    fsio.rmtree(candidate_dir(home, version))


def run_version(
    dataset: str,
    window_end: str,
    mix: str,
    base_model: str,
    steps: int,
    workers: int,
    zero_stage: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """A readable, deterministic version for a scheduled run (a retried or cleared task reuses it).

    ``extra`` holds any other argument that changes the model (data caps, lengths); it enters a short hash.
    """
    import hashlib

    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(base_model)).name).strip("-._") or "model"
    digest = hashlib.sha256(json.dumps(extra or {}, sort_keys=True, default=str).encode()).hexdigest()[:6]
    raw = f"{dataset}-{window_end}-{mix}-{base}-s{steps}-w{workers}-z{zero_stage}-{digest}"
    return check_version(re.sub(r"[^A-Za-z0-9._-]+", "-", raw)[:128])
