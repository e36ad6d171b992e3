"""
### llmcf_refresh: the daily LLM-CF refresh, one run per UTC day partition

Each stage is a **Ray job** (submitted through the Ray Jobs API; the task's *Ray job* link opens
it in the Ray dashboard) followed by a **check** task that gates what the job published:

| stage | job | artifact |
|---|---|---|
| `samples` | `python -m jobs.ingest` | `<dataset>/samples/dt=YYYY-MM-DD/` |

**Partition**: scheduled and backfill runs process their logical date (= the start of their
data interval). Manual runs take the `partition` param, else the logical date picked in the
trigger form.

**On failure**: data-check failures (Ray job exit code 3) and bad arguments (exit code 2) fail at
once and quarantine the failing rows under `<dataset>/quarantine/`; infrastructure errors are
retried with backoff. Every failure logs one `LLMCF_FAILURE ...` line. See docs/runbook.md for
clearing and backfilling failed partitions.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import (
    DAG,
    Asset,
    AsyncCallback,
    DeadlineAlert,
    DeadlineReference,
    Param,
    TaskGroup,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

from llmcf_airflow.callbacks import on_failure
from llmcf_airflow.partitions import job_env_vars, partition_for_run, verify_published
from llmcf_airflow.ray_job import RayJobOperator
from llmcf_core.config import load_config
from llmcf_core.paths import InvalidArgument

SETTINGS = load_config()
AF = SETTINGS.airflow
STAGES = ["samples"]

PARTITION = "{{ ti.xcom_pull(task_ids='resolve_partition') }}"
DATASET = "{{ params.dataset }}"
# Jobs see the same data root and profile as this DAG's check tasks.
JOB_ENV = {"env_vars": job_env_vars(SETTINGS)}

samples_asset = Asset(
    name="llmcf_samples",
    uri=f"file://{SETTINGS.home}/samples",
    extra={"layout": "<dataset>/samples/dt=YYYY-MM-DD/"},
)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _deadline() -> DeadlineAlert | None:
    """Alert when a run is still unfinished ``deadline_hours`` after it was queued (0 = off)."""
    if not AF.deadline_hours:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=AF.deadline_hours),
        callback=AsyncCallback(
            "llmcf_airflow.callbacks.on_deadline_missed", kwargs={"hours": AF.deadline_hours}
        ),
        name="llmcf_refresh_run_deadline",
    )


def _gate(artifact_folder, partition: str) -> dict:
    """Fail (without retries) unless the job published the partition with passing checks."""
    from llmcf_core.storage import read_manifest

    try:
        return verify_published(read_manifest(artifact_folder), str(artifact_folder), partition)
    except InvalidArgument as exc:
        raise AirflowFailException(str(exc)) from exc


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
        "on_failure_callback": on_failure,
    },
    deadline=_deadline(),
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
            description="YYYY-MM-DD. Empty: the run's logical date (scheduled and backfill runs). "
            "For a range of days use Trigger -> Backfill.",
        ),
        "stages": Param(
            list(STAGES),
            type="array",
            items={"type": "string", "enum": STAGES},
            uniqueItems=True,
            title="Stages to run",
            description="Stages not listed are skipped (their outputs must already exist).",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Resubmit Ray jobs even if an identical job already succeeded.",
        ),
    },
) as dag:

    @task(retries=0)
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
            stage="samples",
            job="ingest",
            job_args=["--dataset", DATASET, "--partition", PARTITION],
            partition=PARTITION,
            runtime_env=JOB_ENV,
            force="{{ params.force }}",
            pool=AF.pool_cpu,
            doc_md="Ray job `python -m jobs.ingest`: builds the partition from the raw logs, runs the "
            "GX suites (items, interactions, samples) and publishes atomically; quarantines on failure.",
        )

        @task(outlets=[samples_asset], retries=0)
        def check_samples(partition: str) -> dict:
            """Gate: the samples partition is published and its recorded checks passed."""
            from llmcf_core.paths import DataPaths, parse_partition

            params = get_current_context()["params"]
            folder = DataPaths(SETTINGS.home, params["dataset"]).samples(parse_partition(partition))
            return _gate(folder, partition)

        part >> ingest >> check_samples(part)
