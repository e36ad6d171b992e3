"""End to end on a real deployment: Airflow standalone (api-server, scheduler, dag-processor,
triggerer; LocalExecutor) on the local PostgreSQL server, a local Ray head, driven over the REST
API and the CLI exactly as docs/runbook.md tells on-call to do it.

Timeline: D1 runs clean; D2 and D3 get a corrupted input (duplicate ratings) and fail at the data
check with nothing published; the input is repaired; D2 is re-run with `airflow tasks clear
--only-failed` and D3 through a backfill with reprocess-behavior=failed (`llmcf_airflow.ops`,
REST). Every run goes through samples -> cot -> embed -> neighbors (tiny-llama CoTs, MiniLM
embeddings, embedded Qdrant). Every partition must then equal what a clean run publishes
(`jobs.replay` on clean inputs): the same samples bytes, CoT, pool and neighbour rows, and the same
Qdrant points, one per pool sample, with no duplicates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid

import pandas as pd
import pytest
import yaml

from llmcf_airflow.local_env import airflow_cli, airflow_env, start_standalone, stop_standalone, wait_for_api
from llmcf_airflow.ops import AirflowAPI
from llmcf_core import localray, storage
from llmcf_core.paths import DataPaths, day_bounds

pytestmark = [pytest.mark.airflow, pytest.mark.ray, pytest.mark.slow]

DAG_ID = "llmcf_refresh"
# Every data stage (the recommender has its own tests): CoTs come from tiny-llama, generated
# inside the CoT job's process (cot.ray_min_prompts), so the test stays a few minutes long.
CONF = {"stages": ["samples", "cot", "embed", "neighbors"]}
SMALL_COT = {
    "backend": "transformers",  # tiny-llama's head size has no vLLM CPU kernel; vLLM: test_cot_vllm_job.py
    "pool_fraction": 1,
    "ray_min_prompts": 100000,
    "num_candidates": 1,
    "max_new_tokens": 8,
    "min_new_tokens": 4,
    "min_cot_chars": 1,
    "torch_threads": 1,
}
DAYS = [dt.date(2024, 5, 1), dt.date(2024, 5, 2), dt.date(2024, 5, 3)]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"


def _psql(sql: str) -> None:
    """Run SQL on the server's `test` database (the metadata DB itself is a fresh database)."""
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


def _logs() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for d, day in enumerate(DAYS):
        start, _ = day_bounds(day)
        for u in range(1, 6):
            for k in range(3):
                rows.append((u, 1 + (u * 3 + k + d * 5) % 12, 1 + (u + k + d) % 5, start + 3600 * u + 60 * k))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame(
        {
            "item_id": range(1, 13),
            "title": [f"Film {i} ({1990 + i})" for i in range(1, 13)],
            "genres": ["Drama|Comedy" if i % 2 else "Action" for i in range(1, 13)],
        }
    )
    return inter, items


def _corrupt(inter: pd.DataFrame) -> pd.DataFrame:
    """Duplicate one rating on D2 and one on D3."""
    dups = [
        inter[(inter.timestamp >= day_bounds(day)[0]) & (inter.timestamp < day_bounds(day)[1])].iloc[[0]]
        for day in DAYS[1:]
    ]
    return pd.concat([inter, *dups], ignore_index=True)


@pytest.fixture
def deployment(tmp_path, ray_head, monkeypatch):
    """Config + data + Airflow standalone on PostgreSQL; everything is stopped and dropped after."""
    from llmcf_core.llm.models import resolve_model

    home = tmp_path / "llmcf"
    tiny = resolve_model("tiny-llama", tmp_path / "models")
    inter, items = _logs()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    inter.to_csv(inputs / "interactions.csv", index=False)
    items.to_csv(inputs / "items.csv", index=False)
    config = {
        "profile": "e2e",
        "home": str(home),
        "datasets": {
            "shop": {
                "source": "custom",
                "interactions": str(inputs / "interactions.csv"),
                "items": str(inputs / "items.csv"),
                "min_rows_per_partition": 1,
            }
        },
        "airflow": {
            "dataset": "shop",
            "start_date": DAYS[0].isoformat(),
            "end_date": DAYS[-1].isoformat(),
            "max_active_runs": 1,
            "retries": 1,
            "retry_delay_s": 5,
        },
        "ray": {"poll_interval_s": 1.0},
        "cot": {"model": str(tiny), **SMALL_COT},
        "qdrant": {"verify_queries": 2},
    }
    config_file = tmp_path / "e2e.yaml"
    config_file.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("LLMCF_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("LLMCF_HOME", str(home))

    # A fresh metadata database per run on the local server: no state leaks between runs.
    database = f"llmcf_e2e_{uuid.uuid4().hex[:8]}"
    _psql(f"CREATE DATABASE {database}")
    (api_port,) = localray.free_ports(1)
    env = airflow_env(tmp_path / "airflow", db_url=PG.format(db=database), api_port=api_port, parallelism=4)
    env.update(
        {
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "LLMCF_CONFIG_FILE": str(config_file),
            "LLMCF_HOME": str(home),
            "RAY_ADDRESS": ray_head.dashboard_url,
        }
    )
    proc = None
    try:
        airflow_cli(["db", "migrate"], env, capture_output=True)
        proc = start_standalone(env, tmp_path / "standalone.log")
        base = f"http://127.0.0.1:{api_port}"
        wait_for_api(base, timeout=180, proc=proc)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("LLMCF_AIRFLOW_URL", base)
        api = AirflowAPI.from_env()
        api.wait_for_dag(DAG_ID, timeout=180)
        yield {
            "api": api,
            "env": env,
            "inputs": inputs,
            "home": home,
            "clean": (inter, items),
            "tmp": tmp_path,
        }
    finally:
        if proc is not None:
            stop_standalone(proc)
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _published(home) -> dict[str, object]:
    """What a data root holds: per day the samples' sha256 and the CoT, pool and neighbour ids; the
    Qdrant point count and the sample ids behind the points."""
    from llmcf_core.config import load_config
    from llmcf_core.cot import layout
    from llmcf_core.retrieval.store import QdrantStore

    paths = DataPaths(home, "shop")
    current = layout.read_current(paths)
    assert current is not None, f"no CoT version promoted under {home}"
    out: dict[str, object] = {}
    for day in DAYS:
        d = day.isoformat()
        out[f"samples/{d}"] = storage.read_manifest(paths.samples(day))["sha256"]
        cot_dir = layout.version_dir(paths, day, current["model_version"], current["prompt_version"])
        out[f"cot/{d}"] = sorted(
            storage.read_partition(cot_dir, ["sample_id"]).column("sample_id").to_pylist()
        )
        neighbors = storage.read_partition(paths.partition("neighbors", day), ["sample_id"])
        out[f"neighbors/{d}"] = sorted(neighbors.column("sample_id").to_pylist())
    settings = load_config()
    with QdrantStore.open(settings.qdrant, home, owner="e2e test") as store:
        live = store.live("shop")
        assert live is not None, f"no live Qdrant collection under {home}"
        out["qdrant_points"] = store.count(live[0])
        ids, offset = [], None
        while True:
            records, offset = store.client.scroll(
                live[0], limit=256, offset=offset, with_payload=["sample_id"]
            )
            ids += [r.payload["sample_id"] for r in records]
            if offset is None:
                break
        out["qdrant_sample_ids"] = sorted(ids)
    return out


def _clean_reference(tmp_path, inter, items) -> dict[str, object]:
    """What a clean run publishes: the same stages (`jobs.replay`, in-process) on clean inputs."""
    from jobs import replay

    ref = tmp_path / "reference"
    ref.mkdir()
    inter.to_csv(ref / "i.csv", index=False)
    items.to_csv(ref / "t.csv", index=False)
    old = os.environ.get("LLMCF_HOME")
    os.environ["LLMCF_HOME"] = str(ref / "home")
    from llmcf_core.config import load_config

    load_config.cache_clear()
    try:
        flags = ["--interactions", str(ref / "i.csv"), "--items", str(ref / "t.csv")]
        span = ["--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat()]
        assert replay.main(["--dataset", "shop", *span, *flags, "--stages", ",".join(CONF["stages"])]) == 0
        return _published(ref / "home")
    finally:
        os.environ["LLMCF_HOME"] = old or ""
        load_config.cache_clear()


def test_trigger_fail_repair_clear_backfill(deployment):
    api: AirflowAPI = deployment["api"]
    env = deployment["env"]
    paths = DataPaths(deployment["home"], "shop")
    inter, items = deployment["clean"]
    ops_env = {**os.environ, **env}

    for name, slots, desc in [("ray_cpu", 2, "Ray CPU jobs"), ("ray_gpu", 1, "Ray GPU jobs")]:
        api.ensure_pool(name, slots, desc)
    api.unpause(DAG_ID)

    # D1: a clean partition through the scheduler, triggered over REST.
    run = api.trigger(DAG_ID, DAYS[0].isoformat(), CONF)
    assert api.wait_for_run(DAG_ID, run["dag_run_id"], timeout=300) == "success"
    assert storage.read_manifest(paths.samples(DAYS[0]))["rows"] == 15

    # D2, D3: corrupted input fails at the data check, once (no retries), publishing nothing.
    _corrupt(inter).to_csv(deployment["inputs"] / "interactions.csv", index=False)
    for day in DAYS[1:]:
        run = api.trigger(DAG_ID, day.isoformat(), CONF)
        assert api.wait_for_run(DAG_ID, run["dag_run_id"], timeout=300) == "failed"
        tis = {t["task_id"]: t for t in api.task_instances(DAG_ID, run["dag_run_id"])}
        assert tis["samples.ingest"]["state"] == "failed"
        assert tis["samples.ingest"]["try_number"] == 1, "a failed data check must not be retried"
        assert tis["samples.check_samples"]["state"] == "upstream_failed"
        assert not paths.samples(day).exists()
        assert (paths.quarantine("interactions", day) / storage.MANIFEST).is_file()
    failed = {r["partition"] for r in api.failed_partitions(DAG_ID)}
    assert failed == {DAYS[1].isoformat(), DAYS[2].isoformat()}

    # Repair the input.
    inter.to_csv(deployment["inputs"] / "interactions.csv", index=False)

    # D2: the CLI path, `airflow tasks clear --only-failed`.
    d2 = DAYS[1].isoformat()
    cleared = airflow_cli(
        ["tasks", "clear", DAG_ID, "-s", d2, "-e", d2, "--only-failed", "--yes"],
        env,
        check=False,
        capture_output=True,
        text=True,
    )
    assert cleared.returncode == 0, cleared.stdout[-3000:] + cleared.stderr[-3000:]
    run_d2 = api.run_for(DAG_ID, d2)
    assert api.wait_for_run(DAG_ID, run_d2["dag_run_id"], timeout=300) == "success"

    # D3 (failed) plus everything else in the range: a backfill with reprocess-behavior=failed.
    out = subprocess.run(
        [
            os.sys.executable,
            "-m",
            "llmcf_airflow.ops",
            "backfill",
            DAYS[0].isoformat(),
            DAYS[-1].isoformat(),
            "--conf",
            json.dumps(CONF),
        ],
        env=ops_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "reprocess failed" in out
    run_d3 = api.run_for(DAG_ID, DAYS[2].isoformat())
    assert api.wait_for_run(DAG_ID, run_d3["dag_run_id"], timeout=300) == "success"

    # Every partition succeeded and equals a clean run's output; no duplicates anywhere.
    for day in DAYS:
        assert api.run_for(DAG_ID, day.isoformat())["state"] == "success"
    published = _published(deployment["home"])
    reference = _clean_reference(deployment["tmp"], inter, items)
    assert published == reference
    all_ids = []
    for day in DAYS:
        all_ids += storage.read_partition(paths.samples(day), ["sample_id"]).column("sample_id").to_pylist()
        assert not paths.quarantine("interactions", day).exists()
    assert len(all_ids) == len(set(all_ids)) == len(inter)
    # Every sample is in the CoT pool (pool_fraction=1) and is one Qdrant point, once.
    assert published["qdrant_points"] == len(inter)
    assert published["qdrant_sample_ids"] == sorted(all_ids)
