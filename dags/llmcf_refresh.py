"""llmcf_refresh: one run per UTC day partition of new interactions.

Each stage is a Ray job submitted through the Ray Jobs API, followed by a check task. Later
stages (CoT generation, embeddings + Qdrant, the recommender) are appended after ``samples``.
Only light modules are imported here: the DAG processor parses this file constantly.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

from llmcf_airflow.partitions import partition_for_run, verify_published
from llmcf_airflow.ray_job import RayJobOperator
from llmcf_core.config import load_config
from llmcf_core.paths import InvalidArgument

SETTINGS = load_config()
AF = SETTINGS.airflow

PARTITION = "{{ ti.xcom_pull(task_ids='resolve_partition') }}"
DATASET = "{{ params.dataset }}"
# Jobs see the same data root and profile as this DAG's check tasks.
JOB_ENV = {"env_vars": {"LLMCF_HOME": str(SETTINGS.home), "LLMCF_PROFILE": SETTINGS.profile}}

samples_asset = Asset(
    name="llmcf_samples",
    uri=f"file://{SETTINGS.home}/samples",
    extra={"layout": "<dataset>/samples/dt=YYYY-MM-DD/"},
)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


with DAG(
    dag_id="llmcf_refresh",
    description="Daily LLM-CF refresh: ingest -> checks (-> CoT -> Qdrant -> recommender)",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=_utc(AF.start_date),
    end_date=_utc(AF.end_date) if AF.end_date else None,
    catchup=False,
    max_active_runs=AF.max_active_runs,
    tags=["llmcf", "refresh"],
    default_args={
        "retries": AF.retries,
        "retry_delay": dt.timedelta(seconds=AF.retry_delay_s),
        "retry_exponential_backoff": 2.0,
    },
    params={
        "dataset": Param(
            AF.dataset,
            type="string",
            enum=sorted(SETTINGS.datasets),
            title="Dataset",
            description="Configured dataset to process.",
        ),
        "partition": Param(
            "",
            type="string",
            pattern=r"^(\d{4}-\d{2}-\d{2})?$",
            title="Partition (UTC day)",
            description="YYYY-MM-DD. Empty: the run's logical date (scheduled and backfill runs).",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Resubmit Ray jobs even if an identical job already succeeded.",
        ),
    },
    render_template_as_native_obj=False,
) as dag:

    @task
    def resolve_partition() -> str:
        """Decide the day this run processes (param, else the logical date)."""
        ctx = get_current_context()
        try:
            return partition_for_run(ctx["params"], ctx["dag_run"].logical_date)
        except InvalidArgument as exc:
            raise AirflowFailException(str(exc)) from exc

    part = resolve_partition()

    with TaskGroup("samples", tooltip="Build, check and publish the day's samples") as samples:
        ingest = RayJobOperator(
            task_id="ingest",
            job="ingest",
            job_args=["--dataset", DATASET, "--partition", PARTITION],
            partition=PARTITION,
            runtime_env=JOB_ENV,
            force="{{ params.force }}",
            doc_md="Ray job `python -m jobs.ingest`: builds the partition, runs the GX checks, publishes.",
        )

        @task(outlets=[samples_asset], retries=0)
        def check_samples(partition: str) -> dict:
            """Gate: the partition is published and its recorded checks passed."""
            from llmcf_core.paths import DataPaths, parse_partition
            from llmcf_core.storage import read_manifest

            params = get_current_context()["params"]
            folder = DataPaths(SETTINGS.home, params["dataset"]).samples(parse_partition(partition))
            try:
                return verify_published(read_manifest(folder), str(folder), partition)
            except InvalidArgument as exc:
                raise AirflowFailException(str(exc)) from exc

        checked = check_samples(part)
        part >> ingest >> checked
