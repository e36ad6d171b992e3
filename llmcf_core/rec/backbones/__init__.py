"""Backbones by name (RecBole style: one class per file, a shared interface, a registry).

from llmcf_core.rec.backbones import build_model, MODELS
model = build_model("DIN", spec, hp, variant="llmcf")
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
from torch import nn

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones.autoint import AutoInt
from llmcf_core.rec.backbones.base import Batch, LossTerms, RankingModel, RecModel, SequentialModel
from llmcf_core.rec.backbones.dcn import DCN
from llmcf_core.rec.backbones.dcnv2 import DCNv2
from llmcf_core.rec.backbones.deepfm import DeepFM
from llmcf_core.rec.backbones.din import DIN
from llmcf_core.rec.backbones.gru4rec import GRU4Rec
from llmcf_core.rec.backbones.sasrec import SASRec
from llmcf_core.rec.backbones.srgnn import SRGNN
from llmcf_core.rec.backbones.xdeepfm import xDeepFM
from llmcf_core.rec.backbones.youtubednn import YoutubeDNN
from llmcf_core.rec.spec import DataSpec, uses_icl

MODELS: dict[str, type[RecModel]] = {
    cls.__name__: cls
    for cls in (DIN, DeepFM, DCNv2, AutoInt, xDeepFM, DCN, SASRec, GRU4Rec, SRGNN, YoutubeDNN)
}

__all__ = [
    "MODELS",
    "Batch",
    "LossTerms",
    "RankingModel",
    "RecModel",
    "SequentialModel",
    "build_model",
    "model_class",
]


def model_class(name: str) -> type[RecModel]:
    """The backbone class called ``name`` (case-insensitive); ValueError listing the known ones."""
    for key, cls in MODELS.items():
        if key.lower() == str(name).lower():
            return cls
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")


def build_model(
    name: str, spec: DataSpec, hp: RecModelConfig, variant: str, seed: int | None = None
) -> RecModel:
    """A freshly initialised backbone (RecBole's init: Xavier-normal weights, zero biases).

    With ``seed``, an ICT variant (``llmcf*``) starts from exactly the weights the ``base`` variant
    of the same seed starts from: every parameter the two share is copied, and a layer the ICT
    widens (its input gets the ICT output appended) gets the base's weights in the columns of the
    base's inputs. Every backbone's ICT output enters through a gate that starts at zero, so an
    ICT variant starts as exactly its base's function: the paired comparison
    llmcf - base then differs by what the ICT learns, not by a second random initialisation. Only the
    ICT's own parameters, the widened columns (and the text projection a sequential base lacks) come
    from the seed's stream after that.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = model_class(name)(spec, hp, variant)
    model.apply(_init_weights)
    if seed is not None and uses_icl(variant):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            base = model_class(name)(spec, hp, "base")
            base.apply(_init_weights)
        own = model.state_dict()
        start = getattr(model, "ict_block_start", None)
        shared = {}
        for key, value in base.state_dict().items():
            if key not in own:
                continue
            if own[key].shape == value.shape:
                shared[key] = value
            elif start is not None and own[key].dim() == value.dim():
                shared[key] = _embed_base(own[key], value, model.ict_dim, functools.partial(start, key))
        model.load_state_dict(shared, strict=False)
    return model


def _embed_base(
    own: torch.Tensor, base: torch.Tensor, width: int, block_start: Callable[[int, int], int]
) -> torch.Tensor:
    """``own`` with ``base`` copied around the ICT's ``width`` entries of every dimension where
    ``own`` is wider by exactly that (``block_start(dim, base_size)`` says where they begin)."""
    out = own.clone()
    src: list[list[slice]] = [[slice(None)] for _ in range(base.dim())]
    dst: list[list[slice]] = [[slice(None)] for _ in range(base.dim())]
    for d, (n_own, n_base) in enumerate(zip(own.shape, base.shape, strict=True)):
        if n_own == n_base:
            continue
        if n_own != n_base + width:
            raise ValueError(f"cannot align a {tuple(base.shape)} base weight with {tuple(own.shape)}")
        s = block_start(d, n_base)
        src[d] = [slice(0, s), slice(s, n_base)]
        dst[d] = [slice(0, s), slice(s + width, n_own)]
    for parts in itertools.product(*(range(len(p)) for p in src)):
        out[tuple(dst[d][i] for d, i in enumerate(parts))] = base[
            tuple(src[d][i] for d, i in enumerate(parts))
        ]
    return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Embedding):
        nn.init.xavier_normal_(module.weight)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
