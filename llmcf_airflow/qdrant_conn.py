"""Airflow side of the Qdrant configuration: the connection ``qdrant_default`` -> job environment.

Jobs never read Airflow connections: a DAG task resolves the connection here and hands the URL
and API key to the Ray job (``runtime_env["env_vars"]``) or to the admin functions (process env).

    env = qdrant_job_env()   # {} in local mode or when the connection is not defined
    RayJobOperator(..., runtime_env={"env_vars": {**JOB_ENV["env_vars"], **env}})

The connection: host (+ port, default 6333) or ``extra.url``; the API key is the password. With
``https`` in extra (or a ``https://`` URL) the scheme is https.
"""

from __future__ import annotations

from typing import Any

from llmcf_core.retrieval.spec import URL_ENV

CONN_ID = "qdrant_default"


def _url(conn: Any) -> str | None:
    extra = conn.extra_dejson or {}
    if extra.get("url"):
        return str(extra["url"])
    if not conn.host:
        return None
    if "://" in conn.host:
        return f"{conn.host.rstrip('/')}:{conn.port}" if conn.port else conn.host
    scheme = "https" if extra.get("https") else "http"
    return f"{scheme}://{conn.host}:{conn.port or 6333}"


def qdrant_job_env(conn_id: str = CONN_ID, api_key_env: str | None = None) -> dict[str, str]:
    """``{LLMCF_QDRANT_URL, <api key variable>}`` from the Airflow connection, or {} if undefined."""
    from airflow.sdk import Connection

    from llmcf_core.config import load_config

    settings = load_config()
    if settings.qdrant.mode != "server":
        return {}
    try:
        conn = Connection.get(conn_id)
    except Exception:  # an undefined connection: jobs fall back to LLMCF_QDRANT_URL / qdrant.url
        return {}
    env = {}
    url = _url(conn)
    if url:
        env[URL_ENV] = url
    if conn.password:
        env[api_key_env or settings.qdrant.api_key_env] = conn.password
    return env
