"""``llmcf_airflow.ray_client`` (Ray Jobs API + job output) works without Airflow; ``ray_job`` re-exports it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmcf_airflow import ray_client

ROOT = Path(__file__).resolve().parents[2]

NO_AIRFLOW_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["airflow"] = None  # any `import airflow...` now raises ImportError

    import llmcf_airflow.ray_client as c

    log = 'start\\nLLMCF_RESULT {"rows": 1}\\nLLMCF_RESULT {"rows": 2, "path": "/x"}\\nbye\\n'
    event = {"status": "FAILED", "submission_id": "s", "job_url": "u",
             "message": "Job entrypoint command failed with exit code 3, last available logs: ...",
             "log_tail": ["boom"]}
    print(json.dumps({
        "result": c.parse_result(log),
        "entrypoint": c.build_entrypoint("ingest", ["--day", "2024-01-01", "a b"]),
        "submission_id": c.submission_id_for("dag", "task", "2024-01-01", "python -m jobs.ingest"),
        "dashboard_url": c.default_dashboard_url(),
        "failure": c.format_failure(event),
        "error_is_runtime": issubclass(c.RayJobError, RuntimeError),
        "airflow_loaded": sorted(m for m, v in sys.modules.items() if m.startswith("airflow") and v),
    }))
    """
)


def test_ray_client_imports_and_runs_with_airflow_blocked() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    env["RAY_ADDRESS"] = "http://10.0.0.1:8265/"
    proc = subprocess.run(
        [sys.executable, "-c", NO_AIRFLOW_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["result"] == {"rows": 2, "path": "/x"}
    assert out["entrypoint"] == "python -m jobs.ingest --day 2024-01-01 'a b'"
    assert out["submission_id"].startswith("dag__task__2024-01-01__")
    assert out["dashboard_url"] == "http://10.0.0.1:8265"
    assert out["failure"].startswith("Ray job s FAILED: Job entrypoint command failed with exit code 3 (u)")
    assert out["failure"].endswith("--- last 1 log lines ---\nboom")
    assert out["error_is_runtime"] is True
    assert out["airflow_loaded"] == []


def test_ray_client_source_has_no_airflow_import() -> None:
    """Not even a lazy one inside a function (the subprocess test only runs the paths it calls)."""
    tree = ast.parse(Path(ray_client.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        assert not any(n == "airflow" or n.startswith("airflow.") for n in names), ast.unparse(node)


def test_parse_result_and_build_entrypoint() -> None:
    assert ray_client.parse_result('LLMCF_RESULT {}\nLLMCF_RESULT {"a": 1}\n') == {"a": 1}
    assert ray_client.parse_result([]) is None
    with pytest.raises(ValueError, match="not a JSON object"):
        ray_client.parse_result(["LLMCF_RESULT 3"])
    assert ray_client.build_entrypoint("cot_report") == "python -m jobs.cot_report"
    assert ray_client.build_entrypoint("x.y", [1, "it's"]) == "python -m jobs.x.y 1 'it'\"'\"'s'"
    for bad in ("ingest; rm -rf /", "../ingest", "1job", ""):
        with pytest.raises(ValueError, match="module name under jobs/"):
            ray_client.build_entrypoint(bad)


def test_ray_job_re_exports_the_client() -> None:
    from llmcf_airflow import ray_job

    assert ray_job.TRIGGER_CLASSPATH == "llmcf_airflow.ray_job.RayJobTrigger"
    for name in (
        "RayJobError",
        "parse_result",
        "build_entrypoint",
        "job_client",
        "JobWatcher",
        "attach_or_submit",
    ):
        assert getattr(ray_job, name) is getattr(ray_client, name), name
    assert set(ray_job.__all__) >= {"RayJobOperator", "force_param", "job_result", "job_client"}
