"""Benchmark: CoT generation throughput of SmolLM2-135M (bf16) on CPU, three ways, same prompts.

1. one prompt at a time through plain ``generate()`` (batch 1);
2. bare batched ``generate()`` in this process (left padding + attention mask);
3. the production path: a Ray Data actor pool running :class:`TransformersGenerator`.

Every mode generates exactly ``--new-tokens`` tokens per prompt (min = max new tokens), so
tokens/s compare like for like. Prompts are real CoT prompts (``PromptBuilder``) over ml-100k
samples of one day, ingested into ``$LLMCF_HOME`` if missing. Peak memory: this process's max RSS
for modes 1-2; for mode 3 the peak summed RSS of this process and its Ray processes, sampled.

    .venv/bin/python bench/cot_generation.py --prompts 64 --new-tokens 64 --batch-size 32 --single 8
    .venv/bin/python bench/cot_generation.py --threads 1 --actors 2 --only-ray   # 2 actors x 1 thread

On a shared, oversubscribed machine use ``--threads 1``: with 2 OpenMP threads and less than
two free cores, each parallel region waits for a descheduled thread (4-5x slower here).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import sys
import threading
import time

DAY = dt.date(1998, 1, 15)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def build_prompts(home, n: int, tokenizer) -> tuple[list[str], list[int]]:
    built = built_prompts(home, n, tokenizer)
    return built["prompt"].tolist(), built["n_prompt_tokens"].tolist()


def built_prompts(home, n: int, tokenizer):
    """The PromptBuilder frame of the first ``n`` samples of DAY (ingested into ``home`` if missing)."""
    from llmcf_core import storage
    from llmcf_core.cot.prompt import PromptBuilder
    from llmcf_core.layout import DataPaths

    paths = DataPaths(home, "ml-100k")
    if not storage.is_published(paths.samples(DAY)):
        from jobs import ingest

        assert ingest.main(["--dataset", "ml-100k", "--partition", DAY.isoformat()]) == 0
    samples = storage.read_partition(paths.samples(DAY)).to_pandas().head(n)
    items = storage.read_partition(paths.items).to_pandas()
    builder = PromptBuilder(
        tokenizer,
        items,
        prompt_version="v1",
        label_conditioned=True,
        history_items=10,
        max_prompt_tokens=1024,
    )
    built = builder.build(samples)
    assert built["prompt_error"].isna().all()
    return built


def progress(report: dict, key: str) -> None:
    """Each mode's numbers as soon as they exist (a long run on a busy machine keeps partial results)."""
    print(f"progress {key}: {json.dumps(report[key])} load {load_avg()}", file=sys.stderr, flush=True)


def bare(model, tokenizer, prompts: list[str], batch_size: int, decoding) -> tuple[float, int]:
    from llmcf_core.cot.engine_hf import generate_candidates

    tokens, started = 0, time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        out = generate_candidates(model, tokenizer, prompts[i : i + batch_size], decoding, seed=i)
        tokens += sum(c["n_tokens"] for cands in out for c in cands)
    return time.perf_counter() - started, tokens


def tree_rss_mb(root_pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def through_ray(model_dir: str, prompts: list[str], args, decoding) -> dict:
    import pandas as pd
    import ray

    from llmcf_core.cot.engine_hf import TransformersGenerator

    class TimedGenerator(TransformersGenerator):
        def __call__(self, batch):
            t0 = time.time()
            out = super().__call__(batch)
            out["_t0"], out["_t1"] = t0, time.time()
            out["_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return out

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mb(os.getpid()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        plan = pd.DataFrame(
            {"sample_id": [f"s{i}" for i in range(len(prompts))], "block": 0, "prompt": prompts}
        )
        plan["block"] = [i // args.batch_size for i in range(len(plan))]
        frames = [g for _, g in plan.groupby("block")]
        started = time.time()
        ds = ray.data.from_pandas(frames).map_batches(
            TimedGenerator,
            fn_constructor_kwargs={
                "model_dir": model_dir,
                "decoding": decoding.model_dump(),
                "dtype": "bfloat16",
                "device": "cpu",
                "torch_threads": args.threads,
            },
            batch_size=args.batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_cpus=args.cpus_per_actor,
        )
        out = pd.concat(list(ds.iter_batches(batch_size=None, batch_format="pandas")), ignore_index=True)
        ended = time.time()
    finally:
        stop.set()
        sampler.join()
        ray.shutdown()
    tokens = int(out["n_tokens"].sum())
    steady = float(out["_t1"].max() - out["_t0"].min())
    return {
        "tokens": tokens,
        "end_to_end_s": round(ended - started, 2),
        "steady_s": round(steady, 2),
        "tok_s_end_to_end": round(tokens / (ended - started), 1),
        "tok_s_steady": round(tokens / steady, 1),
        "actor_max_rss_mb": round(float(out["_maxrss_mb"].max()), 1),
        "peak_tree_rss_mb": round(peak[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--single", type=int, default=16, help="prompts for the one-at-a-time run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only-ray", action="store_true", help="skip the in-process modes")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    import torch

    from llmcf_core.config import DecodingConfig, load_config
    from llmcf_core.llm.models import load_model, resolve_model

    home = load_config().home
    torch.set_num_threads(args.threads)
    model_dir = str(resolve_model(args.model, home))
    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype="bfloat16", home=home)
    load_s = time.perf_counter() - t0
    tokenizer.padding_side = "left"
    prompts, lengths = build_prompts(home, args.prompts, tokenizer)
    decoding = DecodingConfig(
        num_candidates=1, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, seed=0
    )
    report: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "dtype": "bfloat16",
        "threads": args.threads,
        "prompts": len(prompts),
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "new_tokens": args.new_tokens,
        "batch_size": args.batch_size,
        "model_load_s": round(load_s, 2),
        "load_before": load_avg(),
    }
    report["actors"], report["cpus_per_actor"] = args.actors, args.cpus_per_actor
    if not args.only_ray:
        warm = DecodingConfig(num_candidates=1, max_new_tokens=4, min_new_tokens=4)
        bare(model, tokenizer, prompts[:2], 2, warm)
        secs, toks = bare(model, tokenizer, prompts, args.batch_size, decoding)
        report["bare_batched"] = {"tokens": toks, "s": round(secs, 2), "tok_s": round(toks / secs, 1)}
        progress(report, "bare_batched")
        secs, toks = bare(model, tokenizer, prompts[: args.single], 1, decoding)
        report["one_at_a_time"] = {"tokens": toks, "s": round(secs, 2), "tok_s": round(toks / secs, 1)}
        progress(report, "one_at_a_time")
        report["in_process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    del model
    report["ray_data"] = through_ray(model_dir, prompts, args, decoding)
    progress(report, "ray_data")
    report["load_after"] = load_avg()
    if args.only_ray:
        print(json.dumps(report, indent=2))
        return
    bare_tok_s = report["bare_batched"]["tok_s"]
    report["ratios"] = {
        "ray_steady_vs_bare_batched": round(report["ray_data"]["tok_s_steady"] / bare_tok_s, 2),
        "ray_end_to_end_vs_bare_batched": round(report["ray_data"]["tok_s_end_to_end"] / bare_tok_s, 2),
        "ray_steady_vs_one_at_a_time": round(
            report["ray_data"]["tok_s_steady"] / report["one_at_a_time"]["tok_s"], 2
        ),
        "bare_batched_vs_one_at_a_time": round(bare_tok_s / report["one_at_a_time"]["tok_s"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
