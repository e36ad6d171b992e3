"""
### llmcf_recgen: RecGen-LLaMA, the LLM that knows collaborative filtering (monthly or on demand)

Teaches the base LLM recommendation knowledge without losing its general ability (LLM-CF, offline
step 1), then publishes it to the model registry only if it is better at recommendation than its
base and not much worse at general text:

| task | what | output |
|---|---|---|
| `resolve` | window end (param, else the last day of the run's month) and the model version | XCom |
| `instructions.build` | Ray job `jobs.build_instructions`: rec Yes/No instructions + ShareGPT conversations, GX check | `<dataset>/recgen_instructions/dt=<end>/<version>/` |
| `instructions.check` | gate on the published manifest | |
| `finetune` | Ray job `jobs.finetune_recgen`: Ray Train workers + DeepSpeed ZeRO-2/3, checkpoints | `models/recgen/_candidates/<version>/` |
| `evaluate` | Ray job `jobs.evaluate_recgen`: rec AUC/LogLoss and general perplexity vs the base model | `.../eval/` (balance table, gate) |
| `publish` | registry: move the candidate in, then the `latest` pointer (only if the gate passed) | `models/recgen/<version>/`, `latest` |

**Retries resume**: the version (= Ray Train run name) is derived from the params, so a retried
or cleared `finetune` continues from its last checkpoint. **A failed gate** fails `publish` without
retries; `latest` keeps pointing at the previous model. See docs/recgen.md.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Asset, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

from llmcf_airflow.partitions import job_env_vars
from llmcf_airflow.ray_job import RayJobOperator, force_param, job_result
from llmcf_core import fsio, layout
from llmcf_core.config import load_config

SETTINGS = load_config()
AF = SETTINGS.airflow
RC = SETTINGS.recgen
JOB_ENV = {"env_vars": job_env_vars(SETTINGS)}

R = "ti.xcom_pull(task_ids='resolve')"
WINDOW_END = "{{ " + R + "['window_end'] }}"
VERSION = "{{ " + R + "['version'] }}"
DATASET = "{{ params.dataset }}"
# Flags that decide the instruction data: identical for build and fine-tune (which locates the data).
INSTRUCTION_ARGS = [
    "--dataset",
    DATASET,
    "--partition",
    WINDOW_END,
    "--window-days",
    "{{ params.window_days }}",
    "--mix",
    "{{ params.mix }}",
    "--base-model",
    "{{ params.base_model }}",
    "--max-length",
    "{{ params.max_length or '' }}",
    "--rec-max",
    "{{ params.rec_max if params.rec_max is not none else '' }}",
    "--general-max",
    "{{ params.general_max if params.general_max is not none else '' }}",
]

recgen_asset = Asset(
    name="llmcf_recgen_model",
    uri=fsio.uri(layout.recgen_root(SETTINGS.home)),
    extra={"layout": f"{layout.TEMPLATES['recgen']} + {layout.LATEST}"},
)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _optional_int(title: str, description: str) -> Param:
    return Param(None, type=["null", "integer"], minimum=0, title=title, description=description)


with DAG(
    dag_id="llmcf_recgen",
    description="RecGen-LLaMA: instructions -> DeepSpeed fine-tune on Ray Train -> balance eval -> gated publish",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),
    start_date=_utc(AF.start_date),
    end_date=_utc(AF.end_date) if AF.end_date else None,
    catchup=False,
    max_active_runs=1,
    tags=["llmcf", "recgen", "training"],
    default_args={
        "retries": AF.retries,
        "retry_delay": dt.timedelta(seconds=AF.retry_delay_s),
        "retry_exponential_backoff": 2.0,
    },
    params={
        "dataset": Param(AF.dataset, type="string", enum=sorted(SETTINGS.datasets), title="Dataset"),
        "window_end": Param(
            None,
            type=["null", "string"],
            pattern=r"^(\d{4}-\d{2}-\d{2})?$",
            title="Training window end (UTC day)",
            description="Last train day used. Empty: the last day of the run's data interval (its month).",
        ),
        "window_days": Param(
            RC.window_days,
            type="integer",
            minimum=0,
            title="Window days",
            description="Train days ending at the window end; 0 = every published day.",
        ),
        "base_model": Param(
            RC.base_model,
            type="string",
            minLength=1,
            title="Base model",
            description="tiny-llama, smollm2-135m, or an HF model folder (e.g. Llama-2-7b-chat-hf).",
        ),
        "mix": Param(
            RC.mix,
            type="string",
            enum=["concat", "rec-only", "half-rec"],
            title="Data mix",
            description="concat: rec + general (paper); rec-only: ablation; half-rec: half the rec data.",
        ),
        "steps": Param(
            RC.max_steps,
            type="integer",
            minimum=0,
            title="Optimizer steps",
            description=f"0 = {RC.epochs:g} epoch(s) of the instruction data.",
        ),
        "workers": Param(RC.num_workers, type="integer", minimum=1, title="Ray Train workers"),
        "zero_stage": Param(RC.zero_stage, type="integer", enum=[2, 3], title="DeepSpeed ZeRO stage"),
        "max_length": _optional_int("Max tokens per example", "Empty: recgen.max_length from the config."),
        "rec_max": _optional_int("Max rec examples", "Empty: recgen.rec_max_examples (0 = all)."),
        "general_max": _optional_int("Max general conversations", "Empty: recgen.general_max_examples."),
        "version": Param(
            None,
            type=["null", "string"],
            pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$",
            title="Model version",
            description="Empty: derived from the params (a rerun with the same params resumes/reuses).",
        ),
        "compare": Param(
            None,
            type=["null", "string"],
            title="Also evaluate",
            description="Comma-separated LABEL=VERSION (or base model) added to the balance table, "
            "e.g. rec-only=<version of a mix=rec-only run>.",
        ),
        "publish": Param(
            True,
            type="boolean",
            title="Publish",
            description="Off for ablation runs (e.g. mix=rec-only): evaluate, but never move `latest`.",
        ),
        "force": force_param(),
    },
) as dag:

    @task(retries=0)
    def resolve() -> dict:
        """The window end and the model version of this run."""
        from llmcf_core.layout import InvalidArgument, parse_partition
        from llmcf_core.llm.registry import run_version

        ctx = get_current_context()
        params = ctx["params"]
        try:
            if params["window_end"]:
                end = parse_partition(params["window_end"])
            else:
                interval_end = ctx["dag_run"].data_interval_end
                if interval_end is None:
                    raise InvalidArgument("this run has no data interval: set the 'window_end' param")
                end = interval_end.astimezone(dt.UTC).date() - dt.timedelta(days=1)
            extra = {k: params[k] for k in ("window_days", "max_length", "rec_max", "general_max")}
            version = params["version"] or run_version(
                params["dataset"],
                end.isoformat(),
                params["mix"],
                params["base_model"],
                params["steps"],
                params["workers"],
                params["zero_stage"],
                extra,
            )
        except InvalidArgument as exc:
            raise AirflowFailException(str(exc)) from exc
        return {"window_end": end.isoformat(), "version": version}

    resolved = resolve()

    with TaskGroup("instructions", tooltip="Build, check and publish the instruction data") as instructions:
        build = RayJobOperator(
            task_id="build",
            job="build_instructions",
            job_args=INSTRUCTION_ARGS,
            partition=WINDOW_END,
            runtime_env=JOB_ENV,
            force="{{ params.force }}",
            doc_md="Ray job `python -m jobs.build_instructions`: rec + general instructions, GX check, publish.",
        )

        @task(retries=0)
        def check(job: dict | None) -> dict:
            """Gate: the instruction data the build job wrote (its LLMCF_RESULT ``path``) is published
            and its recorded checks passed."""
            from llmcf_core.layout import InvalidArgument
            from llmcf_core.quality.publish import verify_published

            folder = job_result(job, "path")["path"]
            try:
                manifest = verify_published(folder)
            except InvalidArgument as exc:
                raise AirflowFailException(str(exc)) from exc
            return {
                "path": str(folder),
                "rows": manifest.get("rows"),
                "label_balance": manifest.get("label_balance"),
            }

        checked = check(build.output)
        build >> checked

    finetune = RayJobOperator(
        task_id="finetune",
        job="finetune_recgen",
        job_args=[
            *INSTRUCTION_ARGS,
            "--version",
            VERSION,
            "--workers",
            "{{ params.workers }}",
            "--zero-stage",
            "{{ params.zero_stage }}",
            "--max-steps",
            "{{ params.steps }}",
        ],
        partition=WINDOW_END,
        runtime_env=JOB_ENV,
        force="{{ params.force }}",
        doc_md="Ray job `python -m jobs.finetune_recgen`: TorchTrainer + deepspeed.initialize per worker; "
        "checkpoints every recgen.checkpoint_every steps; a retry resumes the run of the same version.",
    )

    evaluate = RayJobOperator(
        task_id="evaluate",
        job="evaluate_recgen",
        job_args=[
            "--dataset",
            DATASET,
            "--partition",
            WINDOW_END,
            "--version",
            VERSION,
            "--compare",
            "{{ params.compare or '' }}",
        ],
        partition=WINDOW_END,
        runtime_env=JOB_ENV,
        force="{{ params.force }}",
        doc_md="Ray job `python -m jobs.evaluate_recgen`: base vs candidate balance table and the gate decision.",
    )

    @task(outlets=[recgen_asset], retries=0)
    def publish(resolved: dict) -> dict:
        """Publish the candidate and move `latest`, only if its evaluation passed the gate."""
        from airflow.sdk.exceptions import AirflowSkipException

        from llmcf_core.layout import InvalidArgument
        from llmcf_core.llm import registry

        if not get_current_context()["params"]["publish"]:
            raise AirflowSkipException(f"publish=false: candidate {resolved['version']} stays unpublished")
        try:
            return registry.publish(SETTINGS.home, resolved["version"])
        except InvalidArgument as exc:  # includes GateRefused
            raise AirflowFailException(str(exc)) from exc

    published = publish(resolved)
    resolved >> build
    checked >> finetune >> evaluate >> published
