"""Failure and deadline notifications: one grep-able log line, optionally a webhook post.

The line looks like::

    LLMCF_FAILURE dag=llmcf_refresh partition=1998-01-15 stage=samples task=samples.ingest try=1 \
        retryable=no reason="Ray job ... failed with exit code 3: samples check FAILED ..."

If the Airflow connection named by ``airflow.alert_conn_id`` (default ``llmcf_alerts``) exists,
the same fields are posted to it as JSON (its host is the URL; its password, if any, is sent as a
bearer token). Notification problems are logged, never raised: they must not mask the failure.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger("llmcf.alerts")

_NO_RETRY_MARKERS = ("AirflowFailException", "exit code 2", "exit code 3", "data check failed")


def _partition(context: dict[str, Any]) -> str:
    ti = context.get("ti")
    if ti is not None:
        try:
            value = ti.xcom_pull(task_ids="resolve_partition")
            if value:
                return str(value)
        except Exception:  # noqa: BLE001 - best effort for the message only
            pass
    run = context.get("dag_run")
    logical = getattr(run, "logical_date", None)
    return logical.date().isoformat() if logical else (context.get("params") or {}).get("partition") or "?"


def failure_fields(context: dict[str, Any]) -> dict[str, Any]:
    ti = context.get("ti")
    task_id = getattr(ti, "task_id", "?")
    exc = context.get("exception")
    reason = " ".join(f"{type(exc).__name__}: {exc}".split()) if exc is not None else "unknown"
    return {
        "dag": getattr(context.get("dag_run"), "dag_id", None) or getattr(ti, "dag_id", "?"),
        "partition": _partition(context),
        "stage": task_id.split(".")[0],
        "task": task_id,
        "try": getattr(ti, "try_number", "?"),
        "retryable": "no" if any(m in reason for m in _NO_RETRY_MARKERS) else "yes",
        "reason": reason[:1000],
    }


def format_line(fields: dict[str, Any]) -> str:
    keys = ("dag", "partition", "stage", "task", "try", "retryable")
    return (
        "LLMCF_FAILURE "
        + " ".join(f"{k}={fields[k]}" for k in keys)
        + f" reason={json.dumps(fields['reason'])}"
    )


def _post(conn_id: str, payload: dict[str, Any]) -> None:
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - no such connection: logging is enough
        return
    host = conn.host or ""
    port = f":{conn.port}" if conn.port else ""
    url = host if "://" in host else f"{conn.schema or 'https'}://{host}{port}"
    headers = {"Content-Type": "application/json"}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10):
            pass
    except Exception as exc:  # noqa: BLE001
        log.warning("could not post alert to connection %s: %s", conn_id, exc)


def on_failure(context: dict[str, Any]) -> None:
    """Task ``on_failure_callback``: the one-line summary, then the optional webhook."""
    from llmcf_core.config import load_config

    fields = failure_fields(context)
    log.error(format_line(fields))
    print(format_line(fields), flush=True)
    _post(load_config().airflow.alert_conn_id, {"event": "task_failed", **fields})


async def on_deadline_missed(**kwargs: Any) -> None:
    """Deadline alert callback (runs in the triggerer): a run is taking too long."""
    context = kwargs.get("context") or {}
    run = context.get("dag_run") or {}
    dag_id = getattr(run, "dag_id", None) or (run.get("dag_id") if isinstance(run, dict) else None)
    run_id = getattr(run, "run_id", None) or (run.get("run_id") if isinstance(run, dict) else None)
    line = f"LLMCF_DEADLINE dag={dag_id} run={run_id} deadline missed ({kwargs.get('hours', '?')}h)"
    log.error(line)
    print(line, flush=True)
