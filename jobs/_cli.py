"""Shared entrypoint plumbing for Ray jobs: logging, exit codes, one JSON summary line.

Exit codes are part of the contract with the Airflow operator: 2 = bad arguments and
3 = failed data check are not retried; anything else (1) may be.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_ARGS = 2
EXIT_CHECK_FAILED = 3

SUMMARY_PREFIX = "LLMCF_RESULT "


def add_overrides(parser: argparse.ArgumentParser, example: str = "rec.model.lr=1e-3") -> None:
    """The ``--set SECTION.FIELD=VALUE`` option (repeatable) shared by the jobs."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help=f"override a config field for this run, e.g. {example} (repeatable)",
    )


def add_config_options(parser: argparse.ArgumentParser, example: str = "rec.model.lr=1e-3") -> None:
    """``--profile`` and ``--set``: how every job picks its settings (read them with load_settings)."""
    parser.add_argument("--profile", help="config profile (default $LLMCF_PROFILE or local)")
    add_overrides(parser, example)


def load_settings(profile: str | None, overrides: list[str]) -> Any:
    """The profile's settings with ``--set`` overrides; a bad override is a bad argument (exit 2)."""
    from llmcf_core.config import load_config, with_overrides
    from llmcf_core.layout import InvalidArgument

    try:
        return with_overrides(load_config(profile), overrides)
    except ValueError as exc:  # one line (pydantic's message has several): the job's one error line
        lines = (line.strip() for line in str(exc).splitlines())
        raise InvalidArgument("; ".join(line for line in lines if line)) from None


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _describe(exc: BaseException) -> str:
    """The message plus any notes a caller added (e.g. which day of a replay failed)."""
    notes = getattr(exc, "__notes__", None) or []
    return "; ".join([str(exc), *notes])


def run_job(name: str, body: Callable[[], dict[str, Any]]) -> int:
    """Run ``body``; print its result as one ``LLMCF_RESULT {json}`` line; map errors to exit codes."""
    from llmcf_core.data.samples import HistoryInputError
    from llmcf_core.layout import InvalidArgument
    from llmcf_core.quality import DataCheckFailed

    setup_logging()
    started = time.perf_counter()
    try:
        result = body()
    except InvalidArgument as exc:
        print(f"{name}: invalid argument: {_describe(exc)}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except DataCheckFailed as exc:
        print(f"{name}: data check failed: {_describe(exc)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except HistoryInputError as exc:
        print(f"{name}: data check failed: {_describe(exc)}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    result = {"job": name, "seconds": round(time.perf_counter() - started, 3), **result}
    print(SUMMARY_PREFIX + json.dumps(result, sort_keys=True, default=str), flush=True)
    return EXIT_OK
