"""
### llmcf_qdrant_admin: collection and alias operations on the in-context example store

Manual trigger only. Pick an `action`:

- `status`: the alias `llmcf_<dataset>`, the collection behind it, every collection with its count;
- `create`: an empty collection for the current embedder and CoT version (payload indexes first);
- `swap`: point the alias at `collection` atomically (readers never see a half-loaded one);
- `rollback`: point the alias back at the previous collection;
- `drop`: delete `collection` (never the live one).

Bulk loading is not done here: run `jobs.embed_upsert --rebuild` (or let `llmcf_refresh` do it
when the embedder or the CoT version changes). In server mode the Airflow connection
`qdrant_default` (host/port or extra `url`; the password is the API key) is resolved inside the
task; in the embedded default the task opens the local store like any job and waits for a running
job's client.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from llmcf_airflow.callbacks import on_failure
from llmcf_core.config import load_config

SETTINGS = load_config()

with DAG(
    dag_id="llmcf_qdrant_admin",
    description="Qdrant admin: status, create, alias swap, rollback, drop",
    doc_md=__doc__,
    schedule=None,
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["llmcf", "admin", "qdrant"],
    default_args={"retries": 0, "on_failure_callback": on_failure},
    params={
        "dataset": Param(
            SETTINGS.airflow.dataset, type="string", enum=sorted(SETTINGS.datasets), title="Dataset"
        ),
        "action": Param(
            "status", type="string", enum=["status", "create", "swap", "rollback", "drop"], title="Action"
        ),
        "collection": Param(None, type=["null", "string"], title="Collection (swap, drop)"),
    },
) as dag:

    @task
    def qdrant_admin() -> dict:
        """Run the chosen admin action and return its result (small JSON)."""
        from llmcf_airflow.qdrant_conn import qdrant_job_env
        from llmcf_core.layout import InvalidArgument
        from llmcf_core.retrieval import admin

        params = get_current_context()["params"]
        os.environ.update(qdrant_job_env())
        dataset, action, collection = params["dataset"], params["action"], params["collection"]
        try:
            if action == "status":
                return admin.status(SETTINGS, dataset)
            if action == "create":
                return {"created": admin.create_collection(SETTINGS, dataset)}
            if action == "rollback":
                return admin.rollback(SETTINGS, dataset)
            if not collection:
                raise InvalidArgument(f"action {action!r} needs the 'collection' param")
            if action == "swap":
                return admin.swap_alias(SETTINGS, dataset, collection)
            admin.drop_collection(SETTINGS, dataset, collection)
            return {"dropped": collection}
        except (InvalidArgument, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc

    qdrant_admin()
