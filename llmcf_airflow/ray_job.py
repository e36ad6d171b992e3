"""Airflow -> Ray: a deferrable operator and trigger over Ray's Jobs SDK (``JobSubmissionClient``).

Why our own (see docs REFERENCE §2): astro-provider-ray is unmaintained and resubmits duplicate jobs on
retry. Here the Ray submission id is derived from dag/task/partition/entrypoint, so a retry, a worker
crash or a cleared task re-attaches to the running job, or succeeds at once if it already succeeded,
instead of starting a second (GPU) job. Failed attempts are resubmitted as ``<base>-r1``, ``<base>-r2``...

This module is the Airflow side only: ``resolve_dashboard_url`` (Airflow connection first),
``job_result`` and ``raise_for_event`` (job outcome -> XCom or Airflow exception), ``RayJobTrigger``,
``RayJobLink``, ``force_param`` and ``RayJobOperator``. Everything that talks to Ray's Jobs API or reads
the jobs' output (ids, entrypoints, attach-or-submit, ``JobWatcher``, ``parse_result``) lives in
``llmcf_airflow.ray_client``, which imports no Airflow; its public names are re-exported here, so
``from llmcf_airflow.ray_job import job_client, parse_result, ...`` keeps working.

Failure mapping: our jobs exit with code 2 (bad arguments) or 3 (failed data check); those raise
``AirflowFailException`` (no retry). Other job failures (``RayJobError``) and infrastructure errors raise
ordinary exceptions, so Airflow's retries apply. A task re-run by Airflow itself after its check failed
(a worker killed after the job ended) finds that failed attempt of the same run and fails again without
a new job; clearing the task (or a backfill reprocessing failures) starts a new attempt.

Only ``airflow.sdk`` is imported at module level: DAG files import this module at parse time, and Ray's
SDK is imported lazily inside the functions that talk to Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator, BaseOperatorLink, Param
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from llmcf_airflow.ray_client import (
    ACTIVE_STATUSES,
    LOG_TAIL_LINES,
    MAX_ATTEMPTS,
    NON_RETRYABLE_EXIT_CODES,
    RESULT_PREFIX,
    TERMINAL_STATUSES,
    Attempt,
    JobWatcher,
    RayJobError,
    _http_url,
    _status,
    attach_or_submit,
    attempt_id,
    build_entrypoint,
    default_dashboard_url,
    format_failure,
    get_job_info_or_none,
    job_client,
    job_page_url,
    list_attempts,
    parse_result,
    stop_job_quietly,
    submission_id_for,
    wait_for_job,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    # Airflow side (this module)
    "TRIGGER_CLASSPATH",
    "RayJobLink",
    "RayJobOperator",
    "RayJobTrigger",
    "force_param",
    "job_result",
    "raise_for_event",
    "resolve_dashboard_url",
    # re-exported from llmcf_airflow.ray_client
    "ACTIVE_STATUSES",
    "LOG_TAIL_LINES",
    "MAX_ATTEMPTS",
    "NON_RETRYABLE_EXIT_CODES",
    "RESULT_PREFIX",
    "TERMINAL_STATUSES",
    "Attempt",
    "JobWatcher",
    "RayJobError",
    "attach_or_submit",
    "attempt_id",
    "build_entrypoint",
    "default_dashboard_url",
    "format_failure",
    "get_job_info_or_none",
    "job_client",
    "job_page_url",
    "list_attempts",
    "parse_result",
    "stop_job_quietly",
    "submission_id_for",
    "wait_for_job",
]

TRIGGER_CLASSPATH = "llmcf_airflow.ray_job.RayJobTrigger"


# --------------------------------------------------------------------------------------------------
# Addresses and results
# --------------------------------------------------------------------------------------------------


def resolve_dashboard_url(conn_id: str = "ray_default") -> str:
    """Where the Ray Jobs API is, first match wins.

    1. Airflow connection ``conn_id`` (an http URL, e.g. ``AIRFLOW_CONN_RAY_DEFAULT=http://host:8265``;
       extra ``{"dashboard_url": ...}`` or ``{"scheme": "https"}`` are honoured; ``schema`` is the path);
    2. ``$RAY_API_SERVER_ADDRESS`` then ``$RAY_ADDRESS`` (Ray's own order; must be an http(s) URL);
    3. ``load_config().ray.address``;
    4. the local head: ``http://127.0.0.1:<ray.local_dashboard_port>``.

    Steps 2-4 are ``ray_client.default_dashboard_url`` (no Airflow needed).
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
    return default_dashboard_url()


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


# --------------------------------------------------------------------------------------------------
# Outcome: event -> XCom or Airflow exception
# --------------------------------------------------------------------------------------------------


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
        # The run as it is now: its id and how often it was cleared (Airflow bumps the clear count on
        # every clear and on a backfill's reprocessing). A failed check of this same run is not resubmitted.
        clear_number = getattr(context.get("dag_run"), "clear_number", None)
        same_run = None if clear_number is None else {"run_id": ti.run_id, "clear_number": clear_number}
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
            same_run=same_run,
            logger=self.log,
        )
        sid = attempt.submission_id
        self._remember(context, dashboard_url, sid)
        self.log.info("Ray job %s: %s", sid, self._ray_job_url)
        if attempt.action in ("already_succeeded", "already_failed"):
            # The earlier attempt's outcome, from its whole log read once (the job is over): its result
            # line, or (a re-run of this same run after its check failed) that failure again, not retried.
            watcher = JobWatcher(sid, dashboard_url)
            watcher.read_new_lines(final=True)
            info = attempt.info
            event = watcher.event(_status(info), info.message or _status(info), info)
            return {**raise_for_event(event), "reused": True}

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
