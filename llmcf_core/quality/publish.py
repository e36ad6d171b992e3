"""Check -> quarantine -> publish, written once for every stage that publishes a partition.

    report = check_cot(frame, ...)
    if not report.success:
        reject(frame, report, quarantine_dir, limit=settings.quality.quarantine_max_rows)
    publish_checked(table, final_dir, report, {"dataset": ..., "partition": ...}, clear=[quarantine_dir])

``reject`` writes the failing rows (with their ``_failed_rules``) and the report to the
partition's quarantine folder, then raises :class:`DataCheckFailed`: nothing is published and
the previous version of the partition stays readable. ``publish_checked`` publishes atomically
with the report in the manifest (``checks``) and clears the stale quarantine of an earlier
failed run. Quarantined rows may hold anything a user wrote, so they are stored leniently.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from llmcf_core import fsio, storage
from llmcf_core.quality.gx_runner import CheckReport, DataCheckFailed, failing_rows

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def to_arrow_lenient(frame: pd.DataFrame) -> pa.Table:
    """Rows as Arrow; every column as text where Arrow refuses a cell (mixed types, objects)."""
    import pyarrow as pa

    frame = frame.reset_index(drop=True)
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return pa.Table.from_pandas(frame.astype(str), preserve_index=False)


def quarantine(
    frame: pd.DataFrame | None,
    report: CheckReport,
    folder: Any,
    *,
    limit: int | None = None,
    reports: dict[str, Any] | None = None,
) -> int:
    """Replace ``folder`` with the rows of ``frame`` that failed ``report`` (at most ``limit``) and
    the report (or ``reports``, several named reports); returns the rows written. ``frame=None``
    records the report alone (a check on counts or on a store, with no rows to keep)."""
    import pyarrow as pa

    if frame is None or report.success:
        table, n = pa.table({}), 0
    else:
        bad = failing_rows(frame, report)
        if limit is not None:
            bad = bad.head(limit)
        table, n = to_arrow_lenient(bad), len(bad)
    storage.write_quarantine(table, folder, reports if reports is not None else report.to_dict())
    return n


def reject(
    frame: pd.DataFrame | None,
    report: CheckReport,
    folder: Any,
    *,
    limit: int | None = None,
    reports: dict[str, Any] | None = None,
    context: str | None = None,
    what: str = "rows",
) -> NoReturn:
    """Quarantine the failing rows (see :func:`quarantine`) and raise :class:`DataCheckFailed`,
    noted "<context>: <n> <what> quarantined at <folder>"."""
    n = quarantine(frame, report, folder, limit=limit, reports=reports)
    exc = DataCheckFailed(report)
    exc.add_note(f"{context + ': ' if context else ''}{n} {what} quarantined at {folder}")
    raise exc


def publish_checked(
    table: pa.Table,
    folder: Any,
    report: CheckReport,
    metadata: dict[str, Any] | None = None,
    *,
    clear: Iterable[Any] = (),
) -> storage.PublishResult:
    """Publish a checked table atomically (the report under ``checks`` in the manifest), then remove
    the quarantine folders ``clear`` left by earlier failed runs. Refuses a failed report."""
    if not report.success:
        raise DataCheckFailed(report)
    result = storage.publish_table(table, folder, {**(metadata or {}), "checks": report.to_dict()})
    for stale in clear:
        fsio.rmtree(stale)
    return result


def verify_published(
    folder: Any, *, partition: str | None = None, reports: tuple[str, ...] = ("checks",)
) -> dict[str, Any]:
    """The gate every DAG check task uses: ``folder`` is published (a ``_SUCCESS`` manifest), for
    ``partition`` when given, and each named report in its manifest passed (``success`` is True: a
    missing report fails). Returns the manifest; raises ``InvalidArgument`` (not retried) naming
    the folder and the rule otherwise. Reads the manifest only."""
    from llmcf_core.layout import InvalidArgument

    manifest = storage.read_manifest(folder)
    if manifest is None:
        raise InvalidArgument(
            f"{folder} is not published{f' for partition {partition}' if partition else ''} (no _SUCCESS manifest)"
        )
    if partition is not None and manifest.get("partition") != partition:
        raise InvalidArgument(
            f"{folder} manifest is for partition {manifest.get('partition')}, not {partition}"
        )
    for key in reports:
        report = manifest.get(key)
        if report is None:
            raise InvalidArgument(f"{folder}: check {key!r} did not pass: no report")
        if not isinstance(report, dict) or report.get("success") is not True:
            failures = [f.get("rule") for f in report.get("failures", [])] if isinstance(report, dict) else []
            raise InvalidArgument(f"{folder}: check {key!r} did not pass: {failures or report}")
    return manifest
