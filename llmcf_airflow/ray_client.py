"""Ray side of Airflow -> Ray: Ray's Jobs API (``JobSubmissionClient``) and the jobs' output, no Airflow.

Everything here is plain Python plus Ray's SDK (imported lazily inside the functions that talk to Ray), so
it runs in any process: the Airflow operator and trigger (``llmcf_airflow.ray_job``), tests, scripts.
There is deliberately no ``airflow`` import, at module level or inside a function
(tests/unit/test_ray_client_no_airflow.py imports this module with Airflow blocked).

What lives here:

- addresses and ids: ``default_dashboard_url`` (environment, then config, then the local head; the
  Airflow connection comes first in ``ray_job.resolve_dashboard_url``), ``submission_id_for``,
  ``attempt_id``, ``build_entrypoint``, ``job_page_url``, ``job_client``;
- attach or submit: ``get_job_info_or_none``, ``list_attempts``, ``attach_or_submit`` (a PENDING/RUNNING
  attempt is re-attached, a SUCCEEDED one reused, a failed one followed by ``<base>-r1``, ``-r2``...),
  ``stop_job_quietly``;
- waiting: ``JobWatcher`` (one polling step shared by the worker's loop and the trigger; it turns the
  end of a job into an event dict), ``wait_for_job``;
- output: ``parse_result`` (the job's ``LLMCF_RESULT {json}`` line) and ``format_failure``.

Errors: ``RayJobError`` (a plain ``RuntimeError``) when no attempt could be submitted or attached;
``ValueError`` for a bad address, job name or result line. Mapping job outcomes to Airflow's exceptions
(exit codes 2 and 3 are not retried) is done in ``llmcf_airflow.ray_job.raise_for_event``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs._cli import EXIT_BAD_ARGS, EXIT_CHECK_FAILED, SUMMARY_PREFIX

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

log = logging.getLogger(__name__)

ACTIVE_STATUSES = frozenset({"PENDING", "RUNNING"})
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# Exit codes of our jobs that no retry can fix: 2 = bad arguments, 3 = failed data check.
NON_RETRYABLE_EXIT_CODES = frozenset({EXIT_BAD_ARGS, EXIT_CHECK_FAILED})
LOG_TAIL_LINES = 30
MAX_ATTEMPTS = 100
# Ray 2.60 JobInfo.message for a non-zero exit (job_supervisor.py):
# "Job entrypoint command failed with exit code 3, last available logs (truncated to 20,000 chars):\n..."
_EXIT_CODE_RE = re.compile(r"failed with exit code (-?\d+)")
_JOB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Every job under jobs/ ends by printing one line ``LLMCF_RESULT {json}`` (jobs/_cli.py run_job): what
# it wrote (paths, partition, rows, versions). The operator returns the last such line as the task's
# XCom ``result``, so later tasks take the job's own answer instead of working it out again.
RESULT_PREFIX = SUMMARY_PREFIX


class RayJobError(RuntimeError):
    """A Ray job could not be submitted, failed, was stopped, timed out or was lost; retryable (Airflow's
    retries apply: it is not ``AirflowFailException``)."""


# --------------------------------------------------------------------------------------------------
# Addresses and ids
# --------------------------------------------------------------------------------------------------


def _http_url(value: str, source: str) -> str:
    """``value`` as a dashboard URL, or a clear error for the GCS addresses Ray also accepts."""
    value = value.strip().rstrip("/")
    if value == "auto" or not re.match(r"^https?://", value):
        raise ValueError(
            f"{source}={value!r} is not a Ray dashboard URL: the Jobs API needs the dashboard's "
            "http(s) address, e.g. http://127.0.0.1:8265 (not 'auto', a GCS host:port or ray://)"
        )
    return value


def default_dashboard_url() -> str:
    """The Ray Jobs API address without Airflow, first match wins.

    1. ``$RAY_API_SERVER_ADDRESS`` then ``$RAY_ADDRESS`` (Ray's own order; must be an http(s) URL);
    2. ``load_config().ray.address``;
    3. the local head: ``http://127.0.0.1:<ray.local_dashboard_port>``.
    """
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(var):
            return _http_url(os.environ[var], var)

    from llmcf_core.config import load_config

    ray_cfg = load_config().ray
    if ray_cfg.address:
        return _http_url(ray_cfg.address, "config ray.address")
    return f"http://127.0.0.1:{ray_cfg.local_dashboard_port}"


def _safe(part: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(part)).strip("-")[:limit] or "x"


def submission_id_for(dag_id: str, task_id: str, partition: str, entrypoint: str) -> str:
    """Deterministic Ray submission id: readable parts plus a hash of all inputs (entrypoint included), so
    a retry finds the same job and changed arguments give a new one. Only ``[A-Za-z0-9_-]``."""
    digest = hashlib.sha256(json.dumps([dag_id, task_id, partition, entrypoint]).encode()).hexdigest()[:10]
    return f"{_safe(dag_id, 40)}__{_safe(task_id, 40)}__{_safe(partition, 32)}__{digest}"


def attempt_id(base: str, attempt: int) -> str:
    """``base`` for the first attempt, then ``base-r1``, ``base-r2``, ..."""
    return base if attempt == 0 else f"{base}-r{attempt}"


def build_entrypoint(job: str, job_args: Sequence[Any] = ()) -> str:
    """``python -m jobs.<job> <args>``, shell-quoted (Ray runs the entrypoint through a shell)."""
    if not _JOB_NAME_RE.match(job):
        raise ValueError(f"job must be a module name under jobs/ (e.g. 'ingest'), got {job!r}")
    return shlex.join(["python", "-m", f"jobs.{job}", *(str(a) for a in job_args)])


def job_page_url(dashboard_url: str, submission_id: str) -> str:
    """The Ray dashboard page of one job."""
    return f"{dashboard_url.rstrip('/')}/#/jobs/{submission_id}"


_CLIENT_LOCK = threading.Lock()


def job_client(dashboard_url: str) -> JobSubmissionClient:
    """A ``JobSubmissionClient`` for exactly ``dashboard_url``.

    Ray's client replaces its ``address`` argument with ``$RAY_API_SERVER_ADDRESS``/``$RAY_ADDRESS`` when
    those are set; the address given (e.g. from the Airflow connection) must win over them, so that
    override is disabled while the client is built (under a lock; only the address lookup is touched).
    """
    from ray.dashboard.modules.job import sdk as job_sdk

    from llmcf_core.localray import ray_auth_headers

    # Ray token auth (on by default for new local clusters since Ray 2.5x): the SDK only sends the
    # token in processes that enabled it, so send it explicitly (RAY_AUTH_TOKEN or ~/.ray/auth_token).
    headers = ray_auth_headers() or None
    env = [os.environ.get(v) for v in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")]
    if all(not v or v.rstrip("/") == dashboard_url.rstrip("/") for v in env):
        return job_sdk.JobSubmissionClient(dashboard_url, headers=headers)
    with _CLIENT_LOCK:
        original = job_sdk.get_address_for_submission_client
        job_sdk.get_address_for_submission_client = lambda address: address
        try:
            return job_sdk.JobSubmissionClient(dashboard_url, headers=headers)
        finally:
            job_sdk.get_address_for_submission_client = original


def _is_not_found(exc: Exception) -> bool:
    # Ray raises RuntimeError("Request failed with status code 404: Job <id> does not exist.").
    return isinstance(exc, RuntimeError) and "status code 404" in str(exc)


def get_job_info_or_none(client: JobSubmissionClient, submission_id: str) -> JobDetails | None:
    """The job's details, or None when Ray has no job with that id (other errors propagate)."""
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if _is_not_found(exc):
            return None
        raise


def parse_result(lines: Sequence[str] | str) -> dict | None:
    """The job's result: the JSON object of the last ``LLMCF_RESULT {...}`` line, or None.

    A line that starts with the prefix but does not hold a JSON object is an error of the job, not of
    the logs: it raises ``ValueError`` naming the line, so a broken result never passes as "no result".
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    for line in reversed(lines):
        text = line.strip()
        if not text.startswith(RESULT_PREFIX):
            continue
        try:
            value = json.loads(text[len(RESULT_PREFIX) :])
        except ValueError as exc:
            raise ValueError(f"unreadable {RESULT_PREFIX.strip()} line ({exc}): {text[:200]!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{RESULT_PREFIX.strip()} is not a JSON object: {text[:200]!r}")
        return value
    return None


def _enum_value(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _status(info: JobDetails) -> str:
    return str(_enum_value(info.status))


# --------------------------------------------------------------------------------------------------
# Attach or submit
# --------------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """What ``attach_or_submit`` decided: ``action`` is submitted, attached, already_succeeded or
    already_failed."""

    submission_id: str
    action: str
    info: JobDetails


def list_attempts(client: JobSubmissionClient, base: str) -> list[tuple[str, JobDetails]]:
    """Existing attempts ``base``, ``base-r1``, ... up to the first id Ray does not know."""
    found = []
    for n in range(MAX_ATTEMPTS):
        sid = attempt_id(base, n)
        info = get_job_info_or_none(client, sid)
        if info is None:
            break
        found.append((sid, info))
    return found


def _failed_for_good_in(info: JobDetails, same_run: Mapping[str, Any] | None) -> bool:
    """The attempt FAILED with a non-retryable exit code and was submitted by the run ``same_run`` names."""
    if not same_run or _status(info) != "FAILED" or _exit_code(info) not in NON_RETRYABLE_EXIT_CODES:
        return False
    meta = getattr(info, "metadata", None) or {}
    return all(meta.get(k) == str(v) for k, v in same_run.items())


def attach_or_submit(
    client: JobSubmissionClient,
    base: str,
    *,
    entrypoint: str,
    runtime_env: dict | None = None,
    metadata: dict[str, str] | None = None,
    entrypoint_num_cpus: float = 0,
    force: bool = False,
    same_run: Mapping[str, Any] | None = None,
    logger: logging.Logger | Any = log,
) -> Attempt:
    """Reattach semantics: a PENDING/RUNNING attempt is attached to (never a second submission); if the
    latest attempt SUCCEEDED we are done (unless ``force``); otherwise the next free id is submitted.

    ``same_run``: metadata that names the submitter's run as it is now (the operator passes the Airflow
    run id and the run's clear count); it is added to the submitted job's metadata. When the latest attempt FAILED with an exit code no retry can fix
    (bad arguments, failed data check) and its metadata holds these same values, it is returned as
    ``already_failed`` instead of submitting again: Airflow can re-run a task whose worker was killed
    after the job ended (seen under load), and that must not re-run a failed check. A cleared run
    (``airflow tasks clear``, the UI's clear, a backfill reprocessing failures) has a new clear count,
    so it submits a new attempt, as a user who repaired the input expects."""
    for _ in range(3):  # a concurrent submitter can take the id between our check and submit
        attempts = list_attempts(client, base)
        active = [(sid, info) for sid, info in attempts if _status(info) in ACTIVE_STATUSES]
        if active:
            sid, info = active[-1]
            logger.info("Attaching to Ray job %s (%s); not submitting again", sid, _status(info))
            return Attempt(sid, "attached", info)
        if attempts:
            sid, info = attempts[-1]
            if not force and _failed_for_good_in(info, same_run):
                logger.info(
                    "Ray job %s already FAILED with exit code %s in this run: not submitting again "
                    "(repair the input, then clear the task to run it again)",
                    sid,
                    _exit_code(info),
                )
                return Attempt(sid, "already_failed", info)
            if _status(info) == "SUCCEEDED" and not force:
                logger.info(
                    "Ray job %s already SUCCEEDED for these inputs: succeeding without resubmitting "
                    "(set force=True to run it again)",
                    sid,
                )
                return Attempt(sid, "already_succeeded", info)
            logger.info("Latest attempt %s ended %s; submitting a new attempt", sid, _status(info))
        sid = attempt_id(base, len(attempts))
        try:
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=sid,
                runtime_env=runtime_env or None,
                metadata={k: str(v) for k, v in {**(metadata or {}), **(same_run or {})}.items()},
                entrypoint_num_cpus=entrypoint_num_cpus,
            )
        except RuntimeError as exc:
            if "already exists" in str(exc):
                logger.warning("Submission id %s was taken concurrently; re-checking", sid)
                continue
            raise
        logger.info("Submitted Ray job %s: %s", sid, entrypoint)
        return Attempt(sid, "submitted", client.get_job_info(sid))
    raise RayJobError(f"could not submit or attach a Ray job for {base} (ids kept being taken)")


def stop_job_quietly(dashboard_url: str, submission_id: str, logger: logging.Logger | Any = log) -> bool:
    """Ask Ray to stop a job; never raises (used from kill/timeout paths)."""
    try:
        stopped = job_client(dashboard_url).stop_job(submission_id)
        logger.info("Requested stop of Ray job %s (was running: %s)", submission_id, stopped)
        return bool(stopped)
    except Exception as exc:  # noqa: BLE001 - best effort on the way out
        logger.warning("Could not stop Ray job %s: %s", submission_id, exc)
        return False


# --------------------------------------------------------------------------------------------------
# Waiting: one polling step shared by the synchronous loop and the trigger
# --------------------------------------------------------------------------------------------------


def _exit_code(info: JobDetails) -> int | None:
    code = getattr(info, "driver_exit_code", None)
    if code is not None:
        return int(code)
    match = _EXIT_CODE_RE.search((info.message or "").split("\n", 1)[0])
    return int(match.group(1)) if match else None


class JobWatcher:
    """Polls one Ray job: status plus new log lines (by offset into ``get_job_logs``), and turns the end
    (terminal status, deadline, lost job, repeated errors) into an event dict.

    ``step()`` does blocking HTTP: call it directly in the worker, via ``asyncio.to_thread`` in the trigger.
    """

    def __init__(
        self,
        submission_id: str,
        dashboard_url: str,
        *,
        deadline: float | None = None,
        log_offset: int = 0,
        fetch_logs: bool = True,
        max_poll_errors: int = 5,
        error_grace_s: float = 120.0,
    ) -> None:
        self.submission_id = submission_id
        self.dashboard_url = dashboard_url
        self.deadline = deadline
        self.log_offset = log_offset
        self.fetch_logs = fetch_logs
        self.max_poll_errors = max_poll_errors
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        # The last LLMCF_RESULT line seen; kept apart from the tail so later log lines cannot push it out.
        self.result_line: str | None = None
        self._client: JobSubmissionClient | None = None
        self.error_grace_s = error_grace_s
        self._errors = 0
        self._first_error: float | None = None

    @property
    def client(self) -> JobSubmissionClient:
        if self._client is None:
            self._client = job_client(self.dashboard_url)
        return self._client

    def read_new_lines(self, final: bool) -> list[str]:
        """Complete lines written since the last call (a trailing partial line waits, unless final)."""
        if not self.fetch_logs:
            return []
        text = self.client.get_job_logs(self.submission_id) or ""
        if len(text) < self.log_offset:  # logs were replaced (should not happen): start over
            self.log_offset = 0
        chunk = text[self.log_offset :]
        if not final:
            cut = chunk.rfind("\n") + 1
            chunk = chunk[:cut]
        self.log_offset += len(chunk)
        lines = chunk.splitlines()
        self.tail.extend(lines)
        for line in reversed(lines):
            if line.strip().startswith(RESULT_PREFIX):
                self.result_line = line
                break
        return lines

    def event(self, status: str, message: str, info: JobDetails | None = None, **extra: Any) -> dict:
        return {
            "status": status,
            "submission_id": self.submission_id,
            "dashboard_url": self.dashboard_url,
            "job_url": job_page_url(self.dashboard_url, self.submission_id),
            "message": message,
            "exit_code": _exit_code(info) if info is not None else None,
            "error_type": _enum_value(getattr(info, "error_type", None)),
            "log_tail": list(self.tail),
            "log_offset": self.log_offset,
            "result_line": self.result_line,
            **extra,
        }

    def step(self) -> tuple[dict | None, list[str]]:
        """One poll: ``(event or None, new log lines)``; an event means the wait is over."""
        try:
            info = get_job_info_or_none(self.client, self.submission_id)
            if info is None:
                return self.event(
                    "LOST",
                    f"Ray job {self.submission_id} no longer exists at {self.dashboard_url} "
                    "(head restarted or job deleted)",
                ), []
            status = _status(info)
            lines = self.read_new_lines(final=status in TERMINAL_STATUSES)
            self._errors, self._first_error = 0, None
        except Exception as exc:  # noqa: BLE001 - transient errors (dashboard restart) are tolerated a while
            self._errors += 1
            self._first_error = self._first_error or time.time()
            if self._errors >= self.max_poll_errors and time.time() - self._first_error >= self.error_grace_s:
                return self.event(
                    "ERROR", f"polling Ray job {self.submission_id} failed {self._errors} times: {exc!r}"
                ), []
            log.warning(
                "Polling Ray job %s failed (%s/%s): %s",
                self.submission_id,
                self._errors,
                self.max_poll_errors,
                exc,
            )
            return None, []
        if status in TERMINAL_STATUSES:
            return self.event(status, info.message or status, info), lines
        if self.deadline is not None and time.time() > self.deadline:
            return self._timeout(), lines
        return None, lines

    def _timeout(self) -> dict:
        stop_job_quietly(self.dashboard_url, self.submission_id)
        end = time.time() + 30
        info = None
        with contextlib.suppress(Exception):
            while time.time() < end:
                info = get_job_info_or_none(self.client, self.submission_id)
                if info is None or _status(info) in TERMINAL_STATUSES:
                    break
                time.sleep(1)
            self.read_new_lines(final=True)
        return self.event(
            "TIMEOUT",
            f"Ray job {self.submission_id} exceeded the job timeout and was stopped "
            f"(status now {_status(info) if info is not None else 'unknown'})",
            info,
        )


def wait_for_job(watcher: JobWatcher, poll_interval: float, logger: logging.Logger | Any = log) -> dict:
    """Synchronous wait (``deferrable=False``): the same ``step()`` the trigger runs."""
    while True:
        event, lines = watcher.step()
        for line in lines:
            logger.info("[ray] %s", line)
        if event is not None:
            return event
        time.sleep(poll_interval)


def format_failure(event: dict) -> str:
    """Ray's message (first line) plus the last log lines."""
    message = (event.get("message") or "").split("\n", 1)[0]
    message = re.sub(r",? last available logs.*$", "", message)
    tail = event.get("log_tail") or []
    text = f"Ray job {event['submission_id']} {event['status']}: {message} ({event.get('job_url')})"
    if tail:
        text += f"\n--- last {len(tail)} log lines ---\n" + "\n".join(tail)
    return text
