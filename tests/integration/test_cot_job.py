"""jobs.generate_cot end to end on a real local Ray head with tiny-llama: a run killed after its first
committed block, the resume, a new RecGen version beside the old one, and an incremental rerun."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmcf_core import layout, storage
from llmcf_core.cot import versions as cot_versions
from tests.integration.cot_jobs import DAY, N_SAMPLES, publish_inputs, result_of, submit

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BLOCK = 2
SMALL = {
    "backend": "transformers",
    "ray_min_prompts": 0,  # the Ray Data actor pool
    "pool_fraction": 1,
    "block_size": BLOCK,
    "batch_size": BLOCK,
    "decoding.num_candidates": 2,
    "decoding.max_new_tokens": 8,
    "decoding.min_new_tokens": 4,
    "min_cot_chars": 1,
    "max_failure_rate": 0,
    "max_failed_rows": 0,
    "actors": 1,
    "cpus_per_actor": 0.5,
    "torch_threads": 1,
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from llmcf_core.llm.models import resolve_model

    # One build per test session, shared by the CoT test modules.
    return str(resolve_model("tiny-llama", tmp_path_factory.getbasetemp() / "cot-models"))


def _job(home: Path, ray_head, model: str, kill_after: int | None = None) -> tuple[int, dict | None, str]:
    args = ["--dataset", "ml-100k", "--partition", DAY.isoformat(), "--model", model]
    for key, value in SMALL.items():
        args += ["--set", f"cot.{key}={value}"]
    env = {"LLMCF_HOME": str(home), "LLMCF_PROFILE": "local"}
    if kill_after is not None:
        env["LLMCF_COT_KILL_AFTER_BLOCKS"] = str(kill_after)
    code, logs = submit(ray_head, [sys.executable, "-m", "jobs.generate_cot", *args], env)
    return code, result_of(logs), logs[-4000:]


def test_killed_run_resumes_and_reruns_are_incremental(llmcf_home, ray_head, tiny_dir):
    paths = publish_inputs(llmcf_home)
    blocks = layout.blocks_dir(paths, DAY, "tiny-llama", "v1-lc")
    final = layout.version_dir(paths, DAY, "tiny-llama", "v1-lc")

    # 1. Killed (SIGKILL, no cleanup) right after committing its first block.
    rc, result, err = _job(llmcf_home, ray_head, tiny_dir, kill_after=1)
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), err
    assert result is None and not storage.is_published(final)
    # Exactly one committed block; which one depends on the order Ray Data finished them in.
    committed = sorted(blocks.glob("block-*.parquet"))
    assert len(committed) == 1, committed
    first_block = pq.read_table(committed[0]).to_pandas().set_index("sample_id")
    assert len(first_block) == BLOCK and first_block["error"].isna().all()

    # 2. The same command resumes: the committed block is kept, only the rest is generated.
    rc, result, err = _job(llmcf_home, ray_head, tiny_dir)
    assert rc == 0, err
    assert result["resumed_blocks"] == 1 and result["reused"] == BLOCK
    assert result["generated"] == N_SAMPLES - BLOCK and result["new_blocks"] == (N_SAMPLES - BLOCK) // BLOCK
    assert result["failed"] == 0 and result["checks"] == {"cot": True} and result["generated_tokens"] > 0
    table = storage.read_partition(final).to_pandas().set_index("sample_id")
    assert len(table) == N_SAMPLES and table.index.is_unique
    pd.testing.assert_frame_equal(table.loc[first_block.index], first_block)  # nothing lost, nothing redone
    assert table["cot_text"].str.len().gt(0).all() and table["score"].between(0, 1).all()
    assert set(table["finish_reason"]) <= {"stop", "length"} and table["n_tokens"].between(1, 8).all()
    assert not blocks.exists()  # merged into the published table
    assert layout.read_current(paths) is None  # a CoT run never moves the pointer (jobs.promote_cot does)
    manifest = storage.read_manifest(final)
    assert manifest["checks"]["success"] and manifest["decoding"]["num_candidates"] == 2

    # 3. A new RecGen version generates into its own folder; the old version stays readable.
    registry = llmcf_home / "models" / "recgen"
    shutil.copytree(tiny_dir, registry / "20240601-1")
    (registry / "latest").write_text(json.dumps({"version": "20240601-1"}))
    rc, result, err = _job(llmcf_home, ray_head, "recgen:latest")
    assert rc == 0, err
    assert result["model_version"] == "recgen-20240601-1" and result["generated"] == N_SAMPLES
    assert layout.list_versions(paths, DAY) == ["recgen-20240601-1__v1-lc", "tiny-llama__v1-lc"]
    assert storage.read_partition(final).num_rows == N_SAMPLES
    gate = cot_versions.verify_cot_published(
        llmcf_home, "ml-100k", DAY.isoformat(), "recgen-20240601-1", "v1-lc"
    )
    assert gate["model_version"] == "recgen-20240601-1" and gate["rows"] == N_SAMPLES

    # 4. Rerunning a finished partition generates nothing and leaves the publication untouched.
    sha = storage.read_manifest(final)["sha256"]
    rc, result, err = _job(llmcf_home, ray_head, tiny_dir, kill_after=1)  # would die if it committed a block
    assert rc == 0, err
    assert result["generated"] == 0 and result["new_blocks"] == 0 and result["changed"] is False
    assert storage.read_manifest(final)["sha256"] == sha


def test_vllm_processor_builds_inside_a_ray_job(ray_head, tiny_dir):
    """The cluster (GPU) profile's processor builds in the CPU stack without vLLM (it loads in the engine actors)."""
    code = (
        "import sys; from llmcf_core.config import CONFIG_DIR, load_config_file; "
        "from llmcf_core.cot.engine_vllm import build_vllm_processor; "
        "cot = load_config_file(CONFIG_DIR / 'cluster.yaml').cot; "
        f"p = build_vllm_processor(cot, {tiny_dir!r}, [2]); "
        "print('PROCESSOR', type(p).__name__, 'vllm' in sys.modules)"
    )
    rc, logs = submit(ray_head, [sys.executable, "-c", code], {"LLMCF_HOME": tiny_dir}, timeout_s=120)
    assert rc == 0, logs[-3000:]
    assert "PROCESSOR Processor False" in logs
