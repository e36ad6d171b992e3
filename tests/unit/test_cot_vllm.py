"""The vLLM backend's configuration, built as plain data on a machine without vLLM or a GPU."""

from __future__ import annotations

import importlib.util
import os
import sys

import pandas as pd
import pytest

from llmcf_core.config import CONFIG_DIR, DecodingConfig, load_config_file
from llmcf_core.cot import engine_vllm
from llmcf_core.cot.engine_hf import CANDIDATE_COLUMNS
from llmcf_core.layout import InvalidArgument


@pytest.fixture
def cluster_cot(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCF_HOME", str(tmp_path))
    return load_config_file(CONFIG_DIR / "cluster.yaml").cot


def test_cluster_profile_builds_the_processor_config_without_vllm(cluster_cot):
    assert cluster_cot.backend == "vllm" and cluster_cot.model == "recgen:latest"
    kwargs = engine_vllm.processor_kwargs(cluster_cot, "/models/recgen/7")
    assert kwargs["model_source"] == "/models/recgen/7"
    assert (
        kwargs["engine_kwargs"]["tensor_parallel_size"]
        == cluster_cot.vllm_engine_kwargs["tensor_parallel_size"]
    )
    assert (
        kwargs["engine_kwargs"]["max_model_len"]
        >= cluster_cot.max_prompt_tokens + cluster_cot.decoding.max_new_tokens
    )
    assert (
        kwargs["concurrency"] == cluster_cot.vllm_concurrency
        and kwargs["batch_size"] == cluster_cot.vllm_batch_size
    )
    assert kwargs["should_continue_on_error"] is True  # a failing request becomes a failed row
    assert kwargs["chat_template_stage"] is False  # prompts arrive rendered by our own prompt code
    assert "vllm" not in sys.modules


def test_processor_config_is_accepted_by_ray(cluster_cot):
    """Ray's config class validates without vLLM installed; skip where Ray lacks ray.data.llm."""
    if importlib.util.find_spec("ray.data.llm") is None:
        pytest.skip("ray.data.llm not available")
    from ray.data.llm import vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(**engine_vllm.processor_kwargs(cluster_cot, "/models/recgen/7"))
    assert config.engine_kwargs["tensor_parallel_size"] == 1
    assert config.should_continue_on_error is True
    assert "vllm" not in sys.modules


def test_engine_settings_are_validated(cluster_cot):
    bad_tp = cluster_cot.model_copy(update={"vllm_engine_kwargs": {"tensor_parallel_size": 0}})
    with pytest.raises(InvalidArgument, match="tensor_parallel_size"):
        engine_vllm.processor_kwargs(bad_tp, "/m")
    short = cluster_cot.model_copy(
        update={"vllm_engine_kwargs": {"tensor_parallel_size": 2, "max_model_len": 512}}
    )
    with pytest.raises(InvalidArgument, match="max_model_len"):
        engine_vllm.processor_kwargs(short, "/m")
    typed = cluster_cot.model_copy(update={"vllm_accelerator_type": "H100"})
    assert engine_vllm.processor_kwargs(typed, "/m")["accelerator_type"] == "H100"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from llmcf_core.llm.models import load_tokenizer_from_gguf

    folder = tmp_path_factory.mktemp("tok")
    load_tokenizer_from_gguf().save_pretrained(folder)
    return str(folder)


def test_requests_carry_token_ids_and_per_candidate_sampling(tokenizer_dir):
    decoding = DecodingConfig(num_candidates=3, max_new_tokens=8, min_new_tokens=2, seed=5)
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    plan = pd.DataFrame({"sample_id": ["a", "b"], "block": [4, 4], "prompt": [prompt, "P-b"]})
    requests = engine_vllm.expand_candidates(plan, decoding)
    assert requests[["sample_id", "candidate"]].values.tolist() == [
        ["a", 0],
        ["a", 1],
        ["a", 2],
        ["b", 0],
        ["b", 1],
        ["b", 2],
    ]
    row = engine_vllm.preprocess_row(requests.iloc[1].to_dict(), decoding.model_dump(), tokenizer_dir)
    tok = engine_vllm._tokenizer(tokenizer_dir)
    assert row["tokenized_prompt"] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert row["tokenized_prompt"][0] == tok.convert_tokens_to_ids("<|im_start|>")  # no extra BOS
    params = row["sampling_params"]
    assert (params["temperature"], params["top_k"], params["max_tokens"], params["n"]) == (0.6, 50, 8, 1)
    seeds = {engine_vllm.sampling_params(decoding, "a", c)["seed"] for c in range(3)}
    assert len(seeds) == 3  # distinct candidates per sample
    greedy = engine_vllm.sampling_params(DecodingConfig(do_sample=False), "a", 0)
    assert greedy["temperature"] == 0.0 and "seed" not in greedy


def test_outputs_become_candidate_rows():
    base = {"sample_id": "a", "block": 4, "candidate": 1, "__inference_error__": ""}
    stopped = engine_vllm.postprocess_row(
        {**base, "generated_text": "x y", "generated_tokens": [5, 6, 2], "num_generated_tokens": 3}, 8, [2]
    )
    assert stopped == {
        "sample_id": "a",
        "block": 4,
        "candidate": 1,
        "text": "x y",
        "n_tokens": 2,
        "finish_reason": "stop",
        "error": None,
    }
    full = engine_vllm.postprocess_row(
        {**base, "generated_text": "z", "generated_tokens": list(range(10, 18)), "num_generated_tokens": 8},
        8,
        [2],
    )
    assert full["finish_reason"] == "length" and full["n_tokens"] == 8
    # Failed requests bypass postprocess: the processor emits the whole request row instead.
    failed_request = {
        "sample_id": "b",
        "block": 4,
        "candidate": 0,
        "prompt": "P-b",
        "generated_text": "",
        "num_generated_tokens": 0,
        "__inference_error__": "ValueError: prompt too long",
    }
    batch = engine_vllm.to_candidates(pd.DataFrame([{**stopped, "__inference_error__": ""}, failed_request]))
    assert list(batch.columns) == list(CANDIDATE_COLUMNS)
    assert batch["finish_reason"].tolist() == ["stop", "error"]
    assert batch["error"].iloc[1] == "ValueError: prompt too long" and pd.isna(batch["text"].iloc[1])
    assert batch["n_tokens"].tolist() == [2, 0] and pd.isna(batch["error"].iloc[0])


def test_cpu_clusters_get_cpu_bundles_and_the_vllm_interpreter(cluster_cot):
    local = load_config_file(CONFIG_DIR / "local.yaml").cot
    kwargs = engine_vllm.processor_kwargs(local, "/m", gpu=False, runtime_env={"py_executable": "/v/python"})
    assert kwargs["placement_group_config"] == {"bundles": [{"CPU": local.vllm_cpus_per_engine}]}
    assert "accelerator_type" not in kwargs and kwargs["runtime_env"] == {"py_executable": "/v/python"}
    engine = kwargs["engine_kwargs"]
    assert engine["enforce_eager"] is True and engine["enable_chunked_prefill"] is False  # CPU profile
    gpu = engine_vllm.processor_kwargs(cluster_cot.model_copy(update={"vllm_accelerator_type": "H100"}), "/m")
    assert "placement_group_config" not in gpu and gpu["accelerator_type"] == "H100"
    tp2 = local.model_copy(update={"vllm_engine_kwargs": {"tensor_parallel_size": 2}})
    assert len(engine_vllm.processor_kwargs(tp2, "/m", gpu=False)["placement_group_config"]["bundles"]) == 2


def test_one_request_with_n_equals_its_seeded_child_requests():
    """vLLM V1 fans SamplingParams(n=N, seed=s) out into N requests with seeds s..s+N-1: the Ray Data
    path (one output per request) sends those child requests itself."""
    decoding = DecodingConfig(num_candidates=3, seed=11)
    whole = engine_vllm.sampling_params(decoding, "u1-i2-3")
    children = [engine_vllm.sampling_params(decoding, "u1-i2-3", c) for c in range(3)]
    assert whole["n"] == 3 and all(c["n"] == 1 for c in children)
    assert [c["seed"] for c in children] == [whole["seed"] + c for c in range(3)]
    assert {k: v for k, v in whole.items() if k not in ("n", "seed")} == {
        k: v for k, v in children[0].items() if k not in ("n", "seed")
    }
    assert engine_vllm.sampling_params(DecodingConfig(seed=12), "u1-i2-3")["seed"] != whole["seed"]


def test_engine_restarts_are_bounded(cluster_cot, tokenizer_dir):
    if importlib.util.find_spec("ray.data.llm") is None:
        pytest.skip("ray.data.llm not available")
    cot = cluster_cot.model_copy(update={"vllm_max_restarts": 2})
    processor = engine_vllm.build_vllm_processor(cot, tokenizer_dir, [2], gpu=False)
    stage = processor.get_stage_by_name(engine_vllm.ENGINE_STAGE)
    assert stage.map_batches_kwargs["max_restarts"] == 2  # Ray Data's default is -1: forever
    assert stage.map_batches_kwargs["num_cpus"] == cot.vllm_cpus_per_engine
    assert "vllm" not in sys.modules


def test_auto_backend_and_the_vllm_interpreter(monkeypatch, tmp_path, cluster_cot):
    from llmcf_core.cot import backend

    local = load_config_file(CONFIG_DIR / "local.yaml").cot
    assert local.backend == "auto"
    fake = tmp_path / "python"
    monkeypatch.setenv(backend.VLLM_PYTHON_ENV, str(fake))
    monkeypatch.setattr(backend, "vllm_importable", lambda: False)
    monkeypatch.setattr(backend, "cpu_runs_vllm", lambda: (True, ""))
    assert backend.vllm_python(local) == fake
    assert backend.resolve_backend(local) == "transformers"  # not installed
    fake.write_text("")
    assert backend.resolve_backend(local) == "vllm"
    monkeypatch.setattr(backend, "cpu_runs_vllm", lambda: (False, "no AVX2"))
    assert backend.resolve_backend(local) == "transformers"
    pinned = local.model_copy(update={"backend": "transformers"})
    assert backend.resolve_backend(pinned) == "transformers"
    # vllm requested, no interpreter with vLLM: a bad-argument error that says what to do.
    missing = local.model_copy(update={"backend": "vllm", "vllm_python": str(tmp_path / "nope")})
    with pytest.raises(InvalidArgument, match="make setup-vllm"):
        backend.reexec_for_vllm(missing, "jobs.generate_cot", [])
    assert backend.vllm_python(cluster_cot) is None  # images that ship vLLM: never re-executed
    env = backend.vllm_runtime_env(local.model_copy(update={"vllm_python": sys.executable}), gpu=False)
    assert env == {
        "py_executable": os.path.abspath(sys.executable),
        "env_vars": {
            "VLLM_CPU_KVCACHE_SPACE": str(local.vllm_cpu_kvcache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}",  # vllm_cpu_threads_bind: all
        },
    }
    vllm_default = local.model_copy(update={"vllm_cpu_threads_bind": None})
    assert "VLLM_CPU_OMP_THREADS_BIND" not in backend.cpu_engine_env(vllm_default)


def test_cpu_engines_run_fp32_without_native_bf16(monkeypatch, cluster_cot):
    """vLLM's CPU GEMMs emulate bf16 on CPUs without AVX512-BF16/AMX (6x slower than fp32 on an
    AVX2-only EPYC): `dtype: auto` is float32 there, bf16 where the CPU has it, the model's on GPUs."""
    local = load_config_file(CONFIG_DIR / "local.yaml").cot
    assert local.dtype == "auto"
    monkeypatch.setattr(engine_vllm, "cpu_has_native_bf16", lambda: False)
    assert engine_vllm.engine_kwargs(local)["dtype"] == "float32"
    assert engine_vllm.processor_kwargs(local, "/m", gpu=False)["engine_kwargs"]["dtype"] == "float32"
    monkeypatch.setattr(engine_vllm, "cpu_has_native_bf16", lambda: True)
    assert engine_vllm.engine_kwargs(local)["dtype"] == "bfloat16"
    engine = {k: v for k, v in cluster_cot.vllm_engine_kwargs.items() if k != "dtype"}
    gpu_auto = cluster_cot.model_copy(update={"dtype": "auto", "vllm_engine_kwargs": engine})
    # GPU: the model's own dtype
    assert engine_vllm.processor_kwargs(gpu_auto, "/m")["engine_kwargs"]["dtype"] == "auto"
    pinned = local.model_copy(update={"vllm_engine_kwargs": {**local.vllm_engine_kwargs, "dtype": "float16"}})
    assert engine_vllm.engine_kwargs(pinned)["dtype"] == "float16"  # an explicit engine dtype wins
    assert engine_vllm.engine_kwargs(local.model_copy(update={"dtype": "float32"}))["dtype"] == "float32"
