"""`make demo`: run llmcf_refresh through Airflow and a local Ray head for a few ML-100K days.

    python -m llmcf_airflow.demo            # the demo (start Ray if needed, run, report, clean up)
    python -m llmcf_airflow.demo --ui       # the Airflow UI over the demo's runs (Ctrl-C stops it)

Airflow runs with SQLite under $AIRFLOW_HOME (default .airflow/); each day is one
`airflow dags test llmcf_refresh <day>` run, recorded in Airflow's database like any run. Before
them, the days from ``demo.bootstrap_from`` get their samples (`jobs.replay --stages samples`, no
CoTs), so the recommender trains on months of history; the publish gate then publishes it only if
it beats the counting baseline of its task on validation, and the summary prints both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llmcf_airflow.local_env import (
    ADMIN_USER,
    admin_password,
    airflow_cli,
    airflow_env,
    exit_on_termination_signals,
    start_standalone,
    stop_standalone,
)
from llmcf_core import localray, storage
from llmcf_core.config import REPO_ROOT, load_config
from llmcf_core.layout import DataPaths

DAG_ID = "llmcf_refresh"


def _airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or REPO_ROOT / ".airflow").resolve()


def _runs_cot_version(settings, dataset: str) -> str:
    """The CoT version the demo's runs write: the refresh DAG's default ``cot_model`` (current)
    resolved as its CoT job does."""
    from llmcf_core.cot.pipeline import version_written
    from llmcf_core.cot.versions import CURRENT_MODEL, model_for_run

    model = model_for_run(DataPaths(settings.home, dataset), CURRENT_MODEL, settings.cot.model)
    return version_written(settings.cot.model_copy(update={"model": model}), settings.home)


def _stage_rows(settings, dataset: str, day: dt.date, version: str) -> dict[str, str]:
    """Rows published by each stage for one day and CoT version ('-' where nothing is published)."""
    from llmcf_core.layout import CotVersion, RetrievalPaths

    rpaths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
    cot = CotVersion.parse(version)
    folders = {
        "samples": rpaths.data.samples(day),
        "cot": rpaths.cot_partition(day, cot),
        "pool": rpaths.pool(day, cot),
        "neighbors": rpaths.neighbors(day, "ctr", cot),
    }
    out = {}
    for stage, folder in folders.items():
        manifest = storage.read_manifest(folder)
        out[stage] = str(manifest["rows"]) if manifest else "-"
    return out


def _promote(settings, dataset: str, version: str) -> None:
    """The operator's step after the runs: promote the CoT version they wrote (cot/CURRENT and the
    Qdrant alias move only here, never inside a run)."""
    from llmcf_core.retrieval.promote import promote

    try:
        done = promote(settings, dataset, version)
    except Exception as exc:  # noqa: BLE001 - reported, and the demo fails below
        print(f"promotion of CoT version {version} refused: {exc}")
        raise SystemExit(1) from None
    print(
        f"promoted CoT version {done['cot_version']} (python -m jobs.promote_cot): cot/CURRENT and alias "
        f"{done['alias']} -> {done['collection']} ({done['points']} points, {done['days']} days)"
    )


def _report(days: list[dt.date], dataset: str, outcomes: dict[str, str], version: str) -> int:
    settings = load_config()
    paths = DataPaths(settings.home, dataset)
    failures = 0
    print(f"\n{'partition':<12} {'run':<8} {'samples':>8} {'CoTs':>6} {'pool':>6} {'neighbors':>10}")
    for day in days:
        outcome = outcomes[day.isoformat()]
        failures += outcome != "success"
        rows = _stage_rows(settings, dataset, day, version)
        print(
            f"{day.isoformat():<12} {outcome:<8} {rows['samples']:>8} {rows['cot']:>6} {rows['pool']:>6} "
            f"{rows['neighbors']:>10}"
        )
    manifest = storage.read_manifest(paths.samples(days[-1]))
    if manifest:
        checks = manifest.get("checks", {})
        print(
            f"samples checks ({days[-1]}): {checks.get('evaluated', '?')} GX rules, success={checks.get('success')}"
        )
    from llmcf_core.layout import CotVersion, RetrievalPaths

    rpaths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
    cot = storage.read_manifest(rpaths.cot_partition(days[-1], CotVersion.parse(version)))
    if cot:
        dec = cot.get("decoding", {})
        print(
            f"CoTs ({days[-1]}): backend {cot.get('backend')}, model {cot.get('model')}, "
            f"{dec.get('num_candidates')} candidates x {dec.get('max_new_tokens')} new tokens"
        )
    items = storage.read_manifest(paths.items)
    if items:
        print(f"items table: {items['rows']} items at {paths.items}")
    _report_recommenders(settings, dataset)
    print(f"data root: {settings.home}/{dataset}/")
    return failures


def _report_recommenders(settings, dataset: str) -> None:
    """Each trained recommender's validation metric beside its counting baseline, and what the
    publish gate did with it."""
    from llmcf_core import layout

    root = layout.rec_root(settings.home)
    # The LLM-CF variant against its control, trained on the same data and validated on the same rows.
    by_run: dict[tuple[str, str], dict[str, float]] = {}
    for metrics_file in sorted(root.glob("*/*/metrics.json")) if root.is_dir() else []:
        data = json.loads(metrics_file.read_text())
        if data.get("dataset") != dataset:
            continue
        model_variant, version = metrics_file.parent.parent.name, metrics_file.parent.name
        metric = data.get("primary_metric", "auc")
        value = (data.get("valid") or {}).get(metric, float("nan"))
        by_run.setdefault((data.get("model", ""), str(data.get("until"))), {})[data.get("variant", "")] = (
            value
        )
        floor = data.get("baseline_floor") or {}
        base = floor.get("valid")
        verdict = (
            "no baseline recorded"
            if base is None
            else ("beats" if value > base else "does NOT beat")
            + f" counting baseline {floor['name']} {base:.3f}"
        )
        rows = (data.get("valid") or {}).get("n", "?")
        print(
            f"recommender {model_variant}/{version}: valid {metric.upper()} {value:.3f} on {rows} rows "
            f"({data.get('valid_source', '')}), {verdict}; trained on {data.get('data', {}).get('rows')} rows, "
            f"{data.get('epochs', '?')} epochs"
        )
    for (model, until), values in sorted(by_run.items()):
        if "base" in values and len(values) > 1:
            for variant, value in sorted(values.items()):
                if variant != "base":
                    print(
                        f"lift on validation ({model}, data up to {until}): {variant} - base = "
                        f"{value - values['base']:+.4f}"
                    )
    for pointer in sorted(root.glob(f"*/latest-{dataset}")) if root.is_dir() else []:
        info = json.loads(pointer.read_text())
        print(f"recommender published: {pointer.parent.name} {info.get('version')}")
    if not root.is_dir() or not list(root.glob(f"*/latest-{dataset}")):
        print("recommender published: none (the publish gate refused every trained model: see above)")


def _bootstrap_history(settings, demo) -> None:
    """Samples for the days before the demo's first day (`jobs.replay --stages samples`): idempotent,
    so a second demo only re-checks them."""
    if demo.bootstrap_from is None or demo.bootstrap_from >= demo.first_day:
        return
    last = demo.first_day - dt.timedelta(days=1)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "jobs.replay", "--dataset", demo.dataset, "--stages", "samples"]
    cmd += ["--from", demo.bootstrap_from.isoformat(), "--to", last.isoformat()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        raise SystemExit("history bootstrap failed:\n    " + "\n    ".join(tail))
    print(
        f"history: samples {demo.bootstrap_from} .. {last} published in {time.perf_counter() - t0:.0f}s "
        "(jobs.replay --stages samples; no CoTs)"
    )


# `airflow dags test` starts a run with start_date = its logical date (Airflow's dag.test), so a 1998
# demo run would "last" 28 years in the UI. Set start_date and queued_at to when it really started,
# as the scheduler would have; the end date and every task instance's times are already real.
_REAL_RUN_TIMES = """
import datetime as dt, sys
from sqlalchemy import select
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
dag_id, logical, started = sys.argv[1], dt.datetime.fromisoformat(sys.argv[2]), dt.datetime.fromisoformat(sys.argv[3])
with create_session() as session:
    for run in session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date == logical)):
        run.start_date = started
        run.queued_at = started
"""


def _record_real_run_times(env: dict[str, str], day: dt.date, started: dt.datetime) -> None:
    logical = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    subprocess.run(
        [sys.executable, "-c", _REAL_RUN_TIMES, DAG_ID, logical.isoformat(), started.isoformat()],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


def run_demo() -> int:
    settings = load_config()
    demo = settings.demo
    days = [demo.first_day + dt.timedelta(days=i) for i in range(demo.days)]
    started = time.perf_counter()
    ray = localray.start_head(
        settings.ray.local_gcs_port, settings.ray.local_dashboard_port, settings.ray.local_num_cpus
    )
    print(f"Ray head: {ray.dashboard_url} ({'started' if ray.started else 'already running'})")
    home = _airflow_home()
    env = airflow_env(home, ray_dashboard_url=ray.dashboard_url)
    outcomes: dict[str, str] = {}
    version = _runs_cot_version(settings, demo.dataset)
    try:
        _bootstrap_history(settings, demo)
        airflow_cli(["db", "migrate"], env, capture_output=True)
        print(f"Airflow home: {home} (SQLite)")
        for day in days:
            t0 = time.perf_counter()
            started_at = dt.datetime.now(dt.UTC)
            proc = airflow_cli(
                ["dags", "test", DAG_ID, day.isoformat(), "-c", json.dumps({"dataset": demo.dataset})],
                env,
                check=False,
                capture_output=True,
                text=True,
            )
            state = (
                airflow_cli(
                    ["dags", "state", DAG_ID, day.isoformat()],
                    env,
                    check=False,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()
            )
            _record_real_run_times(env, day, started_at)
            # `dags state` prints "<state>" or "<state>, <conf>" on its last line.
            ok = proc.returncode == 0 and bool(state) and state[-1].split(",")[0].strip() == "success"
            outcomes[day.isoformat()] = "success" if ok else "failed"
            print(f"  {DAG_ID} {day}: {outcomes[day.isoformat()]} in {time.perf_counter() - t0:.1f}s")
            if not ok:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
                print("    " + "\n    ".join(tail))
    finally:
        if ray.started:
            localray.stop_head(ray)
    if all(outcome == "success" for outcome in outcomes.values()):
        _promote(settings, demo.dataset, version)
    failures = _report(days, demo.dataset, outcomes, version)
    print(f"\nDemo finished in {time.perf_counter() - started:.0f}s; data root {settings.home}")
    print(
        "Open the Airflow UI over these runs: `make airflow-ui`, then http://127.0.0.1:8080 "
        f"(user {ADMIN_USER}, password in {home / 'simple_auth_manager_passwords.json'})."
    )
    return 1 if failures else 0


UI_PORT_ENV = "LLMCF_AIRFLOW_PORT"  # the UI's port (default 8080)


def run_ui() -> int:
    """Airflow standalone (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1:8080."""
    settings = load_config()
    port = int(os.environ.get(UI_PORT_ENV) or 8080)
    ray = localray.start_head(
        settings.ray.local_gcs_port, settings.ray.local_dashboard_port, settings.ray.local_num_cpus
    )
    home = _airflow_home()
    env = airflow_env(home, ray_dashboard_url=ray.dashboard_url, api_port=port)
    print(f"Airflow UI: http://127.0.0.1:{port}  user {ADMIN_USER}  password {admin_password(home)}")
    print(f"Ray dashboard: {ray.dashboard_url}. Ctrl-C stops both.")
    proc = start_standalone(env, home / "standalone.log")
    print(f"Logs: {home / 'standalone.log'}")
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    except SystemExit as stop:  # SIGTERM / SIGHUP
        return int(stop.code or 0)
    finally:
        stop_standalone(proc)
        if ray.started:
            localray.stop_head(ray)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcf_airflow.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--ui", action="store_true", help="start the Airflow UI over the demo's runs")
    args = parser.parse_args(argv)
    exit_on_termination_signals()  # SIGTERM / SIGHUP stop what we started, as Ctrl-C does
    return run_ui() if args.ui else run_demo()


if __name__ == "__main__":
    sys.exit(main())
