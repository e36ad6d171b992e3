"""RayJobOperator / RayJobTrigger against a REAL local Ray head (no mocks of Ray).

Jobs run ``python -m jobs._selftest`` (prints lines, sleeps, exits with a code). Ids are made unique per
test by a ``--tag`` argument, since the entrypoint is part of the submission id.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from llmcf_airflow.ray_job import (
    RayJobError,
    RayJobOperator,
    RayJobTrigger,
    attempt_id,
    build_entrypoint,
    job_client,
    job_result,
    parse_result,
    resolve_dashboard_url,
    submission_id_for,
)


@dataclass
class FakeDagRun:
    """The run's clear count, which Airflow bumps on every clear (task, run or backfill reprocess)."""

    clear_number: int = 0


@dataclass
class FakeTI:
    """The few TaskInstance attributes the operator reads; lets a test call execute() without a DAG run."""

    dag_id: str = "selftest_dag"
    task_id: str = "run"
    run_id: str = "manual__1"
    try_number: int = 1
    map_index: int = -1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def _operator(
    tag: str, *, lines: int = 2, sleep: float = 0, exit_code: int = 0, **kwargs: Any
) -> RayJobOperator:
    args = ["--lines", lines, "--sleep", sleep, "--exit-code", exit_code, "--tag", tag]
    return RayJobOperator(
        task_id="run", job="_selftest", job_args=args, partition="2024-01-01", poll_interval=0.3, **kwargs
    )


def _jobs_with_prefix(url: str, prefix: str) -> list[str]:
    return sorted(
        j.submission_id for j in job_client(url).list_jobs() if (j.submission_id or "").startswith(prefix)
    )


def _run_trigger(trigger: RayJobTrigger, timeout: float = 40) -> dict:
    async def first_event() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first_event(), timeout))


# ------------------------------------------------------------------ no Ray needed


def test_submission_id_is_deterministic_and_ray_safe() -> None:
    ep = build_entrypoint("ingest", ["--day", "2024-01-01", "--note", "a b;c"])
    assert ep == "python -m jobs.ingest --day 2024-01-01 --note 'a b;c'"
    a = submission_id_for("dag", "task", "2024-01-01T00:00:00+00:00", ep)
    assert a == submission_id_for("dag", "task", "2024-01-01T00:00:00+00:00", ep)
    assert a != submission_id_for("dag", "task", "2024-01-01T00:00:00+00:00", ep + " --x 1")
    assert a != submission_id_for("dag", "task", "2024-01-02", ep)
    assert all(c.isalnum() or c in "_-" for c in a), a
    long = submission_id_for("d" * 300, "t" * 300, "p" * 300, ep)
    assert len(long) < 140
    assert attempt_id(a, 0) == a and attempt_id(a, 2) == f"{a}-r2"
    with pytest.raises(ValueError):
        build_entrypoint("ingest; rm -rf /")


def test_parse_result_takes_the_last_result_line_and_refuses_a_broken_one() -> None:
    log = 'starting\nLLMCF_RESULT {"rows": 1}\nnoise\nLLMCF_RESULT {"rows": 2, "path": "/x"}\nbye\n'
    assert parse_result(log) == {"rows": 2, "path": "/x"}
    assert parse_result(["no result here"]) is None
    with pytest.raises(ValueError, match="unreadable LLMCF_RESULT line"):
        parse_result(["LLMCF_RESULT {not json"])
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_result(["LLMCF_RESULT [1, 2]"])


def test_job_result_requires_the_keys_a_gate_reads() -> None:
    assert job_result({"result": {"path": "/p", "rows": 3}}, "path") == {"path": "/p", "rows": 3}
    with pytest.raises(AirflowFailException, match="returned no LLMCF_RESULT"):
        job_result({"status": "SUCCEEDED", "result": None}, "path")
    with pytest.raises(AirflowFailException, match=r"lacks \['path'\]"):
        job_result({"result": {"rows": 3}}, "path")


def test_resolve_dashboard_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265/")
    assert resolve_dashboard_url("llmcf_test_missing") == "http://10.0.0.1:8265"
    monkeypatch.setenv("AIRFLOW_CONN_LLMCF_TEST_RAY", "http://127.0.0.1:8275")
    assert resolve_dashboard_url("llmcf_test_ray") == "http://127.0.0.1:8275"
    for bad in ("auto", "127.0.0.1:6390", "ray://127.0.0.1:10001"):
        monkeypatch.setenv("RAY_ADDRESS", bad)
        with pytest.raises(ValueError, match="not a Ray dashboard URL"):
            resolve_dashboard_url("llmcf_test_missing")


# ------------------------------------------------------------------ real Ray head


@pytest.mark.ray
def test_success_streams_logs_and_returns_xcom(ray_head, capfd: pytest.CaptureFixture[str]) -> None:
    op = _operator("ok-sync", lines=3, deferrable=False)
    ti = FakeTI()
    result = op.execute({"ti": ti})
    assert result["status"] == "SUCCEEDED"
    assert result["job_url"] == f"{ray_head.dashboard_url}/#/jobs/{result['submission_id']}"
    # The job's own LLMCF_RESULT line comes back as the task's result.
    assert result["result"] == {"job": "_selftest", "tag": "ok-sync", "lines": 3}
    assert ti.xcoms["_link_RayJobLink"] == result["job_url"]
    out = capfd.readouterr().out
    for i in (1, 2, 3):
        assert f"[ray] ok-sync line {i}/3" in out


@pytest.mark.ray
def test_failure_is_retryable_but_exit_code_3_is_not(ray_head) -> None:
    with pytest.raises(RayJobError, match="failed with exit code 1") as retryable:
        _operator("fail-1", exit_code=1, deferrable=False).execute({"ti": FakeTI()})
    assert not isinstance(retryable.value, AirflowFailException)
    assert "fail-1 exiting with code 1" in str(retryable.value)  # log tail included
    with pytest.raises(AirflowFailException, match="exit code 3"):
        _operator("fail-3", exit_code=3, deferrable=False).execute({"ti": FakeTI()})


@pytest.mark.ray
def test_retry_reattaches_then_reuses_success(ray_head) -> None:
    op = _operator("attach", sleep=3)
    with pytest.raises(TaskDeferred) as first:
        op.execute({"ti": FakeTI(try_number=1)})
    trigger = first.value.trigger
    sid = trigger.submission_id
    # A retry while the job runs attaches to the same submission instead of submitting again.
    with pytest.raises(TaskDeferred) as second:
        _operator("attach", sleep=3).execute({"ti": FakeTI(try_number=2)})
    assert second.value.trigger.submission_id == sid
    assert _jobs_with_prefix(ray_head.dashboard_url, sid) == [sid]

    event = _run_trigger(second.value.trigger)
    assert event["status"] == "SUCCEEDED"
    assert any("attach line 2/2" in line for line in event["log_tail"])
    completed = op.execute_complete({"ti": FakeTI()}, event)
    assert completed["submission_id"] == sid
    assert completed["result"] == {"job": "_selftest", "tag": "attach", "lines": 2}

    # After success, running again submits nothing new.
    again = _operator("attach", sleep=3).execute({"ti": FakeTI(try_number=3)})
    assert again == {**again, "status": "SUCCEEDED", "submission_id": sid, "reused": True}
    assert again["result"] == completed["result"]  # read back from the earlier run's log
    assert _jobs_with_prefix(ray_head.dashboard_url, sid) == [sid]


@pytest.mark.ray
def test_rerun_after_failure_submits_next_suffix(ray_head) -> None:
    with pytest.raises(RayJobError):
        _operator("rerun", exit_code=1, deferrable=False).execute({"ti": FakeTI()})
    with pytest.raises(TaskDeferred) as deferred:
        _operator("rerun", exit_code=1).execute({"ti": FakeTI(try_number=2)})
    sid = deferred.value.trigger.submission_id
    assert sid.endswith("-r1")
    base = sid.removesuffix("-r1")
    assert _jobs_with_prefix(ray_head.dashboard_url, base) == [base, sid]
    assert _run_trigger(deferred.value.trigger)["status"] == "FAILED"


@pytest.mark.ray
def test_failed_check_is_not_resubmitted_in_the_same_run_but_is_after_a_clear(ray_head) -> None:
    url = ray_head.dashboard_url
    with pytest.raises(AirflowFailException, match="exit code 3"):
        _operator("check-3", exit_code=3, deferrable=False).execute(
            {"ti": FakeTI(), "dag_run": FakeDagRun(clear_number=0)}
        )
    # Airflow re-runs the task in the same run (try 2, clear count unchanged): the failed attempt is
    # reported again, not retried, and no second Ray job appears.
    op = _operator("check-3", exit_code=3)
    sid = op._base_id({"ti": FakeTI()})[0]
    with pytest.raises(AirflowFailException, match=r"exit code 3.*not retried"):
        op.execute({"ti": FakeTI(try_number=2), "dag_run": FakeDagRun(clear_number=0)})
    assert _jobs_with_prefix(url, sid) == [sid]
    # A different run for the same partition, or this run after a clear: a new attempt.
    with pytest.raises(TaskDeferred) as cleared:
        _operator("check-3", exit_code=3).execute({"ti": FakeTI(try_number=3), "dag_run": FakeDagRun(1)})
    assert cleared.value.trigger.submission_id == f"{sid}-r1"
    assert _run_trigger(cleared.value.trigger)["exit_code"] == 3
    # A retryable failure (exit code 1) in the same run is still retried.
    with pytest.raises(RayJobError):
        _operator("check-1", exit_code=1, deferrable=False).execute({"ti": FakeTI(), "dag_run": FakeDagRun()})
    with pytest.raises(TaskDeferred) as retried:
        _operator("check-1", exit_code=1).execute({"ti": FakeTI(try_number=2), "dag_run": FakeDagRun()})
    assert retried.value.trigger.submission_id.endswith("-r1")
    assert _run_trigger(retried.value.trigger)["status"] == "FAILED"


@pytest.mark.ray
def test_trigger_timeout_and_on_kill_stop_the_job(ray_head) -> None:
    client = job_client(ray_head.dashboard_url)
    for sid in ("selftest-timeout", "selftest-kill"):
        client.submit_job(
            entrypoint=build_entrypoint("_selftest", ["--sleep", "60"]),
            submission_id=sid,
            entrypoint_num_cpus=0,
        )

    trigger = RayJobTrigger(
        "selftest-timeout", ray_head.dashboard_url, poll_interval=0.3, deadline=time.time() + 1
    )
    assert trigger.serialize() == ("llmcf_airflow.ray_job.RayJobTrigger", trigger.serialize()[1])
    assert RayJobTrigger(**trigger.serialize()[1]).serialize() == trigger.serialize()
    event = _run_trigger(trigger)
    assert event["status"] == "TIMEOUT"
    assert client.get_job_status("selftest-timeout") == "STOPPED"

    asyncio.run(RayJobTrigger("selftest-kill", ray_head.dashboard_url).on_kill())
    deadline = time.time() + 20
    while client.get_job_status("selftest-kill") != "STOPPED" and time.time() < deadline:
        time.sleep(0.3)
    assert client.get_job_status("selftest-kill") == "STOPPED"


DAG_SCRIPT = textwrap.dedent(
    """
    import datetime as dt
    import json

    from airflow.sdk import DAG, task

    from llmcf_airflow.ray_job import RayJobOperator

    with DAG("llmcf_selftest_ray", schedule=None, start_date=dt.datetime(2024, 1, 1),
             params={"tag": "dagtest", "partition": "2024-01-02"}) as dag:
        run = RayJobOperator(
            task_id="run", job="_selftest", poll_interval=0.3,
            job_args=["--lines", "3", "--tag", "{{ params.tag }}"], partition="{{ params.partition }}",
        )

        @task
        def report(result):
            print("RESULT=" + json.dumps(result), flush=True)

        report(run.output)

    if __name__ == "__main__":
        print("DAGRUN_STATE=" + str(dag.test().state), flush=True)
    """
)


@pytest.mark.ray
@pytest.mark.airflow
def test_dag_test_defers_to_trigger_and_logs(ray_head, tmp_path) -> None:
    """A real DAG run (``dag.test``: the trigger runs inline) in a subprocess with its own AIRFLOW_HOME."""
    (tmp_path / "dags").mkdir()
    script = tmp_path / "dags" / "selftest_dag.py"
    script.write_text(DAG_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        AIRFLOW_CONN_RAY_DEFAULT=ray_head.dashboard_url,  # the connection wins over RAY_ADDRESS
        RAY_ADDRESS="http://127.0.0.1:1",
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "DAGRUN_STATE=success" in out, out[-4000:]
    assert "running trigger in line" in out  # the operator deferred and the trigger produced the event
    for i in (1, 2, 3):
        assert f"[ray] dagtest line {i}/3" in out
    result = json.loads(out.split("RESULT=", 1)[1].splitlines()[0])
    assert result["status"] == "SUCCEEDED"
    assert result["submission_id"].startswith("llmcf_selftest_ray__run__2024-01-02__")
