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

Then the same deployment through its web UI in a real browser (headless Chromium from Debian, driven
by Selenium; `make setup-browser`): the trigger form opens valid, shows every param's help and
refuses bad input; a run triggered with no edits succeeds in the grid; a Ray-job task shows the
job's output in its log and the "Ray job" link.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmcf_airflow.local_env import (
    ADMIN_USER,
    admin_password,
    airflow_cli,
    airflow_env,
    start_standalone,
    stop_standalone,
    wait_for_api,
)
from llmcf_airflow.ops import AirflowAPI
from llmcf_core import localray, storage
from llmcf_core.config import REPO_ROOT
from llmcf_core.layout import DataPaths, day_bounds

pytestmark = [pytest.mark.airflow, pytest.mark.ray, pytest.mark.slow]

DAG_ID = "llmcf_refresh"
# Every data stage (the recommender has its own tests): CoTs come from tiny-llama, generated
# inside the CoT job's process (cot.ray_min_prompts), so the test stays a few minutes long.
CONF = {"stages": ["samples", "cot", "embed", "neighbors"]}
SMALL_COT = {
    "backend": "transformers",  # tiny-llama's head size has no vLLM CPU kernel; vLLM: test_cot_vllm_job.py
    "pool_fraction": 1,
    "ray_min_prompts": 100000,
    "decoding": {"num_candidates": 1, "max_new_tokens": 8, "min_new_tokens": 4},
    "min_cot_chars": 1,
    "torch_threads": 1,
}
DAYS = [dt.date(2024, 5, 1), dt.date(2024, 5, 2), dt.date(2024, 5, 3)]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
POOLS = [("ray_cpu", 2, "Ray CPU jobs"), ("ray_gpu", 1, "Ray GPU jobs")]


def _psql(sql: str) -> None:
    """Run SQL on the server's `test` database (the metadata DB itself is a fresh database)."""
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


def _day_rows(d: int, day: dt.date) -> list[tuple[int, int, int, int]]:
    """15 ratings (5 users x 3 items) on ``day``; ``d`` varies the items and ratings."""
    start, _ = day_bounds(day)
    return [
        (u, 1 + (u * 3 + k + d * 5) % 12, 1 + (u + k + d) % 5, start + 3600 * u + 60 * k)
        for u in range(1, 6)
        for k in range(3)
    ]


def _logs() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [row for d, day in enumerate(DAYS) for row in _day_rows(d, day)]
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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, ray_head):
    """Config + data + Airflow standalone on PostgreSQL, shared by this module's tests (starting it
    costs about a minute); everything is stopped and dropped after the module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _deployment(tmp_path_factory.mktemp("e2e"), ray_head, monkeypatch)


def _deployment(tmp_path, ray_head, monkeypatch):
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
            # No end_date: a manual run after it would get no task instances at all (and "succeed");
            # the scheduler creates no scheduled runs here instead (use_job_schedule below).
            "start_date": DAYS[0].isoformat(),
            "max_active_runs": 1,
            "retries": 1,
            "retry_delay_s": 5,
            # Never due for the browser test's run (partition = today): its recommender is skipped.
            "retrain_every_days": 100000,
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
            # Only the runs the tests trigger (REST, CLI, backfill, the UI): none from the schedule.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
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
            "base": base,
            "ray": ray_head,
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


def _runs_version() -> str:
    """The CoT version the runs write: the DAG's default cot_model (current) before any promotion
    is the configured model (the tiny Llama folder)."""
    from llmcf_core.config import load_config
    from llmcf_core.cot.pipeline import version_written

    load_config.cache_clear()  # this test's config file (LLMCF_CONFIG_FILE), not an earlier test's
    settings = load_config()
    return version_written(settings.cot, settings.home)


def _published(home) -> dict[str, object]:
    """What a data root holds: per day the samples' sha256 and the CoT, pool and neighbour ids; the
    Qdrant point count and the sample ids behind the points."""
    from llmcf_core import layout
    from llmcf_core.config import load_config
    from llmcf_core.layout import RetrievalPaths
    from llmcf_core.retrieval.store import QdrantStore
    from llmcf_core.retrieval.upsert import current_spec

    version = _runs_version()  # (re)loads this test's config
    settings = load_config()
    spec = current_spec(settings, "shop", version)
    paths = DataPaths(home, "shop")
    rpaths = RetrievalPaths(home, "shop", spec.embedder)
    # Runs never promote: the pointers stay unset, every stage worked on the run's own version.
    assert layout.read_current(paths) is None, f"a run moved cot/CURRENT under {home}"
    out: dict[str, object] = {}
    for day in DAYS:
        d = day.isoformat()
        out[f"samples/{d}"] = storage.read_manifest(paths.samples(day))["sha256"]
        out[f"cot/{d}"] = sorted(
            storage.read_partition(rpaths.cot_partition(day, spec.cot), ["sample_id"])
            .column("sample_id")
            .to_pylist()
        )
        neighbors = storage.read_partition(rpaths.neighbors(day, "ctr", spec.cot), ["sample_id"])
        out[f"neighbors/{d}"] = sorted(neighbors.column("sample_id").to_pylist())
    with QdrantStore.open(settings.qdrant, home, owner="e2e test") as store:
        assert store.live("shop") is None, f"a run moved the Qdrant alias under {home}"
        name = store.collection_of(spec)
        assert name is not None, f"no Qdrant collection of {version} under {home}"
        out["qdrant_points"] = store.count(name)
        ids, offset = [], None
        while True:
            records, offset = store.client.scroll(name, limit=256, offset=offset, with_payload=["sample_id"])
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
    from llmcf_airflow.ray_job import job_client

    api: AirflowAPI = deployment["api"]
    env = deployment["env"]
    paths = DataPaths(deployment["home"], "shop")
    inter, items = deployment["clean"]
    ops_env = {**os.environ, **env}

    for name, slots, desc in POOLS:
        api.ensure_pool(name, slots, desc)
    api.unpause(DAG_ID)

    # D1: a clean partition through the scheduler, triggered over REST.
    run = api.trigger(DAG_ID, DAYS[0].isoformat(), CONF)
    assert api.wait_for_run(DAG_ID, run["dag_run_id"], timeout=300) == "success"
    assert storage.read_manifest(paths.samples(DAYS[0]))["rows"] == 15
    # The CoT version flows forward from the CoT job's own result (its LLMCF_RESULT line, the
    # operator's XCom) through check_cot into the embed and retrieve jobs' arguments.
    version = _runs_version()
    entrypoints = {
        j.submission_id.split("__")[1]: j.entrypoint
        for j in job_client(deployment["ray"].dashboard_url).list_jobs()
        if (j.submission_id or "").startswith(f"{DAG_ID}__")
        and f"__{DAYS[0].isoformat()}__" in j.submission_id
    }
    for task in ("embed-embed_upsert", "neighbors-retrieve"):
        assert f"--cot-version {version}" in entrypoints[task], entrypoints
    assert "--model current" in entrypoints["cot-generate_cot"], entrypoints

    # D2, D3: corrupted input fails at the data check, once (no retries), publishing nothing.
    _corrupt(inter).to_csv(deployment["inputs"] / "interactions.csv", index=False)
    for day in DAYS[1:]:
        run = api.trigger(DAG_ID, day.isoformat(), CONF)
        assert api.wait_for_run(DAG_ID, run["dag_run_id"], timeout=300) == "failed"
        tis = {t["task_id"]: t for t in api.task_instances(DAG_ID, run["dag_run_id"])}
        assert tis["samples.ingest"]["state"] == "failed"
        # Not retried: a retry submits a new Ray job attempt (`<id>-r1`). (Not `try_number == 1`:
        # under load Airflow 3.3 can kill a task while it defers and re-run it, trigger and all, as
        # try 2 of the same Ray job, seen in CI; that is no retry of the failed check.)
        prefix = f"{DAG_ID}__samples-ingest__{day.isoformat()}__"
        ray_jobs = [
            j.submission_id
            for j in job_client(deployment["ray"].dashboard_url).list_jobs()
            if (j.submission_id or "").startswith(prefix)
        ]
        assert len(ray_jobs) == 1 and "-r" not in ray_jobs[0].removeprefix(prefix), (
            f"a failed data check must not be retried: {ray_jobs}"
        )
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


# --------------------------------------------------------------------------------------------------
# The Airflow UI in a real browser (after the test above: its run of today's partition adds Qdrant
# points that test counts)
# --------------------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("LLMCF_TEST_ARTIFACTS") or REPO_ROOT / ".test-artifacts")
TOP_LEVEL = ["resolve_partition", "samples", "cot", "embed", "neighbors", "recommender"]


@pytest.fixture
def browser():
    """Headless system Chromium through its Debian chromedriver (Selenium Manager downloads nothing)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make setup-browser` (as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def _artifacts_on_failure(driver, name: str):
    """On any failure inside: the page's screenshot, source and URL under ARTIFACTS (path printed)."""
    try:
        yield
    except BaseException:
        folder = ARTIFACTS / f"{name}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"\nbrowser artifacts (screenshot, page source): {folder}")
        with contextlib.suppress(Exception):
            (folder / "url.txt").write_text(driver.current_url + "\n", encoding="utf-8")
            driver.save_screenshot(str(folder / "page.png"))
            (folder / "page.html").write_text(driver.page_source, encoding="utf-8")
        raise


def _add_rows_for_today(inputs: Path) -> None:
    """Ratings on the UTC day of "now" (and the next one, should the form's logical date cross
    midnight): the day a run triggered with no edits processes."""
    path = inputs / "interactions.csv"
    inter = pd.read_csv(path)
    today = dt.datetime.now(dt.UTC).date()
    rows = _day_rows(len(DAYS), today) + _day_rows(len(DAYS) + 1, today + dt.timedelta(days=1))
    fresh = pd.DataFrame(rows, columns=inter.columns)
    pd.concat([inter[~inter.timestamp.isin(fresh.timestamp)], fresh]).to_csv(path, index=False)


def test_ui_trigger_form_run_grid_and_ray_job_log(deployment, browser, request):
    with _artifacts_on_failure(browser, request.node.name):
        _ui_walkthrough(browser, deployment)


def _ui_walkthrough(driver, deployment) -> None:
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    api: AirflowAPI = deployment["api"]
    base = deployment["base"]
    for name, slots, desc in POOLS:
        api.ensure_pool(name, slots, desc)
    api.unpause(DAG_ID)
    _add_rows_for_today(deployment["inputs"])
    params = api.request("GET", f"/dags/{DAG_ID}/details")["params"]
    runs_before = {r["dag_run_id"] for r in api.runs(DAG_ID)}
    wait = WebDriverWait(driver, 30)

    def click(element) -> None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        try:
            element.click()
        except ElementClickInterceptedException:  # a toast over it
            driver.execute_script("arguments[0].click()", element)

    def set_text(element, text: str) -> None:
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        if text:
            element.send_keys(text)

    def disabled_within(button, seconds: float) -> bool:
        try:
            WebDriverWait(driver, seconds, 0.2).until(lambda _: button.get_attribute("disabled") is not None)
            return True
        except TimeoutException:
            return False

    def open_trigger_form():
        """The DAG page's Trigger button; the dialog once every param's field is rendered."""
        driver.get(f"{base}/dags/{DAG_ID}")
        click(wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))))
        for key in params:
            wait.until(
                EC.presence_of_element_located((By.CSS_SELECTOR, f"[id=element_{key}], [name=element_{key}]"))
            )
        dialog = driver.find_element(By.CSS_SELECTOR, "[role=dialog][data-state=open]")
        return dialog, dialog.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")

    def empty_required(dialog) -> list[str]:
        """Fields the form marks required (label "*") yet holds nothing for: what keeps it invalid."""
        fields = dialog.find_elements(By.CSS_SELECTOR, "input[required], textarea[required]")
        return [f.get_attribute("name") for f in fields if not f.get_attribute("value")]

    # Log in (the simple auth manager's form).
    driver.get(base + "/")
    wait.until(EC.presence_of_element_located((By.NAME, "username"))).send_keys(ADMIN_USER)
    driver.find_element(By.NAME, "password").send_keys(
        admin_password(Path(deployment["env"]["AIRFLOW_HOME"]))
    )
    click(driver.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=nav-dags-link]")))

    # The trigger form opens valid with the defaults, and every param shows its help next to it.
    dialog, submit = open_trigger_form()
    assert not disabled_within(submit, 2), (
        f"the trigger form opens invalid (empty required: {empty_required(dialog)})"
    )
    assert not empty_required(dialog), empty_required(dialog)
    for key, spec in params.items():
        title = spec["schema"].get("title") or key
        help_text = " ".join((spec.get("description") or "").split())
        assert help_text, f"param {key!r} has no help text"
        field = dialog.find_element(By.CSS_SELECTOR, f"[id=element_{key}], [name=element_{key}]")
        row = field.find_element(By.XPATH, f"./ancestor::*[contains(normalize-space(.), '{title}')][1]")
        shown = " ".join(row.text.split())
        assert title in shown and help_text in shown, (key, shown)

    # Trigger with no edits: the UI opens the new run; its empty partition means the logical date.
    click(submit)
    wait.until(EC.url_contains(f"/dags/{DAG_ID}/runs/"))
    run_id = driver.current_url.split("/runs/", 1)[1].split("/")[0]
    assert run_id not in runs_before
    run = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    assert run["run_type"] == "manual" and run["conf"].get("partition") in (None, ""), run["conf"]
    partition = dt.datetime.fromisoformat(run["logical_date"]).astimezone(dt.UTC).date().isoformat()

    # While it runs, a fresh form refuses bad input, with the message, and creates no run. Airflow
    # 3.3.2's form does not evaluate `pattern` itself: the API refuses the submit (400, shown in the
    # dialog with the param's name, value and pattern) and the dialog stays open.
    dialog, submit = open_trigger_form()
    field = dialog.find_element(By.NAME, "element_partition")
    for bad in ("2024-13-45x", "2024-13-45"):  # malformed; no such month
        set_text(field, bad)
        click(submit)
        wait.until(lambda _, bad=bad: f"Invalid input for param partition: '{bad}'" in dialog.text)
    set_text(field, "")  # cleared: valid again (empty = the logical date)
    assert field.get_attribute("value") == "" and not disabled_within(submit, 1)
    assert {r["dag_run_id"] for r in api.runs(DAG_ID)} == runs_before | {run_id}
    # Stages: a multi-select of the known stages only; an unknown one cannot be entered.
    stages = dialog.find_element(By.ID, "element_stages")

    def selected() -> list[str]:
        return [e.get_attribute("value") for e in stages.find_elements(By.CSS_SELECTOR, "input[type=hidden]")]

    assert selected() == params["stages"]["value"]
    box = stages.find_element(By.CSS_SELECTOR, "input[role=combobox]")
    click(box)
    box.send_keys("bogus")
    wait.until(EC.visibility_of_element_located((By.XPATH, "//*[normalize-space(text())='No options']")))
    box.send_keys(Keys.ENTER)
    assert selected() == params["stages"]["value"]
    set_text(box, "")
    for _ in params["stages"]["value"]:  # no stage at all: refused before submitting
        box.send_keys(Keys.BACKSPACE)
    wait.until(lambda _: not selected() and "element_stages" in empty_required(dialog))
    # Airflow 3.3.2 shows no message for it, only a red "Run Parameters" header with an error icon.
    assert disabled_within(submit, 2), "an empty stage list must disable Trigger"
    click(dialog.find_element(By.CSS_SELECTOR, "button[aria-label=Close]"))
    wait.until(EC.invisibility_of_element(dialog))

    # The run succeeds in the grid: its bar's tooltip, then every top-level node's.
    driver.get(f"{base}/dags/{DAG_ID}")

    def tooltip_state(css: str, pattern: str) -> str:
        """Hover ``css`` (after moving off it) and read ``pattern``'s group from its tooltip."""
        ActionChains(driver).move_to_element(
            driver.find_element(By.CSS_SELECTOR, "[data-testid=nav-dags-link]")
        ).perform()
        ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, css)).perform()
        found = WebDriverWait(driver, 5, 0.2).until(
            lambda _: re.search(pattern, driver.find_element(By.TAG_NAME, "body").text)
        )
        return found.group(1)

    bar = f"a[href='/dags/{DAG_ID}/runs/{run_id}/']"
    polls = iter(range(10**6))

    def run_succeeded(_) -> bool:
        if next(polls) % 10 == 9:
            driver.refresh()
        state = tooltip_state(bar, rf"Run ID: {re.escape(run_id)}\s*State: (\w+)")
        assert state.lower() not in ("failed", "upstream_failed"), f"run {run_id}: {state}"
        return state.lower() == "success"

    ignored = (TimeoutException, NoSuchElementException, StaleElementReferenceException)
    WebDriverWait(driver, 300, 3, ignored_exceptions=ignored).until(run_succeeded)
    for node in TOP_LEVEL:
        state = tooltip_state(f"[data-testid='grid-{run_id}-{node}']", rf"Task ID: {node}\s*State: (\w+)")
        assert state in (("Success", "Skipped") if node == "recommender" else ("Success",)), (node, state)
    tis = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
    assert tis["recommender.train_rec"] == "skipped", tis  # not a retrain day (retrain_every_days)

    # One Ray-job task: the job's streamed output in its log, and the "Ray job" link in its details.
    driver.get(f"{base}/dags/{DAG_ID}/runs/{run_id}/tasks/samples.ingest")
    line = wait.until(
        EC.presence_of_element_located((By.XPATH, "//span[contains(text(), 'LLMCF_RESULT {')]"))
    )
    text = line.get_attribute("textContent")
    result, _ = json.JSONDecoder().raw_decode(text[text.index("LLMCF_RESULT {") + len("LLMCF_RESULT ") :])
    assert (result["job"], result["partition"], result["rows"]) == ("ingest", partition, 15), result
    click(driver.find_element(By.XPATH, "//a[normalize-space()='Details']"))
    link = wait.until(EC.presence_of_element_located((By.XPATH, "//a[normalize-space()='Ray job']")))
    href = link.get_attribute("href")
    links = api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/samples.ingest/links")
    assert href == links["extra_links"]["Ray job"], (href, links)
    dashboard = deployment["ray"].dashboard_url
    assert href.startswith(f"{dashboard}/#/jobs/") and partition in href, href
    submission_id = href.rsplit("/", 1)[1]
    job = urllib.request.Request(f"{dashboard}/api/jobs/{submission_id}", headers=localray.ray_auth_headers())
    with urllib.request.urlopen(job, timeout=10) as resp:
        assert json.load(resp)["status"] == "SUCCEEDED"
