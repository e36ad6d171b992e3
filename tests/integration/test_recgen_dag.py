"""DAG `llmcf_recgen`: its trigger form and tasks, and the whole chain through Airflow and a local Ray
head with tiny-llama: instructions -> check -> fine-tune (Ray Train + DeepSpeed) -> evaluate -> publish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from llmcf_airflow.local_env import DAGS_FOLDER, airflow_cli, airflow_env
from llmcf_core.config import CONFIG_DIR

pytestmark = pytest.mark.airflow

_INSPECT = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    dag = bag.dags["llmcf_recgen"]
    heavy = [m for m in ("torch", "ray", "transformers", "deepspeed") if m in sys.modules]
    print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                      "tasks": sorted(t.task_id for t in dag.tasks),
                      "params": sorted(dag.params.keys()), "timetable": dag.timetable.summary, "heavy": heavy}))
    """
)


@pytest.fixture
def af_env(tmp_path, llmcf_home):
    return airflow_env(tmp_path / "airflow", paused_at_creation=False)


def test_dag_has_the_chain_and_the_trigger_form(af_env):
    out = subprocess.run(
        [sys.executable, "-c", _INSPECT, str(DAGS_FOLDER / "llmcf_recgen.py")],
        env={**os.environ, **af_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(out.strip().splitlines()[-1])
    assert info["errors"] == {} and info["heavy"] == []
    assert info["tasks"] == [
        "evaluate",
        "finetune",
        "instructions.build",
        "instructions.check",
        "publish",
        "resolve",
    ]
    assert {"window_end", "window_days", "base_model", "steps", "workers", "zero_stage", "mix"} <= set(
        info["params"]
    )
    assert info["timetable"] == "0 0 1 * *"


@pytest.mark.ray
@pytest.mark.slow
def test_dag_runs_the_whole_chain_with_tiny_llama(af_env, ray_head, llmcf_home, tmp_path):
    from jobs import ingest
    from llmcf_core.llm import registry

    for day in ("1998-01-15", "1998-01-16", "1998-03-10"):
        assert ingest.main(["--dataset", "ml-100k", "--partition", day]) == 0
    profile = yaml.safe_load((CONFIG_DIR / "local.yaml").read_text())
    profile["recgen"].update(  # a tiny, fast run whose gate always passes (refusal: test_recgen_train)
        lr=1e-3,
        micro_batch_size=2,
        grad_accum=1,
        checkpoint_every=2,
        eval_rec_max=32,
        eval_general_max=8,
        gate_min_auc_gain=-1.0,
        gate_max_ppl_factor=1e9,
    )
    config = tmp_path / "recgen-test.yaml"
    config.write_text(yaml.safe_dump(profile))
    env = {**af_env, "RAY_ADDRESS": ray_head.dashboard_url, "LLMCF_CONFIG_FILE": str(config)}
    conf = {
        "window_end": "1998-01-16",
        "window_days": 2,
        "base_model": "tiny-llama",
        "steps": 4,
        "workers": 2,
        "zero_stage": 2,
        "max_length": 256,
        "rec_max": 32,
        "general_max": 8,
    }
    airflow_cli(["db", "migrate"], env, capture_output=True)
    proc = airflow_cli(
        ["dags", "test", "llmcf_recgen", "1998-02-01", "-c", json.dumps(conf)],
        env,
        check=False,
        capture_output=True,
        text=True,
    )
    logs = proc.stdout[-6000:] + proc.stderr[-6000:]
    version = registry.latest_version(llmcf_home)
    assert version is not None, logs
    assert version.startswith("ml-100k-1998-01-16-concat-tiny-llama-s4-w2-z2-")
    folder = registry.version_dir(llmcf_home, version)
    meta = registry.read_metadata(folder)
    assert meta["final_step"] == 4 and meta["train"]["workers"] == 2 and meta["train"]["zero_stage"] == 2
    assert (folder / "eval" / "balance.md").is_file() and registry.gate_of(folder)["passed"]
    assert not registry.candidate_dir(llmcf_home, version).exists()
    assert (llmcf_home / "ml-100k" / "recgen_instructions" / "dt=1998-01-16").is_dir()
    assert "LLMCF_RESULT" in proc.stdout + proc.stderr
