"""RecGen fine-tuning throughput and memory: smollm2-135m (or any base) on N Ray Train CPU workers.

    .venv/bin/python bench/recgen_sft.py --steps 6 --workers 2 --zero-stage 2
    .venv/bin/python bench/recgen_sft.py --steps 60 --eval --eval-rec 200 --eval-general 40   # + balance table
    .venv/bin/python bench/recgen_sft.py --steps 6 --plain   # the baseline: a plain PyTorch loop

Uses its own data root (``--home``, default /tmp/llmcf-bench-recgen): ingests the ML-100K days it
needs (the last ``--window-days`` train days before 1998-03-08, and ``--eval-days`` valid days),
builds the instruction data (concat mix), fine-tunes with ``llmcf_core.llm.sft.finetune`` and
reports what the workers measured: training tokens/s (non-padding tokens of all workers per second
of the training loop, checkpoints included) and the peak RSS per worker. ``--eval`` also evaluates
the candidate against the base model (the balance table of docs/recgen.md). ``--plain`` runs the
baseline of the SFT throughput target instead: one process, ``--workers`` torch threads, the same
model, instruction rows, sample order, global batch, AdamW + cosine schedule + clipping, no Ray,
no DeepSpeed, no checkpoints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

TRAIN_END = dt.date(1998, 3, 7)  # ml-100k: valid_start 1998-03-08
VALID_START = dt.date(1998, 3, 8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", default="/tmp/llmcf-bench-recgen")
    p.add_argument("--base-model", default="smollm2-135m")
    p.add_argument("--window-days", type=int, default=7)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rec-max", type=int, default=0)
    p.add_argument("--general-max", type=int, default=2000)
    p.add_argument("--mix", default="concat", help="instruction mix: concat (paper), rec-only, half-rec")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zero-stage", type=int, default=2, choices=[2, 3])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--micro-batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--version", help="default: derived from the arguments (a rerun resumes)")
    p.add_argument("--plain", action="store_true", help="measure the plain PyTorch loop baseline instead")
    p.add_argument("--eval", action="store_true", help="evaluate against the base model afterwards")
    p.add_argument("--eval-days", type=int, default=7)
    p.add_argument("--eval-rec", type=int, default=200)
    p.add_argument("--eval-general", type=int, default=40)
    p.add_argument(
        "--compare", action="append", default=[], metavar="LABEL=VERSION",
        help="with --eval: also evaluate another candidate/model as a row of the balance table",
    )  # fmt: skip
    args = p.parse_args()

    os.environ["LLMCF_HOME"] = args.home
    Path(args.home).mkdir(parents=True, exist_ok=True)
    from jobs import ingest
    from llmcf_core import storage
    from llmcf_core.config import load_config
    from llmcf_core.layout import DataPaths
    from llmcf_core.llm import instructions, registry
    from llmcf_core.llm.sft import FinetuneSpec, finetune

    load_config.cache_clear()
    settings = load_config("local")
    paths = DataPaths(settings.home, "ml-100k")
    days = [TRAIN_END - dt.timedelta(days=i) for i in range(args.window_days)]
    days += [VALID_START + dt.timedelta(days=i) for i in range(args.eval_days if args.eval else 0)]
    for day in sorted(days):
        if not storage.is_published(paths.samples(day)):
            assert ingest.main(["--dataset", "ml-100k", "--partition", day.isoformat()]) == 0

    t0 = time.perf_counter()
    ispec = instructions.InstructionSpec.from_settings(
        settings,
        "ml-100k",
        TRAIN_END,
        window_days=args.window_days,
        base_model=args.base_model,
        max_length=args.max_length,
        rec_max_examples=args.rec_max,
        general_max_examples=args.general_max,
        mix=args.mix,
    )
    built = instructions.build_instructions(settings, ispec)
    build_s = time.perf_counter() - t0
    spec = FinetuneSpec.from_settings(
        settings,
        dataset="ml-100k",
        window_end=TRAIN_END,
        instructions_dir=built.path,
        version=args.version,
        base_model=args.base_model,
        num_workers=args.workers,
        cpus_per_worker=1,
        zero_stage=args.zero_stage,
        max_steps=args.steps,
        micro_batch_size=args.micro_batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        log_every=1,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
    )
    if args.plain:
        report = plain_loop(settings, spec, args)
        report["instructions"] = {"version": built.version, **built.counts, "build_s": round(build_s, 1)}
        print(json.dumps(report, indent=2, default=str))
        return 0
    t1 = time.perf_counter()
    out = finetune(settings, spec)
    fit_s = time.perf_counter() - t1
    meta = registry.read_metadata(registry.candidate_dir(settings.home, spec.version)) or {}
    seg = (meta.get("segments") or [{}])[-1]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": os.getloadavg(),
        "base_model": args.base_model,
        "workers": args.workers,
        "zero_stage": args.zero_stage,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
        "steps": out["final_step"],
        "global_batch": spec.global_batch,
        "max_length": args.max_length,
        "mix": args.mix,
        "instructions": {"version": built.version, **built.counts, "build_s": round(build_s, 1)},
        "train_tokens": meta.get("train_tokens"),
        "loop_seconds": seg.get("seconds"),
        "tokens_per_s": seg.get("tokens_per_s"),
        "s_per_step": round(seg["seconds"] / max(1, seg["end_step"] - seg["resumed_from_step"]), 2)
        if seg
        else None,
        "peak_rss_mb_per_worker": seg.get("peak_memory_mb_per_worker"),
        "fit_wall_s": round(fit_s, 1),
        "losses": meta.get("losses"),
        "version": spec.version,
    }
    if args.eval:
        from llmcf_core.llm.evaluate import evaluate_candidate

        ev = evaluate_candidate(
            settings,
            dataset="ml-100k",
            window_end=TRAIN_END,
            version=spec.version,
            eval_days=args.eval_days,
            rec_max=args.eval_rec,
            general_max=args.eval_general,
            compare=dict(c.split("=", 1) for c in args.compare) or None,
        )
        report["balance"] = ev["metrics"]
        report["gate"] = ev["gate"]
        report["eval_set"] = ev["eval_set"]
        print(Path(ev["balance_table"]).read_text())
    print(json.dumps(report, indent=2, default=str))
    import ray

    ray.shutdown()
    return 0


def plain_loop(settings, spec, args) -> dict:
    """The same training steps in one plain PyTorch process (the SFT target's baseline)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from llmcf_core.llm.sft import worker_config
    from llmcf_core.llm.sft_worker import collate, rows_for

    cfg = worker_config(spec, settings)
    # One process with the workers' cores; the workers' micro-batches become accumulation steps,
    # so every optimizer step sees the same 16 rows as the Ray Train run's step.
    rc = spec.recgen.model_copy(
        update={"num_workers": 1, "grad_accum": spec.recgen.grad_accum * spec.recgen.num_workers}
    )
    torch.set_num_threads(args.workers)
    torch.manual_seed(rc.seed)
    table = pq.read_table(cfg["data_file"], columns=["input_ids", "response_start"])
    data = list(
        zip(table.column("input_ids").to_pylist(), table.column("response_start").to_pylist(), strict=True)
    )
    tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    dtype = torch.bfloat16 if rc.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=dtype)
    model.config.use_cache = False
    if rc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg["warmup_steps"], cfg["total_steps"])
    orders: dict = {}
    losses, tokens = [], 0
    started = time.perf_counter()
    for step in range(cfg["total_steps"]):
        loss_sum = 0.0
        for micro in range(rc.grad_accum):
            batch = collate([data[i] for i in rows_for(step, micro, 0, rc, len(data), orders)], pad_id)
            tokens += int(batch["attention_mask"].sum())
            out = model(**batch)
            (out.loss / rc.grad_accum).backward()
            loss_sum += float(out.loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), rc.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss_sum / rc.grad_accum, 6))
        print(f"plain step {step + 1}/{cfg['total_steps']} loss {losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - started
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": os.getloadavg(),
        "mode": "plain PyTorch loop",
        "base_model": args.base_model,
        "torch_threads": args.workers,
        "steps": cfg["total_steps"],
        "global_batch": spec.global_batch,
        "max_length": args.max_length,
        "gradient_checkpointing": args.gradient_checkpointing,
        "train_tokens": tokens,
        "loop_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "s_per_step": round(seconds / cfg["total_steps"], 2),
        "losses": losses,
    }


if __name__ == "__main__":
    sys.exit(main())
