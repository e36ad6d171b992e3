"""Data checks (Great Expectations Core 1.x) that jobs run before they publish a partition.

Usage in a job::

    from llmcf_core.quality import DataCheckFailed, check_samples, failing_rows

    report = check_samples(df, dataset="ml-100k", partition=day, known_item_ids=ids,
                           history_len=20, min_rows=1)
    if not report.success:
        quarantine(failing_rows(df, report), report.to_dict())
        raise DataCheckFailed(report)

Importing this package is cheap (standard library only): the report/exception types load
eagerly, the ``check_*`` functions (numpy, pandas) on first access, and GX itself on the first
check that runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmcf_core.quality.gx_runner import CheckReport, DataCheckFailed, Failure, Rule, failing_rows, run_rules

if TYPE_CHECKING:
    from llmcf_core.quality.suites import check_interactions, check_items, check_samples, check_users

__all__ = [
    "CheckReport",
    "DataCheckFailed",
    "Failure",
    "Rule",
    "check_interactions",
    "check_items",
    "check_samples",
    "check_users",
    "failing_rows",
    "run_rules",
]

_LAZY = {"check_interactions", "check_items", "check_samples", "check_users"}


def __getattr__(name: str) -> Any:
    """Load the suites (and with them numpy/pandas) only when a check is first used."""
    if name in _LAZY:
        from llmcf_core.quality import suites

        return getattr(suites, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
