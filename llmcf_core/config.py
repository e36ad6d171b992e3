"""Typed configuration: one YAML file per profile (``configs/<profile>.yaml``).

The profile comes from ``LLMCF_PROFILE`` (default ``local``); the data root from ``LLMCF_HOME``
(default ``.llmcf/`` in the checkout). ``load_config()`` is cached, so a process loads it once.
Only pydantic and PyYAML are imported here: DAG files import this module at parse time.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    """One dataset: where its raw data comes from and how it is split and checked."""

    source: Literal["movielens-100k", "movielens-1m", "custom"]
    # For source=custom: paths to the user's logs (Parquet or CSV).
    interactions: str | None = None
    items: str | None = None
    # Split by the sample's UTC day: train < valid_start <= valid < test_start <= test.
    valid_start: dt.date | None = None
    test_start: dt.date | None = None
    history_len: int = Field(20, ge=1, le=1000)
    positive_rating: float = 4.0
    # Days with fewer rows fail the samples check (0 lets a day without ratings publish empty).
    min_rows_per_partition: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.source == "custom" and not (self.interactions and self.items):
            raise ValueError("a custom dataset needs both 'interactions' and 'items' paths")
        if self.valid_start and self.test_start and self.valid_start > self.test_start:
            raise ValueError("valid_start must not be after test_start")
        return self


class RayConfig(_Strict):
    """How jobs reach Ray. The address is the Ray dashboard (Jobs API) URL."""

    address: str | None = None  # overridden by RAY_ADDRESS or the Airflow connection `ray_default`
    job_timeout_s: int = Field(6 * 3600, ge=60)
    poll_interval_s: float = Field(2.0, gt=0)
    # Local head started by `make demo` / tests (ports chosen to avoid Redis on 6379).
    local_gcs_port: int = 6390
    local_dashboard_port: int = 8275
    local_num_cpus: int = 2


class QualityConfig(_Strict):
    quarantine_max_rows: int = Field(10_000, ge=1)
    examples_per_failure: int = Field(5, ge=1)


class AirflowConfig(_Strict):
    dataset: str = "ml-100k"
    start_date: dt.date = dt.date(1997, 9, 20)
    end_date: dt.date | None = None
    max_active_runs: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: int = Field(30, ge=0)


class DemoConfig(_Strict):
    dataset: str = "ml-100k"
    first_day: dt.date = dt.date(1998, 1, 14)
    days: int = Field(3, ge=1)


class Settings(_Strict):
    profile: str
    home: Path
    datasets: dict[str, DatasetConfig]
    ray: RayConfig = RayConfig()
    quality: QualityConfig = QualityConfig()
    airflow: AirflowConfig = AirflowConfig()
    demo: DemoConfig = DemoConfig()

    def dataset(self, name: str) -> DatasetConfig:
        try:
            return self.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.datasets))
            raise KeyError(f"unknown dataset {name!r} (configured: {known})") from None


def _resolve_home(raw: str | None) -> Path:
    value = os.environ.get("LLMCF_HOME") or raw or str(REPO_ROOT / ".llmcf")
    return Path(value).expanduser().resolve()


def load_config_file(path: Path) -> Settings:
    """Load and validate one profile file (no caching; used by tests and `load_config`)."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    raw["home"] = _resolve_home(raw.get("home"))
    raw.setdefault("profile", path.stem)
    return Settings.model_validate(raw)


@functools.cache
def load_config(profile: str | None = None) -> Settings:
    """The settings of ``profile`` (default: ``$LLMCF_PROFILE`` or ``local``), loaded once."""
    profile = profile or os.environ.get("LLMCF_PROFILE", "local")
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config profile {profile!r}: {path} does not exist")
    return load_config_file(path)
