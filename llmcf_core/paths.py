"""Where artifacts live under the data root, and validation of the names that build those paths.

Every path a job writes is ``<home>/<dataset>/<artifact>/dt=YYYY-MM-DD/``. Dataset names and
partition dates are validated here so that no argument can write outside the data root.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from llmcf_core import fsio

_DATASET_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_PARTITION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


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


def partition_dir_name(day: dt.date) -> str:
    return f"dt={day.isoformat()}"


def day_bounds(day: dt.date) -> tuple[int, int]:
    """[start, end) of a UTC day in epoch seconds."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return start, start + 86_400


def utc_day(ts: int) -> dt.date:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC).date()


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

    def samples(self, day: dt.date) -> Path:
        return self.partition("samples", day)

    def quarantine(self, artifact: str, day: dt.date) -> Path:
        return self.artifact("quarantine") / artifact / partition_dir_name(day)

    @property
    def items(self) -> Path:
        return self.artifact("items")

    @property
    def users(self) -> Path:
        """The users dimension table; published only for datasets that bring user attributes."""
        return self.artifact("users")

    @property
    def staging(self) -> Path:
        """Per-dataset caches derived from raw inputs (safe to delete)."""
        return self.artifact("_staging")
