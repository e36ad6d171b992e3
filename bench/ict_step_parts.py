"""Where an llmcf training step goes: the ICT's parts timed alone, forward and backward.

    .venv/bin/python bench/ict_step_parts.py                      # DeepFM and GRU4Rec
    .venv/bin/python bench/ict_step_parts.py --models DIN,SASRec --steps 50

On the batches of ``bench/rec_train_step.py`` (MovieLens-100K sizes, batch 128, K = 4 examples,
one torch thread, denormals flushed), each part is run ``--steps`` times after a warm-up and its
mean milliseconds printed as a Markdown table:

- example fields:      the retrieved examples' field embeddings (``fields.features``, B·K rows)
- feature MLP:         their feature tokens (F -> 256 -> C)
- CoT MLP:             their CoT tokens (384 -> 256 -> C)
- decoder:             the 2-layer decoder over the T = 3K + 1 tokens
- reconstruction:      the reconstruction head (C -> 256 -> 384) and the cosine loss
- whole step:          the llmcf model's loss, forward and backward (no optimiser step)
- base step:           the same for the backbone alone
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import rec_train_step as shapes  # noqa: E402  (the benchmark batches)

from llmcf_core.config import RecModelConfig  # noqa: E402
from llmcf_core.rec.backbones import build_model  # noqa: E402
from llmcf_core.rec.ict import attention_mask  # noqa: E402


def _time(fn: Callable[[], torch.Tensor], steps: int) -> float:
    """Mean ms of forward + backward of ``fn``'s output summed."""
    for _ in range(3):
        fn().sum().backward()
    started = time.perf_counter()
    for _ in range(steps):
        fn().sum().backward()
    return (time.perf_counter() - started) / steps * 1000


def parts(model_name: str, steps: int) -> dict[str, float]:
    spec, hp = shapes._spec(), RecModelConfig()
    batch = shapes._batch(torch.Generator().manual_seed(0), 128, True)
    net = build_model(model_name, spec, hp, "llmcf", seed=0).train()
    base = build_model(model_name, spec, hp, "base", seed=0).train()
    ict = net.ict
    assert ict is not None and ict.cot_mlp is not None and ict.recon_head is not None
    assert ict.decoder is not None
    if net.task == "ranking":
        args = (batch["nb_user"], batch["nb_item"], batch["nb_hist"], batch["nb_hist_fb"])

        def example_fields() -> torch.Tensor:
            return net.fields.features(*args)

    else:

        def example_fields() -> torch.Tensor:
            return net.fields.features(batch["nb_hist"], batch["nb_item"])

    feats = example_fields().detach()
    B, K = feats.shape[:2]
    T = ict.cfg.tokens_per_example * K + 1
    tokens = torch.randn(B, T, ict.cfg.width, requires_grad=True)
    mask = attention_mask(torch.ones(B, T, dtype=torch.bool))
    states = torch.randn(B, K, ict.cfg.width, requires_grad=True)
    cot = batch["nb_cot"]
    return {
        "example fields": _time(example_fields, steps),
        "feature MLP": _time(lambda: ict.feature_mlp(feats), steps),
        "CoT MLP": _time(lambda: ict.cot_mlp(cot), steps),
        "decoder": _time(lambda: ict.decoder(tokens, mask), steps),
        "reconstruction": _time(lambda: 1 - F.cosine_similarity(ict.recon_head(states), cot, dim=-1), steps),
        "whole step": _time(lambda: net(batch).total, steps),
        "base step": _time(lambda: base(batch).total, steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="DeepFM,GRU4Rec")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    models = args.models.split(",")
    results = {m: parts(m, args.steps) for m in models}
    print(f"batch 128, K = 4, {args.steps} steps, 1 thread, ms forward + backward\n")
    print("| part | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    for part in results[models[0]]:
        print(f"| {part} | " + " | ".join(f"{results[m][part]:.1f}" for m in models) + " |")


if __name__ == "__main__":
    main()
