"""Model folders, the published-model pointer and the publish gate.

```
<home>/models/rec/<model>-<variant>/<version>/        model.pt, model.json, vocab.npz, metrics.json
<home>/models/rec/<model>-<variant>/latest-<dataset>  {"version": ...}: the published model (atomic)
<home>/models/rec/_runs/<model>-<variant>/<version>/  Ray Train run: checkpoints (resume)
```

``<version>`` is ``<dataset>-<until>-s<seed>-<hash>``, the hash covering the input partitions'
content and the training settings: the same inputs and settings give the same version, so a rerun
reuses the finished folder or resumes the unfinished run. Version folders are written beside their
final place and renamed into it (on an object store: uploaded with ``metrics.json`` last), so a
folder with ``metrics.json`` is complete.

The gate publishes a version (moves the pointer) only if its validation metric (AUC for ranking,
NDCG@10 for next item) beats the counting baseline of its task on the same validation rows
(``metrics.json`` ``baseline_floor``, see ``llmcf_core.rec.baselines``; first publication included)
and is not worse than the published model's by more than ``tolerance``. A version trained on
another CoT version than the dataset's promoted one (``<ds>/cot/CURRENT``) is never published: a
run with another ``cot_model`` must not change what is served (promote its CoTs first).

Light at import (the standard library and ``llmcf_core.fsio``, i.e. fsspec, which Airflow ships):
an Airflow check task may call ``publish_gate``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmcf_core import fsio, layout
from llmcf_core.layout import DataPaths, InvalidArgument

METRICS_FILE = "metrics.json"
# test rows' scores: sample_id, value (probability, or the target's 0-based rank for next item),
# label, cold (the user has no train rows); read by the experiment's paired statistics
PREDICTIONS_FILE = "test_predictions.npz"
MODEL_FILE = "model.pt"
META_FILE = "model.json"
VOCAB_FILE = "vocab.npz"


def model_dir(home: Path, model: str, variant: str) -> Path:
    return layout.rec_model_dir(home, model, variant)


def version_dir(home: Path, model: str, variant: str, version: str) -> Path:
    return layout.rec_version_dir(home, model, variant, version)


def runs_dir(home: Path, model: str, variant: str) -> Path:
    return layout.rec_runs_dir(home, model, variant)


def pointer_path(home: Path, dataset: str, model: str, variant: str) -> Path:
    return layout.rec_pointer(home, dataset, model, variant)


def read_json(path: Any) -> dict[str, Any]:
    return json.loads(fsio.as_path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: Any, payload: dict[str, Any]) -> None:
    fsio.write_json_atomic(path, payload)


def is_complete(folder: Any) -> bool:
    return (fsio.as_path(folder) / METRICS_FILE).is_file()


def current_version(home: Path, dataset: str, model: str, variant: str) -> str | None:
    """The published version for ``dataset`` (None if nothing is published or it is gone)."""
    try:
        version = read_json(pointer_path(home, dataset, model, variant))["version"]
    except (FileNotFoundError, KeyError, ValueError):
        return None
    return version if is_complete(version_dir(home, model, variant, version)) else None


def commit_folder(staged: Path, final: Any) -> None:
    """Move a fully written local folder into place (replacing an older copy of the same version).

    On an object store: the older copy is made incomplete first (its metrics.json removed), then
    the files are uploaded with metrics.json last, and the local folder is removed.
    """
    if fsio.is_url(final):
        fsio.remove(final / METRICS_FILE)
        fsio.upload_dir(staged, final, last=METRICS_FILE)
        shutil.rmtree(staged, ignore_errors=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staged, final)


def set_pointer(home: Path, dataset: str, model: str, variant: str, version: str, **info: Any) -> None:
    """Point ``latest-<dataset>`` at ``version`` (atomic). The gate is the one caller in the pipeline."""
    write_json_atomic(pointer_path(home, dataset, model, variant), {"version": version, **info})


@dataclass(frozen=True)
class GateDecision:
    published: bool
    dataset: str
    model: str
    variant: str
    version: str
    metric: str
    value: float
    previous_version: str | None
    previous_value: float | None
    tolerance: float
    reason: str
    baseline: str | None = None
    baseline_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _promoted_cot(home: Path, dataset: str) -> str | None:
    """MODEL__PROMPT named by ``<ds>/cot/CURRENT`` (None before the first promotion or when the
    pointer is unreadable: then nothing trained on a CoT version is published)."""
    try:
        version = layout.promoted_cot(DataPaths(home, dataset))
    except (OSError, ValueError):
        return None
    return version.folder if version else None


def publish_gate(
    home: Path, dataset: str, model: str, variant: str, version: str, *, tolerance: float
) -> GateDecision:
    """Publish ``version`` unless its validation metric is worse than the current model's by more
    than ``tolerance``. Idempotent: re-running on the published version keeps it published."""
    folder = version_dir(home, model, variant, version)
    if not is_complete(folder):
        raise InvalidArgument(f"model version {version!r} is not complete at {folder}")
    metrics = read_json(folder / METRICS_FILE)
    metric = metrics["primary_metric"]
    value = float(metrics["valid"][metric])
    previous = current_version(home, dataset, model, variant)
    previous_value = None
    if previous is not None:
        prev_metrics = read_json(version_dir(home, model, variant, previous) / METRICS_FILE)
        if prev_metrics.get("primary_metric") == metric:
            previous_value = float(prev_metrics["valid"][metric])

    floor = metrics.get("baseline_floor") or {}
    floor_value = float(floor["valid"]) if floor.get("valid") is not None else None
    trained_on, promoted = metrics.get("cot_version"), _promoted_cot(home, dataset)
    if trained_on and promoted and trained_on != promoted:
        ok, reason = (
            False,
            f"trained on CoT version {trained_on}, not the promoted {promoted}: promote it first "
            "(python -m jobs.promote_cot), or train on the promoted version",
        )
    elif math.isnan(value):
        ok, reason = False, f"validation {metric} is NaN"
    elif floor_value is None:
        ok, reason = (
            False,
            "no counting baseline recorded with this version (trained before baselines): retrain it",
        )
    elif not value > floor_value:
        ok, reason = (
            False,
            f"valid {metric} {value:.4f} does not beat the counting baseline {floor['name']} "
            f"({floor_value:.4f}) on the same validation rows",
        )
    elif previous == version:
        ok, reason = True, "already the published version"
    elif previous_value is None or math.isnan(previous_value):
        ok, reason = True, f"beats baseline {floor['name']} {floor_value:.4f}; no comparable published model"
    elif value >= previous_value - tolerance:
        ok, reason = True, f"valid {metric} {value:.4f} >= {previous_value:.4f} - {tolerance}"
    else:
        ok, reason = False, f"valid {metric} {value:.4f} < {previous_value:.4f} - {tolerance}"
    if ok and previous != version:
        set_pointer(home, dataset, model, variant, version, metric=metric, value=value)
    return GateDecision(
        published=ok,
        dataset=dataset,
        model=model,
        variant=variant,
        version=version,
        metric=metric,
        value=value,
        previous_version=previous,
        previous_value=previous_value,
        tolerance=tolerance,
        reason=reason,
        baseline=floor.get("name"),
        baseline_value=floor_value,
    )
