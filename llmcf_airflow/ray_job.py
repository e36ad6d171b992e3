"""Airflow -> Ray: a deferrable operator and trigger over Ray's Jobs SDK (``JobSubmissionClient``).

Why our own (see docs REFERENCE §2): astro-provider-ray is unmaintained and resubmits duplicate jobs on
retry. Here the Ray submission id is derived from dag/task/partition/entrypoint, so a retry, a worker
crash or a cleared task re-attaches to the running job, or succeeds at once if it already succeeded,
instead of starting a second (GPU) job. Failed attempts are resubmitted as ``<base>-r1``, ``<base>-r2``...

Failure mapping: our jobs exit with code 2 (bad arguments) or 3 (failed data check); those raise
``AirflowFailException`` (no retry). Other job failures and infrastructure errors raise ordinary
exceptions, so Airflow's retries apply.

Only ``airflow.sdk`` is imported at module level: DAG files import this module at parse time, and Ray's
SDK is imported lazily inside the functions that talk to Ray.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator, BaseOperatorLink, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from jobs._cli import EXIT_BAD_ARGS, EXIT_CHECK_FAILED, SUMMARY_PREFIX

if TYPE_CHECKING:
    from airflow.sdk import Context
    from ray.job_submission import JobDetails, JobSubmissionClient

log = logging.getLogger(__name__)

TRIGGER_CLASSPATH = "llmcf_airflow.ray_job.RayJobTrigger"
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


class RayJobError(AirflowException):
    """A Ray job failed, was stopped, timed out or was lost; retryable (Airflow retries apply)."""


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


def resolve_dashboard_url(conn_id: str = "ray_default") -> str:
    """Where the Ray Jobs API is, first match wins.

    1. Airflow connection ``conn_id`` (an http URL, e.g. ``AIRFLOW_CONN_RAY_DEFAULT=http://host:8265``;
       extra ``{"dashboard_url": ...}`` or ``{"scheme": "https"}`` are honoured; ``schema`` is the path);
    2. ``$RAY_API_SERVER_ADDRESS`` then ``$RAY_ADDRESS`` (Ray's own order; must be an http(s) URL);
    3. ``load_config().ray.address``;
    4. the local head: ``http://127.0.0.1:<ray.local_dashboard_port>``.
    """
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        conn = None
    if conn is not None:
        extra = conn.extra_dejson or {}
        if extra.get("dashboard_url"):
            return _http_url(str(extra["dashboard_url"]), f"connection {conn_id} extra dashboard_url")
        host = (conn.host or "").strip()
        if not host:
            raise ValueError(f"Airflow connection {conn_id!r} has no host")
        if "://" in host:
            return _http_url(host, f"connection {conn_id} host")
        scheme = extra.get("scheme") or (conn.conn_type if conn.conn_type in ("http", "https") else "http")
        url = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        if conn.schema:
            url += "/" + conn.schema.strip("/")
        return _http_url(url, f"connection {conn_id}")
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
    those are set; the Airflow connection must win over them, so that override is disabled while the
    client is built (under a lock; only the address lookup is touched).
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


def job_result(xcom: dict | None, *keys: str) -> dict:
    """The job's result out of a ``RayJobOperator`` XCom, which must name ``keys`` (non-empty): a
    DAG's check task takes what the job says it wrote instead of working paths out again."""
    result = (xcom or {}).get("result")
    if not isinstance(result, dict):
        raise AirflowFailException(f"the Ray job returned no {RESULT_PREFIX.strip()} (XCom {xcom!r})")
    missing = [k for k in keys if not result.get(k)]
    if missing:
        raise AirflowFailException(f"the Ray job's {RESULT_PREFIX.strip()} lacks {missing}: {result}")
    return result


def _enum_value(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _status(info: JobDetails) -> str:
    return str(_enum_value(info.status))


# --------------------------------------------------------------------------------------------------
# Attach or submit
# --------------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """What ``attach_or_submit`` decided: ``action`` is submitted, attached or already_succeeded."""

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


def attach_or_submit(
    client: JobSubmissionClient,
    base: str,
    *,
    entrypoint: str,
    runtime_env: dict | None = None,
    metadata: dict[str, str] | None = None,
    entrypoint_num_cpus: float = 0,
    force: bool = False,
    logger: logging.Logger | Any = log,
) -> Attempt:
    """Reattach semantics: a PENDING/RUNNING attempt is attached to (never a second submission); if the
    latest attempt SUCCEEDED we are done (unless ``force``); otherwise the next free id is submitted."""
    for _ in range(3):  # a concurrent submitter can take the id between our check and submit
        attempts = list_attempts(client, base)
        active = [(sid, info) for sid, info in attempts if _status(info) in ACTIVE_STATUSES]
        if active:
            sid, info = active[-1]
            logger.info("Attaching to Ray job %s (%s); not submitting again", sid, _status(info))
            return Attempt(sid, "attached", info)
        if attempts:
            sid, info = attempts[-1]
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
                metadata={k: str(v) for k, v in (metadata or {}).items()},
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


def raise_for_event(event: dict) -> dict:
    """Map a terminal event to the task outcome: the XCom dict, or the right exception."""
    status = event["status"]
    if status == "SUCCEEDED":
        line = event.get("result_line")
        try:
            result = parse_result([line] if line else [])
        except ValueError as exc:
            raise AirflowFailException(f"Ray job {event['submission_id']} succeeded but {exc}") from None
        return {
            "submission_id": event["submission_id"],
            "status": status,
            "job_url": event["job_url"],
            "dashboard_url": event["dashboard_url"],
            "result": result,
        }
    text = format_failure(event)
    if status == "FAILED" and event.get("exit_code") in NON_RETRYABLE_EXIT_CODES:
        raise AirflowFailException(f"{text}\n(exit code {event['exit_code']}: not retried)")
    raise RayJobError(text)


# --------------------------------------------------------------------------------------------------
# Trigger
# --------------------------------------------------------------------------------------------------


class RayJobTrigger(BaseTrigger):
    """Waits in the triggerer for a Ray job to end, streaming its log lines into the task log.

    Ray SDK calls run in threads (``asyncio.to_thread``) so the triggerer's event loop never blocks. The
    trigger enforces the job deadline itself (stops the job, then reports TIMEOUT), because Airflow's own
    deferral timeout fails the task without stopping anything. ``on_kill`` (Airflow >= 3.3: called only
    when a user marks/clears the task, not on triggerer restarts) stops the Ray job; ``cleanup`` does not.
    """

    def __init__(
        self,
        submission_id: str,
        dashboard_url: str,
        poll_interval: float = 2.0,
        deadline: float | None = None,
        log_offset: int = 0,
        fetch_logs: bool = True,
    ) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.dashboard_url = dashboard_url
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.log_offset = int(log_offset)
        self.fetch_logs = fetch_logs

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            TRIGGER_CLASSPATH,
            {
                "submission_id": self.submission_id,
                "dashboard_url": self.dashboard_url,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "log_offset": self.log_offset,
                "fetch_logs": self.fetch_logs,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = JobWatcher(
            self.submission_id,
            self.dashboard_url,
            deadline=self.deadline,
            log_offset=self.log_offset,
            fetch_logs=self.fetch_logs,
        )
        self.log.info(
            "Waiting for Ray job %s (%s)",
            self.submission_id,
            job_page_url(self.dashboard_url, self.submission_id),
        )
        while True:
            event, lines = await asyncio.to_thread(watcher.step)
            for line in lines:
                self.log.info("[ray] %s", line)
            if event is not None:
                self.log.info("Ray job %s ended: %s", self.submission_id, event["status"])
                yield TriggerEvent(event)
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        await asyncio.to_thread(stop_job_quietly, self.dashboard_url, self.submission_id, self.log)


# --------------------------------------------------------------------------------------------------
# Operator
# --------------------------------------------------------------------------------------------------


class RayJobLink(BaseOperatorLink):
    """Adds a "Ray job" button to the task view: the dashboard page of the job this try ran or attached to."""

    name = "Ray job"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        url = getattr(operator, "_ray_job_url", None)
        if url:
            return url
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def force_param() -> Param:
    """The trigger-form switch every DAG passes on as ``RayJobOperator(force="{{ params.force }}")``."""
    return Param(
        False,
        type="boolean",
        title="Force",
        description="Resubmit Ray jobs even if an identical job already succeeded.",
    )


class RayJobOperator(BaseOperator):
    """Run ``python -m jobs.<job> <job_args>`` as a Ray job, exactly once per (dag, task, partition, args).

    :param job: module under ``jobs/`` (e.g. ``"ingest"``).
    :param job_args: command-line arguments (templated).
    :param partition: partition key (templated); part of the Ray submission id.
    :param runtime_env: Ray runtime_env for the job (templated).
    :param entrypoint_num_cpus: CPUs reserved for the driver; 0 so it does not hold a core on a small head.
    :param ray_conn_id: Airflow connection with the dashboard URL (see ``resolve_dashboard_url``).
    :param poll_interval: seconds between polls (default: config ``ray.poll_interval_s``).
    :param job_timeout: seconds from the job's start before it is stopped and the task fails
        (default: config ``ray.job_timeout_s``).
    :param deferrable: wait in the triggerer (True) or poll in the worker (False).
    :param force: run again even when an attempt with these inputs already succeeded (templated).
    :param stage: pipeline stage this job belongs to; skipped when the run's ``stages`` param is a
        non-empty list without it.
    """

    template_fields: Sequence[str] = ("job_args", "partition", "runtime_env", "force")
    template_fields_renderers = {"runtime_env": "json"}
    operator_extra_links = (RayJobLink(),)
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        job: str,
        partition: str,
        job_args: Sequence[Any] = (),
        runtime_env: dict | None = None,
        entrypoint_num_cpus: float = 0,
        ray_conn_id: str = "ray_default",
        poll_interval: float | None = None,
        job_timeout: float | None = None,
        deferrable: bool = True,
        force: bool | str = False,
        stage: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        build_entrypoint(job)  # fail at parse time on a bad job name
        self.job = job
        self.job_args = list(job_args) if isinstance(job_args, (list, tuple)) else job_args
        self.partition = partition
        self.runtime_env = runtime_env
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        self.deferrable = deferrable
        self.force = force
        self.stage = stage
        self._submission_id: str | None = None
        self._dashboard_url: str | None = None
        self._ray_job_url: str | None = None

    # -- helpers -----------------------------------------------------------------------------------

    def _settings(self) -> tuple[float, float]:
        from llmcf_core.config import load_config

        cfg = load_config().ray
        poll = float(self.poll_interval if self.poll_interval is not None else cfg.poll_interval_s)
        timeout = float(self.job_timeout if self.job_timeout is not None else cfg.job_timeout_s)
        return poll, timeout

    def _base_id(self, context: Context) -> tuple[str, str]:
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        task_id = ti.task_id if map_index < 0 else f"{ti.task_id}-m{map_index}"
        entrypoint = build_entrypoint(self.job, self.job_args)
        return submission_id_for(ti.dag_id, task_id, str(self.partition), entrypoint), entrypoint

    def _remember(self, context: Context, dashboard_url: str, submission_id: str) -> None:
        self._dashboard_url = dashboard_url
        self._submission_id = submission_id
        self._ray_job_url = job_page_url(dashboard_url, submission_id)
        try:  # visible while deferred; RayJobLink reads it back
            context["ti"].xcom_push(key=RayJobLink().xcom_key, value=self._ray_job_url)
        except Exception as exc:  # noqa: BLE001 - a missing link must not fail the task
            self.log.debug("Could not push the Ray job link: %s", exc)

    # -- execution ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict:
        selected = (context.get("params") or {}).get("stages") or []
        if self.stage and selected and self.stage not in selected:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"stage {self.stage!r} not selected (stages={selected})")
        poll_interval, job_timeout = self._settings()
        dashboard_url = resolve_dashboard_url(self.ray_conn_id)
        base, entrypoint = self._base_id(context)
        ti = context["ti"]
        client = job_client(dashboard_url)
        attempt = attach_or_submit(
            client,
            base,
            entrypoint=entrypoint,
            runtime_env=self.runtime_env,
            metadata={
                "dag_id": ti.dag_id,
                "task_id": ti.task_id,
                "run_id": ti.run_id,
                "try_number": ti.try_number,
                "map_index": ti.map_index,
                "partition": self.partition,
            },
            entrypoint_num_cpus=self.entrypoint_num_cpus,
            force=_as_bool(self.force),
            logger=self.log,
        )
        sid = attempt.submission_id
        self._remember(context, dashboard_url, sid)
        self.log.info("Ray job %s: %s", sid, self._ray_job_url)
        if attempt.action == "already_succeeded":
            # The earlier run's result line: read its whole log once (the job is over, the log is final).
            watcher = JobWatcher(sid, dashboard_url)
            watcher.read_new_lines(final=True)
            return {**raise_for_event(watcher.event("SUCCEEDED", "")), "reused": True}

        started = (attempt.info.start_time or time.time() * 1000) / 1000.0
        deadline = started + job_timeout
        if self.deferrable:
            remaining = max(deadline - time.time(), 0.0)
            self.defer(
                trigger=RayJobTrigger(
                    submission_id=sid,
                    dashboard_url=dashboard_url,
                    poll_interval=poll_interval,
                    deadline=deadline,
                ),
                method_name="execute_complete",
                # Backstop only: the trigger stops the job at the deadline and reports TIMEOUT itself.
                timeout=dt.timedelta(seconds=remaining + max(120.0, 3 * poll_interval)),
            )
        watcher = JobWatcher(sid, dashboard_url, deadline=deadline)
        event = wait_for_job(watcher, poll_interval, logger=self.log)
        return self.execute_complete(context, event)

    def execute_complete(self, context: Context, event: dict) -> dict:
        """Resume after the trigger (or the synchronous wait): success dict or the mapped exception."""
        self._dashboard_url = event.get("dashboard_url")
        self._submission_id = event.get("submission_id")
        self._ray_job_url = event.get("job_url")
        self.log.info("Ray job %s finished: %s", event.get("submission_id"), event.get("status"))
        return raise_for_event(event)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context):
        """Airflow's own deferral timeout (backstop) fails the task without touching Ray: stop the job."""
        from airflow.sdk.exceptions import TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            with contextlib.suppress(Exception):
                url = resolve_dashboard_url(self.ray_conn_id)
                base, _ = self._base_id(context)
                for sid, info in list_attempts(job_client(url), base):
                    if _status(info) in ACTIVE_STATUSES:
                        stop_job_quietly(url, sid, self.log)
            raise

    def on_kill(self) -> None:
        """The worker is killing this task (synchronous wait): stop the Ray job too."""
        if self._submission_id and self._dashboard_url:
            stop_job_quietly(self._dashboard_url, self._submission_id, self.log)
