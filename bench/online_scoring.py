"""Online scoring latency: backbone alone vs backbone + ICT, per request of N candidates.

    .venv/bin/python bench/online_scoring.py                     # DIN, DeepFM, SASRec; 256 candidates
    .venv/bin/python bench/online_scoring.py --models DIN --candidates 256 --iters 300 --threads 1
    .venv/bin/python bench/online_scoring.py --compile             # torch.compile both paths
    .venv/bin/python bench/online_scoring.py --flops               # matmul FLOPs per request

Everything runs in memory at MovieLens-100K sizes (943 users, 1,682 items, 19 genres, 384-d
item/CoT embeddings as from all-MiniLM-L6-v2, history 20, K = 4) with untrained weights (latency
does not depend on the values). Each iteration scores one request through ``Scorer``:

- ``base``:      the backbone alone (variant base);
- ``ict``:       backbone + ICT with the examples already retrieved (retrieval excluded: the
                 target of the project, <= 1.15x base);
- ``ict+exact``: backbone + ICT including ``ExactRetriever`` (numpy brute force over a pool of
                 ``--pool`` examples; a Qdrant retriever would replace it).

The three are interleaved per iteration so that load changes on a shared machine hit them alike.
Prints a Markdown table of median and p90 milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones import build_model, model_class
from llmcf_core.rec.modelio import LoadedModel
from llmcf_core.rec.scoring import ExactRetriever, ExampleStore, Scorer, ScoreRequest
from llmcf_core.rec.spec import DataSpec

N_USERS, N_ITEMS, N_GENRES, DIM, HIST, K = 943, 1682, 19, 384, 20, 4


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build_scorer(name: str, variant: str, pool: int, rng: np.random.Generator, compile: bool) -> Scorer:
    item_text = np.vstack([np.zeros((1, DIM), np.float32), _unit(rng.normal(size=(N_ITEMS, DIM)))])
    genres = rng.integers(1, N_GENRES + 1, size=(N_ITEMS + 1, 3))
    spec = DataSpec(N_USERS, N_ITEMS, N_GENRES, HIST, K, item_text, genres)
    torch.manual_seed(0)
    model = build_model(name, spec, RecModelConfig(), variant).eval()  # rec.model's defaults
    meta = {"spec": spec.sizes(), "version": f"bench-{name}-{variant}"}
    loaded = LoadedModel(model, meta, np.arange(1, N_USERS + 1), np.arange(1, N_ITEMS + 1), Path("."))
    if model.ict is None:
        return Scorer(loaded, compile=compile)
    ids = np.array([f"ex{i}" for i in range(pool)])
    with torch.inference_mode():
        batch = {
            "nb_user": torch.randint(1, N_USERS + 1, (pool, 1)),
            "nb_item": torch.randint(1, N_ITEMS + 1, (pool, 1)),
            "nb_hist": torch.randint(0, N_ITEMS + 1, (pool, 1, HIST)),
            "nb_label": torch.randint(0, 2, (pool, 1)),
            "nb_cot": torch.from_numpy(_unit(rng.normal(size=(pool, 1, DIM)))),
        }
        tokens = model.example_tokens(batch)[:, 0]
    retriever = ExactRetriever(
        ids,
        np.arange(pool),
        rng.integers(0, 2, pool),
        _unit(rng.normal(size=(pool, DIM))),
        _unit(rng.normal(size=(pool, DIM))),
    )
    return Scorer(loaded, ExampleStore(ids, tokens), retriever, compile=compile)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def bench_model(name: str, args: argparse.Namespace) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    base = build_scorer(name, "base", args.pool, rng, args.compile)
    ict = build_scorer(name, "llmcf", args.pool, rng, args.compile)
    req = ScoreRequest(
        user_id=7,
        history_item_ids=rng.integers(1, N_ITEMS + 1, HIST).tolist(),
        candidate_item_ids=rng.integers(1, N_ITEMS + 1, args.candidates).tolist(),
    )
    examples = ict.retriever(ict.retrieval_query(req))  # retrieved once: excluded from "ict"
    runs = {
        "base": lambda: base.score(req),
        "ict": lambda: ict.score_with_examples(req, examples),
        "ict+exact": lambda: ict.score(req),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.warmup + args.iters):
        for key, fn in runs.items():
            t = timed(fn)
            if i >= args.warmup:
                times[key].append(t)
    return times


def flops(name: str, args: argparse.Namespace) -> tuple[float, float]:
    """Matmul-class MFLOP of one request (torch's FlopCounterMode): base, +ICT (retrieval excluded)."""
    from torch.utils.flop_counter import FlopCounterMode

    rng = np.random.default_rng(0)
    base = build_scorer(name, "base", args.pool, rng, False)
    ict = build_scorer(name, "llmcf", args.pool, rng, False)
    req = ScoreRequest(
        7, rng.integers(1, N_ITEMS + 1, HIST).tolist(), rng.integers(1, N_ITEMS + 1, args.candidates).tolist()
    )
    examples = ict.retriever(ict.retrieval_query(req))
    out = []
    for fn in (lambda: base.score(req), lambda: ict.score_with_examples(req, examples)):
        with FlopCounterMode(display=False) as counter:
            fn()
        out.append(counter.get_total_flops() / 1e6)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="DIN,DeepFM,SASRec")
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--pool", type=int, default=5000, help="pool examples for the exact retriever")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile both paths (slow first call)")
    parser.add_argument("--flops", action="store_true", help="print matmul FLOPs per request instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.flops:
        print(f"| model | base MFLOP | +ICT MFLOP | ratio |  (candidates={args.candidates})")
        print("|---|---|---|---|")
        for name in args.models.split(","):
            base, ict = flops(name, args)
            print(
                f"| {name} | {base:.1f} | {ict:.1f} | {ict / base:.2f}x |"
                if base
                else f"| {name} | n/a | {ict:.1f} | n/a |"
            )
        return

    print(
        f"candidates={args.candidates} pool={args.pool} iters={args.iters} threads={args.threads} "
        f"compile={args.compile} "
        f"torch={torch.__version__}"
    )
    print(
        "| model | task | base ms (p50 / p90) | +ICT ms, retrieval excluded | ratio (p50) | +ICT + exact retrieval ms |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        times = bench_model(name, args)
        p50 = {k: statistics.median(v) for k, v in times.items()}
        p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
        print(
            f"| {name} | {model_class(name).task} | {p50['base']:.2f} / {p90['base']:.2f} "
            f"| {p50['ict']:.2f} / {p90['ict']:.2f} | {p50['ict'] / p50['base']:.2f}x "
            f"| {p50['ict+exact']:.2f} / {p90['ict+exact']:.2f} |"
        )


if __name__ == "__main__":
    main()
