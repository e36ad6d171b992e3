"""
### llmcf_refresh: the daily LLM-CF refresh, one run per UTC day partition

Each stage is a **Ray job** (submitted through the Ray Jobs API; the task's *Ray job* link opens
it in the Ray dashboard) followed by a **check** task that gates what the job published:

| stage | job | artifact |
|---|---|---|
| `samples` | `python -m jobs.ingest` | `<dataset>/samples/dt=YYYY-MM-DD/` |
| `cot` | `python -m jobs.generate_cot` | `<dataset>/cot/dt=YYYY-MM-DD/<model>__<prompt>/` |
| `embed` | `python -m jobs.embed_upsert` | `<dataset>/embeddings/<embedder>/pool/dt=.../` + Qdrant |
| `neighbors` | `python -m jobs.retrieve` | `<dataset>/neighbors/dt=YYYY-MM-DD/` |
| `recommender` | `python -m jobs.train_rec` for `llmcf` and its `base` control (every `retrain_every_days`) | `models/rec/<model>-<variant>/<version>/` |

The recommender is published only if its validation AUC beats the counting baseline of its task
(item positive rate + history-label rate) on the same rows, first publication included, and is
not worse than the current model's beyond `rec.publish_tolerance` (the `evaluate` task returns the
decision, with the baseline, as its XCom).

**Partition**: scheduled and backfill runs process their logical date (= the start of their
data interval). Manual runs take the `partition` param, else the logical date picked in the
trigger form.

**CoT versions**: each run works on the CoT version its `cot` task wrote (the `cot_model` param;
default `current`, the model of the promoted version) and passes it to embed, retrieve and the
recommender; the version's pool, neighbours and Qdrant collection live beside other versions'.
Runs never move `cot/CURRENT` or the Qdrant alias `llmcf_<dataset>`: `python -m jobs.promote_cot`
does, after checking the version covers every day (docs/runbook.md). A manual run with another
model therefore cannot change what the daily runs and online scoring read.

**On failure**: data-check failures (Ray job exit code 3) and bad arguments (exit code 2) fail at
once and quarantine the failing rows under `<dataset>/quarantine/`; infrastructure errors are
retried with backoff. Every failure logs one `LLMCF_FAILURE ...` line. See docs/runbook.md for
clearing and backfilling failed partitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

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
from llmcf_airflow.partitions import job_env_vars, partition_for_run
from llmcf_airflow.ray_job import RayJobOperator, force_param, job_result
from llmcf_core import fsio
from llmcf_core.config import load_config
from llmcf_core.layout import TEMPLATES, InvalidArgument

SETTINGS = load_config()
AF = SETTINGS.airflow
STAGES = ["samples", "cot", "embed", "neighbors", "recommender"]

PARTITION = "{{ ti.xcom_pull(task_ids='resolve_partition') }}"
DATASET = "{{ params.dataset }}"
# Jobs see the same data root and profile as this DAG's check tasks.
JOB_ENV = {"env_vars": job_env_vars(SETTINGS)}


def _asset(name: str) -> Asset:
    return Asset(name=f"llmcf_{name}", uri=fsio.uri(SETTINGS.home / name), extra={"layout": TEMPLATES[name]})


samples_asset = _asset("samples")
cot_asset = _asset("cot")
pool_asset = _asset("pool")
neighbors_asset = _asset("neighbors")
rec_asset = _asset("rec_model")


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


def _gate(verify, *args, **kwargs) -> dict:
    """Run a stage's verify function; any refusal fails the task without retries."""
    try:
        return verify(*args, **kwargs)
    except (InvalidArgument, FileNotFoundError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from exc


# The CoT version this run's CoT task wrote and checked (MODEL__PROMPT); empty when the cot stage was
# not selected in this run, and then embed and retrieve read the dataset's current version.
COT_VERSION = "{{ (ti.xcom_pull(task_ids='cot.check_cot') or {}).get('cot_version') or '' }}"


def _ray_job(task_id: str, stage: str, job: str, args: list[str], doc: str) -> RayJobOperator:
    return RayJobOperator(
        task_id=task_id,
        stage=stage,
        job=job,
        job_args=["--dataset", DATASET, "--partition", PARTITION, *args],
        partition=PARTITION,
        runtime_env=JOB_ENV,
        force="{{ params.force }}",
        pool=AF.pool_cpu,
        trigger_rule="none_failed",  # runs when an earlier stage was deselected (skipped)
        doc_md=doc,
    )


def _verify_samples(partition: str, job: dict | None, params: dict) -> dict:
    """The samples partition the ingest job wrote is published and its checks passed."""
    from llmcf_core.quality.publish import verify_published

    folder = job_result(job, "samples_path")["samples_path"]
    manifest = verify_published(folder, partition=partition)
    return {"partition": partition, "rows": manifest.get("rows"), "sha256": manifest.get("sha256")}


def _verify_cot(partition: str, job: dict | None, params: dict) -> dict:
    """The CoT version the job wrote for the day is published with passing checks; returns it as
    ``cot_version`` for embed, retrieve and the recommender."""
    from llmcf_core.cot.versions import verify_cot_published
    from llmcf_core.layout import CotVersion

    version = CotVersion.parse(job_result(job, "cot_version")["cot_version"])
    checked = verify_cot_published(
        SETTINGS.home, params["dataset"], partition, version.model_version, version.prompt_version
    )
    return {**checked, "cot_version": version.folder}


def _verify_pool(partition: str, job: dict | None, params: dict) -> dict:
    """Pool embeddings published from the CoT version the job used, checks and Qdrant counts passed."""
    from llmcf_core.retrieval.gates import verify_pool_published

    version = job_result(job, "cot_version")["cot_version"]
    return verify_pool_published(SETTINGS, params["dataset"], partition, version)


def _verify_neighbors(partition: str, job: dict | None, params: dict) -> dict:
    """The neighbours the job wrote are published with passing checks (leakage rules included),
    from the CoT version of the pool it searched."""
    from llmcf_core.retrieval.gates import verify_neighbors_published

    result = job_result(job, "task", "cot_version")
    return verify_neighbors_published(
        SETTINGS, params["dataset"], partition, result["task"], result["cot_version"]
    )


@dataclass(frozen=True)
class Stage:
    """One job + gate stage of the refresh: task group ``name`` holds the Ray job ``job_task``
    (``python -m jobs.<job> --dataset --partition <args>``) and the gate ``gate_task``, which calls
    ``verify(partition, job result, params)`` and publishes ``asset``."""

    name: str
    job: str
    job_task: str
    args: list[str]
    gate_task: str
    verify: Callable[[str, dict | None, dict], dict]
    asset: Asset
    tooltip: str
    job_doc: str


STAGE_TABLE = [
    Stage(
        "samples",
        "ingest",
        "ingest",
        [],
        "check_samples",
        _verify_samples,
        samples_asset,
        "Build, check and publish the day's samples",
        "Ray job `python -m jobs.ingest`: builds the partition from the raw logs, runs the GX suites "
        "(items, interactions, samples) and publishes atomically; quarantines on failure.",
    ),
    Stage(
        "cot",
        "generate_cot",
        "generate_cot",
        ["--model", "{{ params.cot_model }}", "--backend", "{{ params.cot_backend }}"],
        "check_cot",
        _verify_cot,
        cot_asset,
        "Chain-of-thought texts for the day's training samples",
        "Ray job `python -m jobs.generate_cot`: batched generation on a Ray Data actor pool (or vLLM), "
        "resumable by blocks; GX-checked before publishing; writes this run's CoT version (never "
        "moves `cot/CURRENT`).",
    ),
    Stage(
        "embed",
        "embed_upsert",
        "embed_upsert",
        ["--cot-version", COT_VERSION],
        "check_pool",
        _verify_pool,
        pool_asset,
        "Embed the CoT pool and upsert it into Qdrant",
        "Ray job `python -m jobs.embed_upsert`: sentence-encoder embeddings on Ray Data, idempotent "
        "upserts (UUID5 ids) into the collection of this run's CoT version, count-checked.",
    ),
    Stage(
        "neighbors",
        "retrieve",
        "retrieve",
        ["--cot-version", COT_VERSION],
        "check_neighbors",
        _verify_neighbors,
        neighbors_asset,
        "Leakage-safe in-context examples for every sample of the day",
        "Ray job `python -m jobs.retrieve`: K label-balanced earlier examples per sample (exact), "
        "leakage rules verified, agreement with Qdrant measured, padded share bounded.",
    ),
]


def _gate_task(stage: Stage):
    """The stage's check task: runs its verify function on the job's result; a refusal fails the
    task without retries."""

    def gate(partition: str, job: dict | None) -> dict:
        return _gate(stage.verify, partition, job, get_current_context()["params"])

    gate.__name__ = stage.gate_task
    gate.__doc__ = f"Gate: {stage.verify.__doc__}"
    return task(task_id=stage.gate_task, outlets=[stage.asset], retries=0)(gate)


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
            None,
            type=["null", "string"],  # empty is valid in the trigger form and means "logical date"
            # A calendar-shaped day (month 01-12, day 01-31): "2024-13-45" is refused at trigger time.
            pattern=r"^(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))?$",
            title="Partition (UTC day)",
            description="YYYY-MM-DD. Empty: the run's logical date (here: the Logical Date above; "
            "scheduled and backfill runs: the day they cover). For a range of days use Trigger -> Backfill.",
        ),
        "stages": Param(
            list(STAGES),
            type="array",
            items={"type": "string", "enum": STAGES},
            examples=list(STAGES),  # the trigger form offers a multi-select of these, not free text
            uniqueItems=True,
            title="Stages to run",
            description="Stages not listed are skipped (their outputs must already exist).",
        ),
        "cot_model": Param(
            "current",
            type="string",
            title="CoT model",
            description="current (the model of the promoted CoT version; "
            f"{SETTINGS.cot.model} before any promotion), a base model name (smollm2-135m, tiny-llama), "
            "a model folder, recgen:latest or recgen:<version>. Another model writes its own CoT "
            "version for this run only; promoting it is `jobs.promote_cot`.",
        ),
        "cot_backend": Param(
            SETTINGS.cot.backend,
            type="string",
            enum=["auto", "transformers", "vllm"],
            title="CoT backend",
            description="auto: vllm where it is installed (GPU images, or the vLLM CPU venv of "
            "`make setup-vllm`), else transformers; transformers: batched generate(); vllm: vLLM "
            "through Ray Data LLM, on GPUs or CPUs.",
        ),
        "rec_model": Param(
            AF.rec_model,
            type="string",
            enum=["DIN", "DeepFM", "DCN", "DCNv2", "AutoInt", "xDeepFM"],
            title="Recommender backbone",
            description="Model the recommender stage trains (every `retrain_every_days`, or when "
            "forced) and publishes if its validation AUC beats the counting baseline and is not worse "
            "than the current model's.",
        ),
        "force": force_param(),
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

    # The job + gate stages, in order: each is a Ray job and the check task that gates what it
    # published (see STAGE_TABLE); the recommender below has its own shape.
    checked = None
    for stage in STAGE_TABLE:
        with TaskGroup(stage.name, tooltip=stage.tooltip):
            job = _ray_job(stage.job_task, stage.name, stage.job, stage.args, stage.job_doc)
            gate = _gate_task(stage)(part, job.output)
            (checked if checked is not None else part) >> job >> gate
        checked = gate
    neighbors_checked = checked

    with TaskGroup("recommender", tooltip="Retrain, evaluate and (maybe) publish the recommender"):

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def due_for_retrain(partition: str) -> bool:
            """True every `retrain_every_days`-th day from start_date (and when forced)."""
            from llmcf_core.layout import parse_partition

            params = get_current_context()["params"]
            age = (parse_partition(partition) - AF.start_date).days
            return bool(params.get("force")) or age % AF.retrain_every_days == 0

        def _train(task_id: str, variant: str, doc: str) -> RayJobOperator:
            job = _ray_job(
                task_id,
                "recommender",
                "train_rec",
                [
                    "--model",
                    "{{ params.rec_model }}",
                    "--variant",
                    variant,
                    "--warm-start",
                    "--cot-version",
                    COT_VERSION,
                ],
                f"Ray job `python -m jobs.train_rec --variant {variant}`: {doc}",
            )
            job.trigger_rule = "all_success"
            return job

        train_rec = _train(
            "train_rec",
            AF.rec_variant,
            "Ray Train (DDP) on samples + neighbours + CoT embeddings up to this day, warm-started from "
            "the published model; early stopping on validation AUC.",
        )
        if AF.rec_control_variant:
            train_control = _train(
                "train_control",
                AF.rec_control_variant,
                "the control, the same backbone on the same data without in-context examples.",
            )

        @task(outlets=[rec_asset], retries=0)
        def evaluate(partition: str, jobs: list[dict | None]) -> dict:
            """Publish gate, per trained variant: publish the version the train job reports only if
            its validation AUC beats the counting baseline and is not worse than the current model's.
            Returns each decision."""
            from llmcf_core.rec.registry import publish_gate

            decisions = {}
            for job in jobs:
                result = job_result(job, "dataset", "model", "variant", "version")
                decisions[result["variant"]] = _gate(
                    publish_gate,
                    SETTINGS.home,
                    result["dataset"],
                    result["model"],
                    result["variant"],
                    result["version"],
                    tolerance=SETTINGS.rec.publish_tolerance,
                ).to_dict()
            return decisions

        due = due_for_retrain(part)
        # One Ray Train run at a time (each takes the workers of a small cluster): control first.
        first = train_control if AF.rec_control_variant else train_rec
        neighbors_checked >> due >> first
        if AF.rec_control_variant:
            train_control >> train_rec
        trained = [train_rec.output] + ([train_control.output] if AF.rec_control_variant else [])
        train_rec >> evaluate(part, trained)
