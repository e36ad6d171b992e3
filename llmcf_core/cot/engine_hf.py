"""transformers backend: batched ``generate()`` inside a Ray Data actor (CPU, or a GPU if given).

:class:`TransformersGenerator` is the callable class handed to ``Dataset.map_batches`` with an
``ActorPoolStrategy``: each actor loads the model once and turns a batch of rendered prompts
into candidate rows (N per prompt). Prompts are left-padded with an attention mask, so a batch
generates what each prompt would alone. A batch that raises is retried one prompt at a time, so
one bad prompt fails only its own row.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import pandas as pd

from llmcf_core.config import DecodingConfig
from llmcf_core.cot.score import FINISH_LENGTH, FINISH_STOP

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("sample_id", "block", "candidate", "text", "n_tokens", "finish_reason", "error")


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: be safe
        return False


def pick_dtype(name: str, device: str) -> Any:
    """``auto``: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    import torch

    if name == "auto":
        name = "bfloat16" if device.startswith("cuda") or cpu_supports_bf16() else "float32"
    return getattr(torch, name)


def batch_seed(seed: int, sample_ids: list[str]) -> int:
    """Sampling seed of a batch: reruns of the same batch draw the same candidates."""
    return (seed * 1_000_003 + zlib.crc32("\n".join(sample_ids).encode())) % (2**31)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def generate_candidates(
    model: Any, tokenizer: Any, prompts: list[str], decoding: DecodingConfig, seed: int
) -> list[list[dict[str, Any]]]:
    """For each prompt, its candidates: {"text", "n_tokens", "finish_reason"}; one generate() call."""
    import torch
    from transformers import GenerationConfig

    n = decoding.candidates
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    stop = eos_ids(model, tokenizer)
    config = GenerationConfig(
        do_sample=decoding.do_sample,
        temperature=decoding.temperature if decoding.do_sample else None,
        top_k=decoding.top_k if decoding.do_sample else None,
        top_p=decoding.top_p if decoding.do_sample else None,
        num_return_sequences=n,
        max_new_tokens=decoding.max_new_tokens,
        min_new_tokens=min(decoding.min_new_tokens, decoding.max_new_tokens),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stop) or None,
    )
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=config)
    generated = out[:, enc["input_ids"].shape[1] :].tolist()  # (B * n, new) in prompt order
    results: list[list[dict[str, Any]]] = []
    for i in range(len(prompts)):
        cands = []
        for seq in generated[i * n : (i + 1) * n]:
            end = next((j for j, tok in enumerate(seq) if tok in stop), None)
            length = len(seq) if end is None else end
            cands.append(
                {
                    "text": tokenizer.decode(seq[:length], skip_special_tokens=True),
                    "n_tokens": length,
                    "finish_reason": FINISH_LENGTH if end is None else FINISH_STOP,
                }
            )
        results.append(cands)
    return results


class TransformersGenerator:
    """Ray Data actor: ``batch`` (sample_id, block, prompt) -> candidate rows (CANDIDATE_COLUMNS)."""

    def __init__(
        self,
        model_dir: str,
        decoding: dict[str, Any],  # DecodingConfig.model_dump(): plain data for Ray's actor arguments
        dtype: str = "auto",
        device: str | None = None,
        torch_threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.decoding = DecodingConfig.model_validate(decoding)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=pick_dtype(dtype, self.device))
        self.model.to(self.device).eval()

    def _rows(self, batch: pd.DataFrame, index: int, cands: list[dict[str, Any]] | None, error: str | None):
        sid, block = batch["sample_id"].iat[index], int(batch["block"].iat[index])
        if cands is None:
            return [
                {
                    "sample_id": sid,
                    "block": block,
                    "candidate": c,
                    "text": None,
                    "n_tokens": 0,
                    "finish_reason": "error",
                    "error": error,
                }
                for c in range(self.decoding.candidates)
            ]
        return [
            {"sample_id": sid, "block": block, "candidate": c, **cand, "error": None}
            for c, cand in enumerate(cands)
        ]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        prompts = batch["prompt"].tolist()
        ids = batch["sample_id"].tolist()
        rows: list[dict[str, Any]] = []
        try:
            results = generate_candidates(
                self.model, self.tokenizer, prompts, self.decoding, batch_seed(self.decoding.seed, ids)
            )
            for i, cands in enumerate(results):
                rows += self._rows(batch, i, cands, None)
        except Exception as exc:  # one bad prompt must not fail its neighbours: retry one by one
            log.warning(
                "batch of %d failed (%s: %s); retrying one by one", len(prompts), type(exc).__name__, exc
            )
            for i, prompt in enumerate(prompts):
                try:
                    cands = generate_candidates(
                        self.model,
                        self.tokenizer,
                        [prompt],
                        self.decoding,
                        batch_seed(self.decoding.seed, [ids[i]]),
                    )[0]
                    rows += self._rows(batch, i, cands, None)
                except Exception as row_exc:
                    rows += self._rows(batch, i, None, f"{type(row_exc).__name__}: {row_exc}"[:1000])
        return pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
