"""Run Great Expectations (GX Core 1.x) rules on a pandas DataFrame and report failures usefully.

Generic part of the data checks: the suites (``suites.py``) say *what* to check as a list of
:class:`Rule`; this module runs them through an ephemeral GX context and turns GX's result into a
:class:`CheckReport` that names each failed rule, counts it, quotes examples and gives the
positional indices of the failing rows so that the caller can quarantine them.

Importing this module is cheap: GX (seconds to import), pandas and numpy are imported on first
use only, so DAG files may import the exception and report types at parse time.

Design notes:
- Row positions come from GX's ``unexpected_index_list`` (``result_format="COMPLETE"``). For
  pandas GX reports *index labels* there, so the frame handed to GX always has a fresh
  ``RangeIndex`` (labels == positions), whatever index the caller's frame had.
- Rules whose input columns are missing are skipped (the suite's ``expect_column_to_exist`` rule
  reports the missing column), so a missing column is a failure, never a crash. An expectation
  that raises inside GX becomes a failure saying so.
- Rules may run on *derived* columns that the suite computes in pandas (e.g. a boolean
  "is a whole number" per row) where GX's native expectations cannot cope with messy dtypes; the
  rule keeps the name of the real rule and quotes examples from the real column.
- GX is given only the columns the rules read (list-valued columns never reach GX) and never a
  large ``value_set``: GX re-serialises each expectation's kwargs thousands of times per run, so
  a 10k-id ``value_set`` costs seconds; membership in big sets is a derived boolean instead.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "CheckReport",
    "DataCheckFailed",
    "Failure",
    "Rule",
    "failing_rows",
    "load_gx",
    "run_rules",
]

DEFAULT_MAX_EXAMPLES = 5
_EXAMPLE_CHARS = 120  # one example's text is cut to this in summary()
_VALIDATE_LOCK = threading.Lock()  # GX keeps some process-global state (current project)


# --------------------------------------------------------------------------------------------
# Report types (public API)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failed rule: what failed, how often, examples, and which rows (for quarantine)."""

    rule: str  # e.g. "expect_column_values_to_not_be_null(user_id)"
    unexpected_count: int  # failing rows, or 1 for table-/column-level rules
    examples: list = field(default_factory=list)  # up to N example values / sample_ids
    row_positions: list[int] = field(default_factory=list)  # positions 0..len(df)-1; [] if table-level
    detail: str = ""  # what was observed, for table-/column-level rules ("0 rows", "dtype str")

    def describe(self) -> str:
        """One line for humans: rule, count (or observation), examples."""
        what = self.detail or f"{self.unexpected_count:,} rows"
        if self.examples:
            shown = [_short(e) for e in self.examples]
            return f"{self.rule}: {what}, e.g. [{', '.join(shown)}]"
        return f"{self.rule}: {what}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "unexpected_count": int(self.unexpected_count),
            "examples": [_plain(e) for e in self.examples],
            "row_positions": [int(p) for p in self.row_positions],
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CheckReport:
    """Outcome of one suite on one artifact partition."""

    suite: str
    dataset: str
    partition: str  # "YYYY-MM-DD", or "" for unpartitioned artifacts (items)
    rows: int
    evaluated: int  # rules evaluated (rules on missing columns are not)
    failures: list[Failure]

    @property
    def success(self) -> bool:
        return not self.failures

    @property
    def failed_positions(self) -> list[int]:
        """Sorted positions of all rows that failed at least one row-level rule."""
        return sorted({p for f in self.failures for p in f.row_positions})

    def _where(self) -> str:
        return f"{self.dataset} dt={self.partition}" if self.partition else self.dataset

    def summary(self) -> str:
        """Multi-line text naming suite, dataset, partition, and each failed rule with counts."""
        if self.success:
            return (
                f"{self.suite} check passed for {self._where()}: {self.evaluated} rules ({self.rows:,} rows)"
            )
        head = (
            f"{self.suite} check FAILED for {self._where()}: "
            f"{len(self.failures)} of {self.evaluated} rules failed ({self.rows:,} rows)"
        )
        return "\n".join([head, *(f"  - {f.describe()}" for f in self.failures)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for XCom, job results, the manifest of a quarantine)."""
        return {
            "suite": self.suite,
            "dataset": self.dataset,
            "partition": self.partition,
            "rows": int(self.rows),
            "evaluated": int(self.evaluated),
            "success": self.success,
            "failures": [f.to_dict() for f in self.failures],
        }

    def raise_if_failed(self) -> CheckReport:
        """Raise :class:`DataCheckFailed` if any rule failed; return self otherwise."""
        if not self.success:
            raise DataCheckFailed(self)
        return self


class DataCheckFailed(Exception):
    """A data check failed; the message is ``report.summary()``, the report is ``.report``."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__(report.summary())
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling (Ray task errors, Airflow)
        return (type(self), (self.report,))


def failing_rows(df: pd.DataFrame, report: CheckReport) -> pd.DataFrame:
    """The rows of ``df`` that failed row-level rules, with a ``_failed_rules`` column.

    ``df`` must be the frame the report was made from (same rows, same order); its index is kept.
    """
    import pandas as pd

    if len(df) != report.rows:
        raise ValueError(
            f"failing_rows: the frame has {len(df)} rows but the report was made on {report.rows}"
        )
    rules_at: dict[int, list[str]] = {}
    for f in report.failures:
        for p in f.row_positions:
            rules_at.setdefault(int(p), []).append(f.rule)
    positions = sorted(rules_at)
    out = df.iloc[positions].copy()
    out["_failed_rules"] = pd.Series(
        ["; ".join(rules_at[p]) for p in positions], index=out.index, dtype=object
    )
    return out


# --------------------------------------------------------------------------------------------
# Rules and the runner
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One check: a GX expectation (class name + kwargs) under a human-readable rule name.

    ``requires``: columns of the checked frame the rule needs; the rule is skipped when one is
    missing (the suite's column-exists rule reports that). ``examples_from``: column(s) of the
    checked frame quoted as examples for failing rows (several columns -> a dict per row);
    empty -> GX's unexpected values. ``scope``: "column" for rules about a column as a whole
    (dtype), reported once without rows; table-level expectations are detected automatically.
    ``detail``: how to word GX's observed value for table-/column-level rules.
    """

    name: str
    expectation: str  # class name in great_expectations.expectations, e.g. "ExpectColumnValuesToBeUnique"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    examples_from: tuple[str, ...] = ()
    scope: Literal["auto", "column"] = "auto"
    detail: str = "observed {observed}"


@functools.cache
def load_gx() -> Any:
    """Import GX once per process, quietly (no analytics, no INFO logs, no warnings spam)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
        import great_expectations.expectations  # noqa: F401  (registers gx.expectations)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx


def _ephemeral_batch_definition(gx: Any) -> Any:
    """A fresh in-memory context + pandas datasource: nothing is written, nothing is shared."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    asset = context.data_sources.add_pandas(name="llmcf").add_dataframe_asset(name="frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def _columns_read(rule: Rule) -> list[str]:
    cols = [rule.kwargs["column"]] if "column" in rule.kwargs else []
    cols += list(rule.kwargs.get("column_list", ()))
    return cols


def run_rules(
    df: pd.DataFrame,
    rules: Sequence[Rule],
    *,
    derived: Mapping[str, Any] | None = None,
    suite: str,
    dataset: str,
    partition: str = "",
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> CheckReport:
    """Validate ``df`` (plus ``derived`` per-row columns, in positional order) against ``rules``.

    ``derived`` values are array-likes of length ``len(df)``; they are aligned by position, never
    by index label. ``expect_column_to_exist`` rules are evaluated against ``df``'s columns.
    """
    import numpy as np
    import pandas as pd

    gx = load_gx()
    derived = dict(derived or {})
    n = len(df)
    frame = df.reset_index(drop=True)
    failures: list[Failure] = []
    evaluated = 0

    if frame.columns.has_duplicates:  # frame[col] would be a DataFrame; keep the first of each
        dup = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        failures.append(Failure("expect_column_names_to_be_unique", 1, dup, [], f"duplicated: {dup}"))
        frame = frame.loc[:, ~frame.columns.duplicated()]
        evaluated += 1

    available = set(frame.columns) | set(derived)
    active = [r for r in rules if all(c in available for c in r.requires)]

    # Only the columns GX reads, each once; derived ones by position.
    gx_cols: dict[str, Any] = {}
    for rule in active:
        if rule.expectation == "ExpectColumnToExist":
            continue
        for col in _columns_read(rule):
            if col in gx_cols:
                continue
            if col in derived:
                values = np.asarray(derived[col])
                if len(values) != n:
                    raise ValueError(f"derived column {col!r} has {len(values)} values for {n} rows")
                gx_cols[col] = values
            elif col in frame.columns:
                gx_cols[col] = frame[col]
    gx_frame = pd.DataFrame(gx_cols, index=pd.RangeIndex(n))
    # Column-existence is a property of the caller's frame; give GX empty stand-ins for present
    # columns it does not otherwise read, so the rule sees them.
    for rule in active:
        col = rule.kwargs.get("column")
        if rule.expectation == "ExpectColumnToExist" and col in frame.columns and col not in gx_frame:
            gx_frame[col] = np.zeros(n, dtype=np.int8)

    gxe = gx.expectations
    expectations = []
    for i, rule in enumerate(active):
        cls = getattr(gxe, rule.expectation)
        expectations.append(cls(**dict(rule.kwargs), meta={"llmcf_rule": i}))
    evaluated += len(active)
    if not expectations:
        return CheckReport(suite, dataset, partition, n, evaluated, failures)

    with _VALIDATE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch_definition = _ephemeral_batch_definition(gx)
        gx_suite = gx.ExpectationSuite(name=suite, expectations=expectations)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": gx_frame})
        result = batch.validate(gx_suite, result_format="COMPLETE")

    by_rule: dict[int, Any] = {}
    for res in result.results:
        by_rule[int(res.expectation_config.meta["llmcf_rule"])] = res
    for i, rule in enumerate(active):  # report in the suite's order, not GX's
        res = by_rule.get(i)
        if res is None:
            failures.append(Failure(rule.name, 1, [], [], "GX returned no result for this rule"))
        elif not res.success:
            failures.append(_to_failure(rule, res, frame, gx_frame, max_examples))
    return CheckReport(suite, dataset, partition, n, evaluated, failures)


def _to_failure(
    rule: Rule, res: Any, frame: pd.DataFrame, gx_frame: pd.DataFrame, max_examples: int
) -> Failure:
    """Turn one failed GX ExpectationValidationResult into a Failure."""
    info = res.exception_info or {}
    raised = info.get("raised_exception") if isinstance(info, Mapping) else None
    if raised is None and isinstance(info, Mapping):  # GX nests infos per metric on errors
        nested = [v for v in info.values() if isinstance(v, Mapping) and v.get("raised_exception")]
        if nested:
            info, raised = nested[0], True
    if raised:
        msg = str(info.get("exception_message") or "error").splitlines()[0]
        return Failure(rule.name, 1, [], [], f"could not be evaluated: {msg}")

    result = dict(res.result or {})
    if rule.expectation == "ExpectColumnToExist":
        return Failure(rule.name, 1, [], [], "column is missing")
    col = rule.kwargs.get("column")
    if rule.scope == "column":
        observed = result.get("observed_value")
        if observed is None and col in frame.columns:
            observed = str(frame[col].dtype)
        return Failure(rule.name, 1, [], [], rule.detail.format(observed=observed))
    if "unexpected_index_list" not in result:  # table-level (row count, column sets, ...)
        return Failure(rule.name, 1, [], [], rule.detail.format(observed=result.get("observed_value")))

    positions = [int(p) for p in _index_positions(result["unexpected_index_list"])]
    count = int(result.get("unexpected_count", len(positions)))
    examples = _examples(rule, result, frame, gx_frame, positions, max_examples)
    return Failure(rule.name, count, examples, positions)


def _index_positions(index_list: Sequence[Any]) -> list[int]:
    """GX returns labels (or dicts when unexpected_index_column_names is set); labels == positions."""
    out = []
    for item in index_list:
        if isinstance(item, Mapping):  # {"<index col>": v, ...}; not used by us, be tolerant
            item = next(iter(item.values()))
        out.append(int(item))
    return out


def _examples(
    rule: Rule,
    result: Mapping[str, Any],
    frame: pd.DataFrame,
    gx_frame: pd.DataFrame,
    positions: list[int],
    max_examples: int,
) -> list:
    take = positions[:max_examples]
    if rule.examples_from:
        cols = [c for c in rule.examples_from if c in frame.columns or c in gx_frame.columns]
        if not cols:
            return []
        src = {c: (frame[c] if c in frame.columns else gx_frame[c]) for c in cols}
        if len(cols) == 1:
            s = src[cols[0]]
            return [_plain(s.iloc[p]) for p in take]
        return [{c: _plain(src[c].iloc[p]) for c in cols} for p in take]
    return [_plain(v) for v in list(result.get("unexpected_list") or [])[:max_examples]]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-friendly Python value (numpy scalars/arrays, NaN/NA, timestamps, nested)."""
    import numpy as np

    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return _plain(value.item())
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 3] + "..."


def as_int_array(ids: Any) -> np.ndarray:
    """Any iterable of ids (set, list, numpy array, pandas Series) as a sorted unique int64 array."""
    import numpy as np

    if isinstance(ids, np.ndarray):
        arr = ids
    elif hasattr(ids, "to_numpy"):
        arr = ids.to_numpy()
    else:
        arr = np.fromiter((int(v) for v in ids), dtype=np.int64)
    return np.unique(np.asarray(arr, dtype=np.int64))
