"""Names and places of the retrieval artifacts, and the CoT version they are built from.

```
<home>/<ds>/cot/CURRENT                                  {"model_version", "prompt_version", "model"}
                                                          the promoted version (jobs.promote_cot only)
<home>/<ds>/cot/dt=D/<model_version>__<prompt_version>/  CoT rows of day D (CoT stage)
<home>/<ds>/embeddings/<embedder>/items/                 item_id, vector
<home>/<ds>/embeddings/<embedder>/pool/<cot version>/dt=D/   the in-context pool of day D (mirrors Qdrant)
<home>/<ds>/neighbors/<cot version>/dt=D/                K examples per sample (task ctr)
<home>/<ds>/neighbors_next_item/<cot version>/dt=D/      the same for --task next_item
Qdrant: collection llmcf_<ds>__<embedder>__<cot tag>__g<N> per CoT version and generation;
        alias llmcf_<ds> -> the promoted version's collection (moved by jobs.promote_cot only)
```

A :class:`PoolSpec` says what a pool partition and a collection were built from (dataset,
embedder, dimension, CoT version); the two must agree before a collection is used. Everything
built from CoTs lives under its CoT version, so a run that resolved another version (a manual run
with another ``cot_model``) writes beside the promoted version's artifacts, never over them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmcf_core.paths import DataPaths, InvalidArgument, partition_dir_name

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
TASKS = ("ctr", "next_item")
URL_ENV = "LLMCF_QDRANT_URL"  # Qdrant server URL for jobs (wins over qdrant.url)


def check_name(kind: str, value: str) -> str:
    """Embedder names and CoT versions become path parts and collection names: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise InvalidArgument(f"invalid {kind} {value!r}: use letters, digits, '-', '_' or '.' (max 100)")
    return value


@dataclass(frozen=True)
class CotVersion:
    model_version: str
    prompt_version: str

    @property
    def folder(self) -> str:
        return f"{self.model_version}__{self.prompt_version}"

    @classmethod
    def parse(cls, text: str) -> CotVersion:
        """``MODEL__PROMPT`` (the folder name) -> CotVersion."""
        model, sep, prompt = text.partition("__")
        if not sep or not model or not prompt:
            raise InvalidArgument(f"malformed CoT version {text!r}: expected MODEL_VERSION__PROMPT_VERSION")
        return cls(check_name("model_version", model), check_name("prompt_version", prompt))


@dataclass(frozen=True)
class PoolSpec:
    """What a pool and its collection are made of; stored in manifests and collection metadata."""

    dataset: str
    embedder: str
    dim: int
    cot_model_version: str
    cot_prompt_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> PoolSpec | None:
        try:
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__})  # type: ignore[index]
        except (KeyError, TypeError):
            return None

    @property
    def cot(self) -> CotVersion:
        return CotVersion(self.cot_model_version, self.cot_prompt_version)

    @property
    def collection_base(self) -> str:
        tag = _UNSAFE.sub("-", f"{self.embedder}__{self.cot.folder}")
        return f"{alias_name(self.dataset)}__{tag}"


def alias_name(dataset: str) -> str:
    return f"llmcf_{dataset}"


def collection_name(spec: PoolSpec, generation: int) -> str:
    return f"{spec.collection_base}__g{generation}"


def generation_of(name: str, spec: PoolSpec) -> int | None:
    prefix = f"{spec.collection_base}__g"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


class RetrievalPaths:
    """Artifact folders of the retrieval stages for one dataset and embedder."""

    def __init__(self, home: Path, dataset: str, embedder: str) -> None:
        self.data = DataPaths(home, dataset)
        self.dataset = self.data.dataset
        self.embedder = check_name("embedder", embedder)

    @property
    def cot_root(self) -> Path:
        return self.data.artifact("cot")

    @property
    def cot_pointer(self) -> Path:
        return self.cot_root / "CURRENT"

    def cot_partition(self, day: dt.date, version: CotVersion) -> Path:
        return self.cot_root / partition_dir_name(day) / version.folder

    def cot_days(self, version: CotVersion) -> list[dt.date]:
        """Days with a published CoT partition of ``version``, oldest first."""
        days = []
        for folder in sorted(self.cot_root.glob("dt=*")):
            if (folder / version.folder / "_SUCCESS").is_file():
                days.append(dt.date.fromisoformat(folder.name.removeprefix("dt=")))
        return days

    @property
    def items(self) -> Path:
        return self.data.artifact(f"embeddings/{self.embedder}/items")

    def pool_root(self, version: CotVersion) -> Path:
        """The pool partitions built from CoT version ``version``."""
        return self.data.artifact(f"embeddings/{self.embedder}/pool") / version.folder

    def pool(self, day: dt.date, version: CotVersion) -> Path:
        return self.pool_root(version) / partition_dir_name(day)

    def pool_days(self, version: CotVersion, until: dt.date | None = None) -> list[dt.date]:
        """Days with a published pool partition of ``version`` (optionally up to ``until``), oldest
        first."""
        return published_days(self.pool_root(version), until)

    def neighbors_root(self, task: str, version: CotVersion, artifact: str | None = None) -> Path:
        """The neighbours of ``task`` retrieved from CoT version ``version``'s pool (``artifact``:
        the folder name, default ``neighbors`` for ctr and ``neighbors_<task>`` otherwise)."""
        if task not in TASKS:
            raise InvalidArgument(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        artifact = artifact or ("neighbors" if task == "ctr" else f"neighbors_{task}")
        return self.data.artifact(check_name("neighbours artifact", artifact)) / version.folder

    def neighbors(self, day: dt.date, task: str, version: CotVersion) -> Path:
        return self.neighbors_root(task, version) / partition_dir_name(day)


def published_days(root: Path, until: dt.date | None = None) -> list[dt.date]:
    """Days with a published ``dt=D`` partition under ``root`` (optionally up to ``until``), oldest
    first."""
    days = []
    for folder in sorted(root.glob("dt=*")):
        try:
            day = dt.date.fromisoformat(folder.name.removeprefix("dt="))
        except ValueError:  # not a partition folder of ours
            continue
        if (folder / "_SUCCESS").is_file() and (until is None or day <= until):
            days.append(day)
    return days


def promoted_cot(paths: RetrievalPaths) -> CotVersion | None:
    """The dataset's promoted CoT version, or None before the first promotion."""
    return read_current_cot(paths) if paths.cot_pointer.exists() else None


def read_current_cot(paths: RetrievalPaths) -> CotVersion:
    """The dataset's promoted CoT version (``<ds>/cot/CURRENT``, moved by ``jobs.promote_cot``)."""
    try:
        raw = json.loads(paths.cot_pointer.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(
            f"no current CoT version for {paths.dataset!r}: {paths.cot_pointer} does not exist "
            "(promote one with jobs.promote_cot, or pass --cot-version MODEL__PROMPT)"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"{paths.cot_pointer} is not valid JSON: {exc}") from None
    try:
        return CotVersion(
            check_name("model_version", raw["model_version"]),
            check_name("prompt_version", raw["prompt_version"]),
        )
    except (KeyError, TypeError):
        raise InvalidArgument(
            f"{paths.cot_pointer} must hold {{'model_version': ..., 'prompt_version': ...}}"
        ) from None


def resolve_cot_version(paths: RetrievalPaths, explicit: str | None) -> CotVersion:
    return CotVersion.parse(explicit) if explicit else read_current_cot(paths)
