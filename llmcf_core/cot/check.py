"""Suite ``cot``: the CoT table of one (partition, version), checked before it is published.

Rules: exactly one row per pool sample (row count == pool size, unique sample_id, every id in
the pool); schema and dtypes; label equal to the sample's label; model/prompt version as
expected; rows that succeeded carry a non-blank text of at least ``min_chars`` characters,
1..max_new_tokens tokens, finish_reason stop/length and neither an echoed prompt sentence nor a
template token; failed rows carry finish_reason ``error``, an error message and no text; the
best-of-N score lies in [0, 1]; the failure rate is at most ``max_failure_rate``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from llmcf_core.cot.score import FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, text_problem
from llmcf_core.quality import CheckReport, Rule, run_rules

DTYPES = {
    "sample_id": "str",
    "label": "int8",
    "cot_text": "str",
    "model_version": "str",
    "prompt_version": "str",
    "n_tokens": "int32",
    "finish_reason": "str",
    "score": "float32",
    "error": "str",
}
_BY_ID = ("sample_id",)


def _true(name: str, col: str, requires: tuple[str, ...]) -> Rule:
    return Rule(name, "ExpectColumnValuesToBeInSet", {"column": col, "value_set": [True]}, requires, _BY_ID)


def _texts(s: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in s.to_numpy(dtype=object)]


def check_cot(
    df: pd.DataFrame,
    *,
    dataset: str,
    partition: dt.date,
    pool_labels: Mapping[str, int],
    model_version: str,
    prompt_version: str,
    max_new_tokens: int,
    min_chars: int,
    max_failure_rate: float,
    forbidden: Sequence[str],
    max_failed_rows: int = 0,
) -> CheckReport:
    """Validate a CoT table against its pool (sample_id -> label) and the stage's settings.

    The failure rate may exceed ``max_failure_rate`` while at most ``max_failed_rows`` rows failed:
    on a small partition (a 1% pool has ~10 prompts a day) one failed CoT is already 10%.
    """
    frame = df.reset_index(drop=True)
    cols = set(frame.columns)
    n = len(frame)
    derived: dict[str, np.ndarray] = {}
    if "sample_id" in cols:
        ids = frame["sample_id"].astype(object).to_numpy()
        derived["_chk_in_pool"] = np.fromiter((i in pool_labels for i in ids), dtype=bool, count=n)
        if "label" in cols:
            labels = frame["label"].to_numpy()
            derived["_chk_label_matches"] = np.fromiter(
                (
                    i not in pool_labels or int(lab) == int(pool_labels[i])
                    for i, lab in zip(ids, labels, strict=True)
                ),
                dtype=bool,
                count=n,
            )
    if {"cot_text", "error", "finish_reason", "n_tokens"} <= cols:
        texts, errors = _texts(frame["cot_text"]), _texts(frame["error"])
        finish = frame["finish_reason"].astype(object).to_numpy()
        tokens = pd.to_numeric(frame["n_tokens"], errors="coerce").to_numpy(dtype="float64")
        failed = np.array([e is not None for e in errors], dtype=bool)
        ok_text = np.array(
            [
                f or text_problem(t, min_chars=min_chars, forbidden=forbidden) is None
                for t, f in zip(texts, failed, strict=True)
            ],
            dtype=bool,
        )
        with np.errstate(invalid="ignore"):
            ok_len = failed | ((tokens >= 1) & (tokens <= max_new_tokens))
        ok_finish = np.where(failed, finish == FINISH_ERROR, np.isin(finish, [FINISH_STOP, FINISH_LENGTH]))
        ok_failed = ~failed | np.array(
            [t is None and bool((e or "").strip()) for t, e in zip(texts, errors, strict=True)], dtype=bool
        )
        derived.update(
            _chk_text_ok=ok_text,
            _chk_length_ok=ok_len,
            _chk_finish_ok=ok_finish.astype(bool),
            _chk_failed_row_ok=ok_failed,
            _chk_failed=failed.astype("float64"),
        )

    rules = [
        Rule(
            f"expect_table_row_count_to_equal(pool size {len(pool_labels)})",
            "ExpectTableRowCountToEqual",
            {"value": len(pool_labels)},
            detail="{observed} rows",
        )
    ]
    rules += [Rule(f"expect_column_to_exist({c})", "ExpectColumnToExist", {"column": c}) for c in DTYPES]
    rules += [
        Rule(
            f"expect_column_values_to_be_of_type({c}, {t})",
            "ExpectColumnValuesToBeOfType",
            {"column": c, "type_": t},
            (c,),
            scope="column",
            detail="dtype {observed}",
        )
        for c, t in DTYPES.items()
        if c not in ("cot_text", "error", "score")  # nullable: all-null columns have no dtype to read
    ]
    rules += [
        Rule(
            "expect_column_values_to_be_unique(sample_id)",
            "ExpectColumnValuesToBeUnique",
            {"column": "sample_id"},
            ("sample_id",),
            _BY_ID,
        ),
        _true("expect_sample_id_in_pool(sample_id)", "_chk_in_pool", ("sample_id",)),
        _true("expect_label_to_match_sample(label)", "_chk_label_matches", ("sample_id", "label")),
        Rule(
            f"expect_column_values_to_be_in_set(model_version, [{model_version}])",
            "ExpectColumnValuesToBeInSet",
            {"column": "model_version", "value_set": [model_version]},
            ("model_version",),
            ("model_version",),
        ),
        Rule(
            f"expect_column_values_to_be_in_set(prompt_version, [{prompt_version}])",
            "ExpectColumnValuesToBeInSet",
            {"column": "prompt_version", "value_set": [prompt_version]},
            ("prompt_version",),
            ("prompt_version",),
        ),
        _true(
            f"expect_cot_text_to_be_usable(non-blank, >= {min_chars} chars, no echoed prompt or template token)",
            "_chk_text_ok",
            ("cot_text", "error"),
        ),
        _true(f"expect_n_tokens_to_be_between(1, {max_new_tokens})", "_chk_length_ok", ("n_tokens", "error")),
        _true(
            "expect_finish_reason_to_match_status(stop/length, error)", "_chk_finish_ok", ("finish_reason",)
        ),
        _true("expect_failed_rows_to_have_error_and_no_text", "_chk_failed_row_ok", ("cot_text", "error")),
        Rule(
            "expect_column_values_to_be_between(score, 0, 1)",
            "ExpectColumnValuesToBeBetween",
            {"column": "score", "min_value": 0.0, "max_value": 1.0},
            ("score",),
            _BY_ID,
        ),
    ]
    if n:
        allowed = max(float(max_failure_rate), max_failed_rows / n)
        floor = f", or {max_failed_rows} failed rows" if max_failed_rows else ""
        rules.append(
            Rule(
                f"expect_failure_rate_to_be_at_most({max_failure_rate:g}{floor})",
                "ExpectColumnMeanToBeBetween",
                {"column": "_chk_failed", "min_value": 0.0, "max_value": allowed},
                ("error",),
                detail="failure rate {observed}",
            )
        )
    return run_rules(
        frame, rules, derived=derived, suite="cot", dataset=dataset, partition=partition.isoformat()
    )
