"""Recommender training step time: backbone alone vs backbone + ICT, and what the history text costs.

    .venv/bin/python bench/rec_train_step.py                          # DIN, DeepFM; base and llmcf
    .venv/bin/python bench/rec_train_step.py --models DIN,xDeepFM --steps 40 --rounds 5

One training step (forward, loss, backward, Adam) on batches of the configured size at
MovieLens-100K sizes (943 users, 1,682 items, 19 genres, 384-d item and CoT embeddings as from
all-MiniLM-L6-v2, history 20, K = 4 examples), one torch thread, denormals flushed (as ``fit``).
Two implementations of the history's mean text embedding are timed side by side:

- ``fused``:  ``fields.mean_of_rows`` (one ``embedding_bag`` gather-and-sum, the code in use);
- ``gather``: ``masked_mean(item_text[hist], mask)``, which materialises the (N, L, 384) gather
              (the code before 2026-12-06).

The configurations run in alternating rounds so that load changes on a shared machine hit them
alike. Prints a Markdown table of the median milliseconds per step over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from llmcf_core.config import RecModelConfig
from llmcf_core.rec import fields
from llmcf_core.rec.backbones import build_model
from llmcf_core.rec.spec import DataSpec

N_USERS, N_ITEMS, N_GENRES, DIM, HIST, K = 943, 1682, 19, 384, 20, 4


def _gather_mean(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return fields.masked_mean(table[index], index > 0)


def _spec() -> DataSpec:
    rng = np.random.default_rng(0)
    text = rng.standard_normal((N_ITEMS + 1, DIM)).astype(np.float32)
    text[0] = 0
    return DataSpec(
        n_users=N_USERS,
        n_items=N_ITEMS,
        n_genres=N_GENRES,
        history_len=HIST,
        k=K,
        item_text=text,
        item_genres=rng.integers(0, N_GENRES + 1, (N_ITEMS + 1, 3)),
    )


def _batch(gen: torch.Generator, size: int, examples: bool) -> dict[str, torch.Tensor]:
    def ints(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen)

    b = {
        "user": ints(N_USERS + 1, size),
        "item": ints(N_ITEMS, size) + 1,
        "hist": ints(N_ITEMS + 1, size, HIST),
        "hist_fb": ints(3, size, HIST),
        "label": ints(2, size).float(),
    }
    if examples:
        b |= {
            "nb_user": ints(N_USERS + 1, size, K),
            "nb_item": ints(N_ITEMS, size, K) + 1,
            "nb_hist": ints(N_ITEMS + 1, size, K, HIST),
            "nb_hist_fb": ints(3, size, K, HIST),
            "nb_label": ints(2, size, K),
            "nb_mask": torch.ones(size, K, dtype=torch.bool),
            "nb_cot": torch.randn(size, K, DIM, generator=gen),
            "nb_cot_mask": torch.ones(size, K, dtype=torch.bool),
        }
    return b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="DIN,DeepFM")
    parser.add_argument("--variants", default="base,llmcf")
    parser.add_argument("--batch", type=int, default=128, help="rec.batch_size (local profile: 128)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    spec, hp = _spec(), RecModelConfig()
    gen = torch.Generator().manual_seed(0)
    configs = []
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            batches = [_batch(gen, args.batch, variant.startswith("llmcf")) for _ in range(args.steps)]
            for impl in ("fused", "gather"):
                net = build_model(model, spec, hp, variant, seed=0).train()
                opt = torch.optim.Adam(net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
                configs.append({"key": (model, variant, impl), "net": net, "opt": opt, "batches": batches})
    times: dict[tuple[str, str, str], list[float]] = {c["key"]: [] for c in configs}
    real = fields.mean_of_rows
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for c in configs:
            fields.mean_of_rows = real if c["key"][2] == "fused" else _gather_mean
            started = time.perf_counter()
            for b in c["batches"]:
                loss = c["net"](b).total
                c["opt"].zero_grad(set_to_none=True)
                loss.backward()
                c["opt"].step()
            if round_:
                times[c["key"]].append((time.perf_counter() - started) / len(c["batches"]) * 1000)
    fields.mean_of_rows = real
    print(f"batch {args.batch}, {args.steps} steps x {args.rounds} rounds, 1 thread\n")
    print("| model | variant | fused ms/step | gather ms/step | gather / fused |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            fused = statistics.median(times[(model, variant, "fused")])
            gather = statistics.median(times[(model, variant, "gather")])
            print(f"| {model} | {variant} | {fused:.1f} | {gather:.1f} | {gather / fused:.2f}x |")


if __name__ == "__main__":
    main()
