"""Which day partition a DAG run processes, and the cheap post-publish check tasks run.

Kept free of heavy imports: DAG files import this module at parse time.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from llmcf_core.layout import InvalidArgument, parse_partition


def partition_for_run(params: dict[str, Any], logical_date: dt.datetime | None) -> str:
    """The run's partition: the ``partition`` param if given, else the run's logical date.

    Scheduled and backfill runs of a daily ``CronDataIntervalTimetable`` have
    ``logical_date == data_interval_start``, the day they cover. A manual run without a logical
    date must name its partition.
    """
    explicit = (params.get("partition") or "").strip()
    if explicit:
        return parse_partition(explicit).isoformat()
    if logical_date is None:
        raise InvalidArgument(
            "this run has no logical date: trigger it with the 'partition' param (YYYY-MM-DD)"
        )
    return logical_date.astimezone(dt.UTC).date().isoformat()


def job_env_vars(settings: Any) -> dict[str, str]:
    """Environment every Ray job of a DAG gets, so jobs and check tasks see the same config and data."""
    env = {"LLMCF_HOME": str(settings.home), "LLMCF_PROFILE": settings.profile}
    if os.environ.get("LLMCF_CONFIG_FILE"):
        env["LLMCF_CONFIG_FILE"] = os.environ["LLMCF_CONFIG_FILE"]
    return env
