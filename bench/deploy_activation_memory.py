"""Activation memory of full fine-tuning, measured: bytes autograd saves per token for one
Llama-2-7B-shaped decoder layer (hidden 4096, MLP 11008, 32 heads, bf16, SDPA attention).

docs/deploy.md ("Sizing") multiplies this by layers and tokens per GPU. Runs on a CPU in seconds
(random weights; the shapes, not the values, decide the memory):

    .venv/bin/python bench/deploy_activation_memory.py --tokens 256 512
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "num_hidden_layers": 32,
    "vocab_size": 32000,
}


def saved_bytes_per_token(tokens: int) -> tuple[float, dict[str, int]]:
    """Bytes of activations autograd keeps for backward, per token, and their sizes by dtype."""
    config = LlamaConfig(**LLAMA2_7B)
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, layer_idx=0).to(torch.bfloat16)
    rope = LlamaRotaryEmbedding(config)
    x = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(tokens).unsqueeze(0)
    cos, sin = (t.to(torch.bfloat16) for t in rope(x, positions))
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:  # weights are model states, counted separately
            saved[storage.data_ptr()] = (storage.nbytes(), str(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin))
    by_dtype: dict[str, int] = {}
    for nbytes, dtype in saved.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
    return sum(by_dtype.values()) / tokens, by_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    h = LLAMA2_7B["hidden_size"]
    for tokens in args.tokens:
        per_token, by_dtype = saved_bytes_per_token(tokens)
        print(
            f"tokens={tokens}: {per_token / 1e3:.1f} KB per token per layer "
            f"(= {per_token / 2 / h:.2f} x hidden in bf16 units); by dtype: "
            + ", ".join(f"{k} {v / tokens / 1e3:.1f} KB" for k, v in sorted(by_dtype.items()))
        )
    print(f"with activation checkpointing a layer keeps its input only: {2 * h / 1e3:.1f} KB per token")


if __name__ == "__main__":
    main()
