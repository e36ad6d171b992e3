"""DAG integrity (imports cleanly, parses fast, no heavy imports) and a real run of the ingest
stage through Airflow (`airflow dags test`, SQLite) against a local Ray head."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pytest

from llmcf_airflow import demo
from llmcf_airflow.local_env import airflow_cli, airflow_env

pytestmark = pytest.mark.airflow

_PARSE = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    t1 = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    t2 = time.perf_counter()
    heavy = [m for m in ("torch", "ray", "great_expectations", "transformers", "deepspeed", "qdrant_client")
             if m in sys.modules]
    dags = {d: sorted(t.task_id for t in bag.dags[d].tasks) for d in bag.dags}
    print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags,
                      "parse_s": t2 - t1, "heavy": heavy}))
    """
)


def _run_over_dags(code: str, af_env: dict) -> dict:
    """Run ``code`` (argv[1] = the DAGs folder) in a fresh interpreter; its last stdout line as JSON."""
    from llmcf_airflow.local_env import DAGS_FOLDER

    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS_FOLDER)],
        env={**__import__("os").environ, **af_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def af_env(tmp_path, llmcf_home):
    return airflow_env(tmp_path / "airflow", paused_at_creation=False)


def test_dags_import_cleanly_fast_and_light(af_env):

    info = _run_over_dags(_PARSE, af_env)
    assert info["errors"] == {}
    assert {"llmcf_refresh", "llmcf_recgen", "llmcf_qdrant_admin"} <= set(info["dags"])
    assert {"resolve_partition", "samples.ingest", "samples.check_samples"} <= set(
        info["dags"]["llmcf_refresh"]
    )
    assert info["heavy"] == [], f"heavy modules imported at parse time: {info['heavy']}"
    assert info["parse_s"] < 5.0


@pytest.mark.ray
def test_dag_run_ingests_a_partition_through_ray(af_env, ray_head, llmcf_home):
    from llmcf_core import storage
    from llmcf_core.layout import DataPaths, parse_partition

    env = {**af_env, "RAY_ADDRESS": ray_head.dashboard_url}
    airflow_cli(["db", "migrate"], env, capture_output=True)
    started = dt.datetime.now(dt.UTC)
    proc = airflow_cli(
        ["dags", "test", "llmcf_refresh", "1998-01-15"], env, check=False, capture_output=True, text=True
    )
    state = (
        airflow_cli(["dags", "state", "llmcf_refresh", "1998-01-15"], env, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
        .split(",")[0]  # "<state>" or "<state>, <conf>"
    )
    assert state == "success", proc.stdout[-4000:] + proc.stderr[-4000:]
    folder = DataPaths(llmcf_home, "ml-100k").samples(parse_partition("1998-01-15"))
    assert storage.read_manifest(folder)["rows"] == 298
    # The Ray job's own output reached the Airflow task log.
    assert "LLMCF_RESULT" in proc.stdout + proc.stderr

    # `dags test` starts its run at the logical date (a 1998 run "lasts" decades in the UI); the demo
    # sets the real start, as the scheduler would have, so the UI shows minutes.
    def run_times() -> tuple[dt.datetime, dt.datetime]:
        code = (
            "from sqlalchemy import select; from airflow.models.dagrun import DagRun; "
            "from airflow.utils.session import create_session\n"
            "with create_session() as s:\n"
            "    (r,) = s.scalars(select(DagRun).where(DagRun.dag_id == 'llmcf_refresh')).all()\n"
            "    print('RUN_TIMES', r.start_date.isoformat(), r.end_date.isoformat())"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        start, end = next(line for line in out.splitlines() if line.startswith("RUN_TIMES")).split()[1:]
        return dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)

    start, end = run_times()
    assert start.year == 1998  # what Airflow's dag.test records
    demo._record_real_run_times(env, dt.date(1998, 1, 15), started)
    start, end = run_times()
    assert abs((start - started).total_seconds()) < 1 and dt.timedelta(0) < end - start < dt.timedelta(
        minutes=30
    )


def test_qdrant_admin_dag_reports_status(af_env, llmcf_home):
    env = dict(af_env)
    airflow_cli(["db", "migrate"], env, capture_output=True)
    conf = json.dumps({"dataset": "ml-100k", "action": "status"})
    proc = airflow_cli(
        ["dags", "test", "llmcf_qdrant_admin", "-c", conf], env, check=False, capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "llmcf_ml-100k" in out  # the alias it reports on


_PARAMS = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    from airflow.exceptions import ParamValidationError
    bag = DagBag(dag_folder=sys.argv[1])
    out = {}
    for dag_id, dag in bag.dags.items():
        try:
            dag.params.validate()
            out[dag_id] = {"defaults": "valid"}
        except ParamValidationError as exc:
            out[dag_id] = {"defaults": str(exc)}
        out[dag_id]["no_help"] = [k for k, p in dag.params.items() if not (p.description or p.schema.get("title"))]
    refresh = bag.dags["llmcf_refresh"].params
    def refused(key, value):
        try:
            refresh.get_param(key).resolve(value)
            return None
        except ParamValidationError as exc:
            return str(exc)
    out["refused"] = {
        "malformed_date": refused("partition", "1998-1-5"),
        "unknown_stage": refused("stages", ["samples", "bogus"]),
        "empty_partition": refused("partition", None),
        "a_date": refused("partition", "1998-01-15"),
    }
    print(json.dumps(out))
    """
)


def test_trigger_form_defaults_are_valid_and_bad_input_is_refused(af_env):
    """What the trigger form validates: every DAG's defaults pass (an empty partition is valid and means
    the logical date), every param carries help, a malformed date or an unknown stage is refused."""

    info = _run_over_dags(_PARAMS, af_env)
    refused = info.pop("refused")
    for dag_id, found in info.items():
        assert found["defaults"] == "valid", (dag_id, found)
    assert refused["empty_partition"] is None and refused["a_date"] is None
    assert refused["malformed_date"] and refused["unknown_stage"]
