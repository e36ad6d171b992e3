"""vLLM backend: ``ray.data.llm.build_processor`` with ``vLLMEngineProcessorConfig`` on GPU workers.

Nothing here imports vLLM or ``ray.data.llm`` at module level: the processor configuration is
built as plain data (:func:`processor_kwargs`, tested on CPU machines) and only
:func:`build_vllm_processor` imports Ray's LLM API (vLLM itself loads inside the engine actors). Install with ``requirements-gpu.txt`` (Ray 2.60.0 with
the vLLM 0.29.0 that Ray pins for it).

The prompt is rendered by the same code as the transformers backend (``prompt.py``), so Ray's
chat-template and tokenize stages are off: :func:`preprocess_row` tokenizes the rendered text
with the model's tokenizer and ``add_special_tokens=False``, exactly as the CPU backend (the
template already holds BOS where the model wants one; Ray's tokenize stage and vLLM's text
prompts would add a second one) and hands vLLM the token ids. Ray's vLLM stage returns one
output per request, so best-of-N is N requests per sample with distinct seeds, grouped again by
the driver. ``should_continue_on_error`` turns a failing request into a row carrying
``__inference_error__`` (such rows bypass ``postprocess``; :func:`to_candidates` normalises
both kinds) instead of failing the job.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator
from typing import Any

import pandas as pd

from llmcf_core.cot.engine_hf import CANDIDATE_COLUMNS, Decoding
from llmcf_core.cot.score import FINISH_LENGTH, FINISH_STOP
from llmcf_core.paths import InvalidArgument


def processor_kwargs(cfg: Any, model_source: str) -> dict[str, Any]:
    """Keyword arguments of ``vLLMEngineProcessorConfig`` from the ``cot`` config section."""
    engine = dict(cfg.vllm_engine_kwargs)
    tp = engine.get("tensor_parallel_size", 1)
    if not isinstance(tp, int) or tp < 1:
        raise InvalidArgument(
            f"cot.vllm_engine_kwargs.tensor_parallel_size must be a positive int, not {tp!r}"
        )
    needed = cfg.max_prompt_tokens + cfg.max_new_tokens
    if engine.get("max_model_len") is not None and engine["max_model_len"] < needed:
        raise InvalidArgument(
            f"cot.vllm_engine_kwargs.max_model_len={engine['max_model_len']} is below "
            f"max_prompt_tokens + max_new_tokens = {needed}"
        )
    engine.setdefault("max_model_len", needed)
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
    if cfg.vllm_accelerator_type:
        kwargs["accelerator_type"] = cfg.vllm_accelerator_type
    return kwargs


def request_seed(seed: int, sample_id: str, candidate: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{sample_id}#{candidate}".encode())) % (2**31)


def sampling_params(decoding: Decoding, sample_id: str, candidate: int) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields of one candidate request (one output per request)."""
    params: dict[str, Any] = {
        "n": 1,
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
            seed=request_seed(decoding.seed, sample_id, candidate),
        )
    else:
        params["temperature"] = 0.0
    return params


def expand_candidates(plan: pd.DataFrame, decoding: Decoding) -> pd.DataFrame:
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
    """A request row: token ids of the rendered prompt (no extra special tokens) + sampling params."""
    dec = Decoding(**decoding)
    ids = _tokenizer(model_source)(row["prompt"], add_special_tokens=False)["input_ids"]
    return {
        "sample_id": row["sample_id"],
        "block": int(row["block"]),
        "candidate": int(row["candidate"]),
        "prompt": row["prompt"],
        "tokenized_prompt": [int(i) for i in ids],
        "sampling_params": sampling_params(dec, row["sample_id"], int(row["candidate"])),
    }


def postprocess_row(row: dict[str, Any], max_new_tokens: int, eos: list[int]) -> dict[str, Any]:
    """The engine's output row -> a candidate row (CANDIDATE_COLUMNS)."""
    error = row.get("__inference_error__") or None
    tokens = [
        int(t) for t in (row.get("generated_tokens") if row.get("generated_tokens") is not None else [])
    ]
    ended = bool(tokens) and tokens[-1] in eos
    n_tokens = len(tokens) - 1 if ended else int(row.get("num_generated_tokens") or len(tokens))
    finish = FINISH_STOP if ended or n_tokens < max_new_tokens else FINISH_LENGTH
    return {
        "sample_id": row["sample_id"],
        "block": int(row["block"]),
        "candidate": int(row["candidate"]),
        "text": None if error else row.get("generated_text"),
        "n_tokens": 0 if error else n_tokens,
        "finish_reason": "error" if error else finish,
        "error": error,
    }


def build_vllm_processor(cfg: Any, model_source: str, eos: list[int]) -> Any:
    """The ``ray.data.llm`` processor (imports Ray's LLM API; vLLM itself loads in the engine actors)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    decoding = Decoding.from_config(cfg)
    return build_processor(
        vLLMEngineProcessorConfig(**processor_kwargs(cfg, model_source)),
        preprocess=functools.partial(preprocess_row, decoding=decoding.to_dict(), model_source=model_source),
        postprocess=functools.partial(postprocess_row, max_new_tokens=decoding.max_new_tokens, eos=eos),
    )


def run_vllm(plan: pd.DataFrame, cfg: Any, model_source: str, eos: list[int]) -> Iterator[pd.DataFrame]:
    """Stream candidate rows for ``plan`` (sample_id, block, prompt) through a vLLM processor."""
    import ray

    from llmcf_core.raycompute import ensure_ray

    ensure_ray()
    processor = build_vllm_processor(cfg, model_source, eos)
    requests = expand_candidates(plan, Decoding.from_config(cfg))
    frames = [group for _, group in requests.groupby("block", sort=True)]
    for batch in processor(ray.data.from_pandas(frames)).iter_batches(batch_size=None, batch_format="pandas"):
        yield to_candidates(batch)


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
