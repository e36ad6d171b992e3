"""Where every artifact lives under the data root, and the rules for the names that build paths.

The one module that spells a folder or file name of the data root: every stage, gate, DAG task and
test asks it instead of joining strings. Standard library + ``llmcf_core.fsio`` only (DAG check
tasks import it).

::

    <home>/<ds>/samples/dt=D/                           samples (ingest)
    <home>/<ds>/items/   <home>/<ds>/users/             dimension tables (ingest; users optional)
    <home>/<ds>/quarantine/<artifact>/dt=D/             rows that failed a data check
    <home>/<ds>/_staging/                               caches derived from raw inputs (deletable)
    <home>/<ds>/cot/CURRENT                             {"model_version", "prompt_version", "model"}:
                                                        the promoted CoT version (jobs.promote_cot only)
    <home>/<ds>/cot/dt=D/<V>/                           CoTs of day D, version V = MODEL__PROMPT
    <home>/<ds>/cot/dt=D/_blocks/<V>/block-NNNNN.parquet    committed work blocks (resume)
    <home>/<ds>/embeddings/<embedder>/items/            item vectors
    <home>/<ds>/embeddings/<embedder>/pool/<V>/dt=D/    the in-context pool built from V (mirrors Qdrant)
    <home>/<ds>/neighbors/<V>/dt=D/                     K examples per sample, task ctr
    <home>/<ds>/neighbors_next_item/<V>/dt=D/           the same, task next_item
    <home>/models/rec/<model>-<variant>/<version>/      trained recommenders
    <home>/models/rec/<model>-<variant>/latest-<ds>     {"version"}: the published one
    <home>/models/rec/_runs/<model>-<variant>/          Ray Train runs (checkpoints)
    <home>/models/recgen/<version>/                     published RecGen models
    <home>/models/recgen/latest                         {"version"}
    <home>/models/recgen/_candidates/<version>/  _runs/ trained, not yet gated; Ray Train runs
    <home>/models/base/                                 base LLMs built from their packages

Every published folder holds its part files and ``_SUCCESS`` (``llmcf_core.storage``). Dataset
names, partition dates and versions are validated here, so no argument can write outside the root.
One version type, :class:`CotVersion`, with one rule for its two parts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcf_core import fsio

# Folder and file names: spelled here only.
SAMPLES = "samples"
ITEMS = "items"
USERS = "users"
INTERACTIONS = "interactions"
QUARANTINE = "quarantine"
STAGING = "_staging"
COT = "cot"
CURRENT_FILE = "CURRENT"
BLOCKS_DIR = "_blocks"
EMBEDDINGS = "embeddings"
POOL = "pool"
MODELS = "models"
REC_MODELS = "rec"
RECGEN_MODELS = "recgen"
BASE_MODELS = "base"
RUNS = "_runs"
CANDIDATES = "_candidates"
LATEST = "latest"
INSTRUCTIONS = "recgen_instructions"  # <ds>/recgen_instructions/dt=<window end>/<version>/
TASKS = ("ctr", "next_item")
NEIGHBORS = {"ctr": "neighbors", "next_item": "neighbors_next_item"}

# What each asset of the refresh DAG is, for its Airflow metadata (``extra.layout``).
TEMPLATES = {
    "samples": f"<dataset>/{SAMPLES}/dt=YYYY-MM-DD/",
    "cot": f"<dataset>/{COT}/dt=YYYY-MM-DD/<model_version>__<prompt_version>/",
    "pool": f"<dataset>/{EMBEDDINGS}/<embedder>/{POOL}/<cot version>/dt=YYYY-MM-DD/ + Qdrant collection",
    "neighbors": f"<dataset>/{NEIGHBORS['ctr']}/<cot version>/dt=YYYY-MM-DD/",
    "rec_model": f"{MODELS}/{REC_MODELS}/<model>-<variant>/<version>/",
    "recgen": f"{MODELS}/{RECGEN_MODELS}/<version>/",
}

_DATASET_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_PARTITION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# One CoT version part (model or prompt version): what sanitize_version makes, and nothing else.
_VERSION_PART_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,94}[a-z0-9])?$")
_VERSION_SEP = "__"
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_REGISTRY_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidArgument(ValueError):
    """A user-supplied name or date that cannot be used (bad format, unknown, out of range)."""


def parse_partition(value: str) -> dt.date:
    """Parse a partition key ``YYYY-MM-DD`` strictly (no times, no other formats)."""
    if not isinstance(value, str) or not _PARTITION_RE.match(value):
        raise InvalidArgument(f"malformed partition {value!r}: expected YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidArgument(f"malformed partition {value!r}: {exc}") from None


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _DATASET_RE.match(name) or ".." in name:
        raise InvalidArgument(
            f"invalid dataset name {name!r}: use lowercase letters, digits, '-', '_' or '.' (max 64)"
        )
    return name


def check_name(kind: str, value: str) -> str:
    """Embedder names and artifact names become path parts and collection names: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise InvalidArgument(f"invalid {kind} {value!r}: use letters, digits, '-', '_' or '.' (max 100)")
    return value


def partition_dir_name(day: dt.date) -> str:
    return f"dt={day.isoformat()}"


def day_bounds(day: dt.date) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch seconds."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return start, start + 86_400


def utc_day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).date()


def published_days(root: Any, until: dt.date | None = None) -> list[dt.date]:
    """Days with a published ``dt=D`` partition under ``root`` (optionally up to ``until``), oldest
    first."""
    days = []
    for folder in sorted(fsio.as_path(root).glob("dt=*")):
        try:
            day = dt.date.fromisoformat(folder.name.removeprefix("dt="))
        except ValueError:  # not a partition folder of ours
            continue
        if (folder / "_SUCCESS").is_file() and (until is None or day <= until):
            days.append(day)
    return days


# --- CoT versions ------------------------------------------------------------------------------


def sanitize_version(value: str) -> str:
    """A version part safe as one path component: ``[a-z0-9._-]``, no ``__`` (our separator).

    >>> sanitize_version("RecGen:2024-05-01/run 3")
    'recgen-2024-05-01-run-3'
    """
    text = _UNSAFE.sub("-", str(value).strip().lower())
    text = re.sub(r"_{2,}", "_", text)
    text = re.sub(r"-{2,}", "-", text).strip("-._")[:96].strip("-._")
    if not text:
        raise InvalidArgument(f"version {value!r} has no usable characters")
    return text


def _check_part(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _VERSION_PART_RE.match(value) or _VERSION_SEP in value:
        raise InvalidArgument(
            f"invalid CoT {kind} {value!r}: lowercase letters, digits, '.', '_', '-' (max 96), "
            f"no '{_VERSION_SEP}', starting and ending with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class CotVersion:
    """A CoT version: the model that wrote the texts and the prompt it was given. Its folder name
    ``MODEL__PROMPT`` names the CoT partitions and everything built from them."""

    model_version: str
    prompt_version: str

    def __post_init__(self) -> None:
        _check_part("model_version", self.model_version)
        _check_part("prompt_version", self.prompt_version)

    @classmethod
    def of(cls, model_version: str, prompt_version: str) -> CotVersion:
        """From free-form names (a model spec, a prompt label): sanitised first."""
        return cls(sanitize_version(model_version), sanitize_version(prompt_version))

    @classmethod
    def parse(cls, text: str) -> CotVersion:
        """``MODEL__PROMPT`` (the folder name) -> CotVersion."""
        model, sep, prompt = str(text).partition(_VERSION_SEP)
        if not sep or not model or not prompt:
            raise InvalidArgument(f"malformed CoT version {text!r}: expected MODEL_VERSION__PROMPT_VERSION")
        return cls(model, prompt)

    @property
    def folder(self) -> str:
        return f"{self.model_version}{_VERSION_SEP}{self.prompt_version}"

    def __str__(self) -> str:
        return self.folder


def version_name(model_version: str, prompt_version: str) -> str:
    return CotVersion.of(model_version, prompt_version).folder


# --- one dataset's artifacts ---------------------------------------------------------------------


class DataPaths:
    """Artifact locations of one dataset under the data root."""

    def __init__(self, home: Path | str, dataset: str) -> None:
        # A local folder or an object-store URL (a UPath: same joins). Dataset names are restricted
        # to [a-z0-9_.-] without "..", so no name can leave the root in either case.
        self.home = fsio.resolve(home)
        self.dataset = check_dataset_name(dataset)
        self.root = self.home / self.dataset
        if str(self.root.parent).rstrip("/") != str(self.home).rstrip("/"):
            raise InvalidArgument(f"dataset {dataset!r} resolves outside the data root")

    def artifact(self, name: str) -> Path:
        return self.root / name

    def partition(self, artifact: str, day: dt.date) -> Path:
        return self.artifact(artifact) / partition_dir_name(day)

    @property
    def samples_root(self) -> Path:
        return self.artifact(SAMPLES)

    def samples(self, day: dt.date) -> Path:
        return self.partition(SAMPLES, day)

    def sample_days(self, until: dt.date | None = None) -> list[dt.date]:
        return published_days(self.samples_root, until)

    def quarantine(self, artifact: str, day: dt.date) -> Path:
        return self.artifact(QUARANTINE) / artifact / partition_dir_name(day)

    @property
    def items(self) -> Path:
        return self.artifact(ITEMS)

    @property
    def users(self) -> Path:
        """The users dimension table; published only for datasets that bring user attributes."""
        return self.artifact(USERS)

    @property
    def staging(self) -> Path:
        """Per-dataset caches derived from raw inputs (safe to delete)."""
        return self.artifact(STAGING)

    def staged_raw(self, key: str) -> Path:
        """The parsed raw inputs of one source fingerprint (``interactions/`` + ``items/``)."""
        return self.staging / f"raw-{check_name('staging key', key)}"

    # CoTs
    @property
    def cot_root(self) -> Path:
        return self.artifact(COT)

    @property
    def cot_pointer(self) -> Path:
        return self.cot_root / CURRENT_FILE

    def cot_day(self, day: dt.date) -> Path:
        return self.partition(COT, day)

    def cot_partition(self, day: dt.date, version: CotVersion) -> Path:
        return self.cot_day(day) / version.folder

    def cot_blocks(self, day: dt.date, version: CotVersion) -> Path:
        return self.cot_day(day) / BLOCKS_DIR / version.folder

    def cot_days(self, version: CotVersion) -> list[dt.date]:
        """Days with a published CoT partition of ``version``, oldest first."""
        days = []
        for folder in sorted(self.cot_root.glob("dt=*")):
            if (folder / version.folder / "_SUCCESS").is_file():
                days.append(dt.date.fromisoformat(folder.name.removeprefix("dt=")))
        return days

    def cot_partition_days(self) -> list[dt.date]:
        """Days with a CoT day folder (of any version), oldest first."""
        days = []
        for folder in sorted(self.cot_root.glob("dt=*")):
            try:
                days.append(dt.date.fromisoformat(folder.name.removeprefix("dt=")))
            except ValueError:
                continue
        return days

    def cot_versions(self, day: dt.date) -> list[str]:
        """Published version folders (``<model>__<prompt>``) of one day."""
        folder = self.cot_day(day)
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_dir() and not p.name.startswith(("_", ".")) and (p / "_SUCCESS").is_file()
        )

    # Embeddings, pools, neighbours
    def embeddings(self, embedder: str) -> Path:
        return self.artifact(EMBEDDINGS) / check_name("embedder", embedder)

    def item_vectors(self, embedder: str) -> Path:
        return self.embeddings(embedder) / ITEMS

    def pool_root_of(self, embedder: str, version: CotVersion) -> Path:
        return self.embeddings(embedder) / POOL / version.folder

    def neighbors_root(self, task: str, version: CotVersion) -> Path:
        """The neighbours of ``task`` retrieved from CoT version ``version``'s pool."""
        if task not in TASKS:
            raise InvalidArgument(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        return self.artifact(NEIGHBORS[task]) / version.folder

    def neighbors(self, day: dt.date, task: str, version: CotVersion) -> Path:
        return self.neighbors_root(task, version) / partition_dir_name(day)


class RetrievalPaths:
    """One dataset's artifacts seen from the retrieval stages and the recommender: bound to one
    embedder (``items`` here are the item vectors; the items table is ``data.items``)."""

    def __init__(self, home: Path | str, dataset: str, embedder: str) -> None:
        self.data = DataPaths(home, dataset)
        self.dataset = self.data.dataset
        self.embedder = check_name("embedder", embedder)

    @property
    def cot_root(self) -> Path:
        return self.data.cot_root

    @property
    def cot_pointer(self) -> Path:
        return self.data.cot_pointer

    def cot_partition(self, day: dt.date, version: CotVersion) -> Path:
        return self.data.cot_partition(day, version)

    def cot_days(self, version: CotVersion) -> list[dt.date]:
        return self.data.cot_days(version)

    @property
    def items(self) -> Path:
        return self.data.item_vectors(self.embedder)

    def pool_root(self, version: CotVersion) -> Path:
        """The pool partitions built from CoT version ``version``."""
        return self.data.pool_root_of(self.embedder, version)

    def pool(self, day: dt.date, version: CotVersion) -> Path:
        return self.pool_root(version) / partition_dir_name(day)

    def pool_days(self, version: CotVersion, until: dt.date | None = None) -> list[dt.date]:
        """Days with a published pool partition of ``version`` (optionally up to ``until``)."""
        return published_days(self.pool_root(version), until)

    def neighbors_root(self, task: str, version: CotVersion) -> Path:
        return self.data.neighbors_root(task, version)

    def neighbors(self, day: dt.date, task: str, version: CotVersion) -> Path:
        return self.data.neighbors(day, task, version)


# --- the CoT pointer -----------------------------------------------------------------------------


def cot_root(paths: DataPaths) -> Path:
    return paths.cot_root


def version_dir(paths: DataPaths, day: dt.date, model_version: str, prompt_version: str) -> Path:
    return paths.cot_partition(day, CotVersion.of(model_version, prompt_version))


def blocks_dir(paths: DataPaths, day: dt.date, model_version: str, prompt_version: str) -> Path:
    return paths.cot_blocks(day, CotVersion.of(model_version, prompt_version))


def list_versions(paths: DataPaths, day: dt.date) -> list[str]:
    return paths.cot_versions(day)


def read_current(paths: DataPaths | RetrievalPaths) -> dict[str, str] | None:
    """``{"model_version", "prompt_version"[, "model"]}`` named by ``<ds>/cot/CURRENT`` (validated),
    or None before the first promotion. ``model`` is the model spec that wrote the version."""
    try:
        raw = json.loads(paths.cot_pointer.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InvalidArgument(f"{paths.cot_pointer} is not valid JSON: {exc}") from None
    try:
        version = CotVersion(raw["model_version"], raw["prompt_version"])
    except (KeyError, TypeError):
        raise InvalidArgument(
            f"{paths.cot_pointer} must hold {{'model_version': ..., 'prompt_version': ...}}"
        ) from None
    out = {"model_version": version.model_version, "prompt_version": version.prompt_version}
    if raw.get("model"):
        out["model"] = str(raw["model"])
    return out


def promoted_cot(paths: DataPaths | RetrievalPaths) -> CotVersion | None:
    """The dataset's promoted CoT version, or None before the first promotion."""
    current = read_current(paths)
    return CotVersion(current["model_version"], current["prompt_version"]) if current else None


def read_current_cot(paths: DataPaths | RetrievalPaths) -> CotVersion:
    """The dataset's promoted CoT version; a clear error before the first promotion."""
    version = promoted_cot(paths)
    if version is None:
        raise InvalidArgument(
            f"no current CoT version for {paths.dataset!r}: {paths.cot_pointer} does not exist "
            "(promote one with jobs.promote_cot, or pass --cot-version MODEL__PROMPT)"
        )
    return version


def resolve_cot_version(paths: DataPaths | RetrievalPaths, explicit: str | CotVersion | None) -> CotVersion:
    """``explicit`` (``MODEL__PROMPT``) if given, else the promoted version."""
    if isinstance(explicit, CotVersion):
        return explicit
    return CotVersion.parse(explicit) if explicit else read_current_cot(paths)


def write_current(
    paths: DataPaths, model_version: str, prompt_version: str, model: str | None = None
) -> bool:
    """Point ``CURRENT`` at a version (a temp file, then one atomic rename). True if it moved.
    Called by the promotion only (``llmcf_core.retrieval.promote``, ``jobs.qdrant_admin``)."""
    version = CotVersion.of(model_version, prompt_version)
    wanted = {"model_version": version.model_version, "prompt_version": version.prompt_version}
    if model:
        wanted["model"] = model
    if read_current(paths) == wanted:
        return False
    fsio.write_text_atomic(paths.cot_pointer, json.dumps(wanted, sort_keys=True))
    return True


# --- model stores --------------------------------------------------------------------------------


def models_root(home: Any) -> Any:
    return fsio.as_path(home) / MODELS


def rec_root(home: Any) -> Any:
    return models_root(home) / REC_MODELS


def rec_model_dir(home: Any, model: str, variant: str) -> Any:
    return rec_root(home) / f"{check_name('model', model)}-{check_name('variant', variant)}"


def rec_version_dir(home: Any, model: str, variant: str, version: str) -> Any:
    if not version or "/" in version or version.startswith((".", "_")) or version.startswith(LATEST):
        raise InvalidArgument(f"invalid model version {version!r}")
    return rec_model_dir(home, model, variant) / version


def rec_runs_dir(home: Any, model: str, variant: str) -> Any:
    return rec_root(home) / RUNS / f"{model}-{variant}"


def rec_pointer(home: Any, dataset: str, model: str, variant: str) -> Any:
    """``latest-<dataset>``: the published version of a model for one dataset."""
    return rec_model_dir(home, model, variant) / f"{LATEST}-{check_dataset_name(dataset)}"


def check_recgen_version(version: str) -> str:
    if (
        not isinstance(version, str)
        or not _REGISTRY_VERSION_RE.match(version)
        or ".." in version
        or version == LATEST
    ):
        raise InvalidArgument(
            f"invalid RecGen version {version!r}: letters, digits, '.', '_', '-' (max 128), not 'latest'"
        )
    return version


def recgen_root(home: Any) -> Any:
    return models_root(home) / RECGEN_MODELS


def recgen_version_dir(home: Any, version: str) -> Any:
    return recgen_root(home) / check_recgen_version(version)


def recgen_candidate_dir(home: Any, version: str) -> Any:
    return recgen_root(home) / CANDIDATES / check_recgen_version(version)


def recgen_runs_dir(home: Any) -> Any:
    return recgen_root(home) / RUNS


def recgen_latest(home: Any) -> Any:
    return recgen_root(home) / LATEST


def base_models_dir(home: Any) -> Path:
    """Where built base models are cached: under a local data root, else in the local cache.

    Models are always loaded from local folders; on an object-store data root they are derived
    data (rebuilt from the packages on any machine), so they stay out of the bucket.
    """
    if fsio.is_url(home):
        return fsio.cache_root() / MODELS / BASE_MODELS
    return Path(home) / MODELS / BASE_MODELS
