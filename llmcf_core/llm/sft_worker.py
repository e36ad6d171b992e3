"""The Ray Train worker loop of RecGen fine-tuning: ``deepspeed.initialize`` inside each worker.

Runs on every worker of a ``TorchTrainer`` (Ray has already set up the torch process group: gloo on
CPUs, NCCL on GPUs; DeepSpeed reuses it). Per optimizer step each worker runs ``grad_accum``
micro-batches; the data order is a deterministic function of (seed, step), so a resumed run sees
exactly the batches the interrupted one would have.

Checkpoints: every ``checkpoint_every`` steps and at the end, each worker writes its DeepSpeed
shards to a local folder and reports it; Ray Train merges the folders into one checkpoint in the
run's storage. A new attempt (Ray Train's own restart, or a rerun with the same run name) gets it
back from ``ray.train.get_checkpoint()`` and continues from its step.

Export: at the end the full weights are gathered (ZeRO-3: all ranks take part) and rank 0 writes a
plain HF folder (``from_pretrained`` loads it) with the tokenizer and ``metadata.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from llmcf_core import fsio, raycompute
from llmcf_core.config import RecgenConfig

CKPT_TAG = "ds"
STATE_FILE = "trainer_state.json"
IGNORE_INDEX = -100


def global_sample(step: int, micro: int, rank: int, slot: int, rc: RecgenConfig) -> int:
    """Position in the endless, epoch-by-epoch shuffled stream of examples."""
    per_micro = rc.micro_batch_size
    per_step = per_micro * rc.grad_accum * rc.num_workers
    return step * per_step + (micro * rc.num_workers + rank) * per_micro + slot


def rows_for(
    step: int, micro: int, rank: int, rc: RecgenConfig, n_rows: int, orders: dict[int, Any]
) -> list[int]:
    import numpy as np

    out = []
    for slot in range(rc.micro_batch_size):
        k = global_sample(step, micro, rank, slot, rc)
        epoch = k // n_rows
        if epoch not in orders:
            orders[epoch] = np.random.default_rng(rc.seed + epoch).permutation(n_rows)
        out.append(int(orders[epoch][k % n_rows]))
    return out


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch; labels are -100 on prompt tokens and padding (loss on responses only)."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, start) in enumerate(examples):
        row = torch.as_tensor(ids, dtype=torch.long)
        input_ids[i, : len(ids)] = row
        labels[i, start : len(ids)] = row[start:]
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def checkpoint_step(folder: Any, world_size: int) -> int | None:
    """The step of a complete checkpoint folder (every rank's shards and the trainer state), else None."""
    folder = fsio.as_path(folder)  # local, or on the object store of the Ray Train storage
    state = folder / STATE_FILE
    if not state.is_file() or not (folder / "latest").is_file():
        return None
    if not all((folder / f"rank-{r}.done").is_file() for r in range(world_size)):
        return None
    try:
        return int(json.loads(state.read_text())["step"])
    except (ValueError, KeyError):
        return None


def latest_complete_checkpoint(run_dir: Any, world_size: int) -> tuple[int, Any] | None:
    """Newest complete checkpoint in a run folder, registered with Ray Train or not.

    Ray registers a reported checkpoint asynchronously; a run killed right after its workers wrote one
    leaves it on storage but unregistered. Scanning the run folder finds it all the same.
    """
    found = [
        (step, d)
        for d in fsio.as_path(run_dir).glob("checkpoint_*")
        if (step := checkpoint_step(d, world_size)) is not None
    ]
    return max(found) if found else None


def resume_folder(
    stack: contextlib.ExitStack, registered: Any, run_dir: str, world_size: int, rank: int
) -> Path | None:
    """The checkpoint to resume from: Ray's registered one, or a newer complete one in the run folder.

    Rank 0 decides and broadcasts, so every rank loads the same checkpoint. A registered checkpoint
    is opened by each rank itself (on remote storage each rank downloads its own copy); a
    scanned one on an object store is downloaded by each rank into a temporary folder.
    """
    import torch.distributed as dist

    choice: list[Any] = [None]
    if rank == 0:
        best: tuple[int, str] | None = None
        if registered is not None:
            with raycompute.checkpoint_directory(registered, prefix="recgen-probe-") as folder:
                step = checkpoint_step(Path(folder), world_size)
            best = (step, "registered") if step is not None else None
        if run_dir and fsio.as_path(run_dir).is_dir():
            scanned = latest_complete_checkpoint(run_dir, world_size)
            if scanned and (best is None or scanned[0] > best[0]):
                best = (scanned[0], str(scanned[1]))
        choice[0] = best[1] if best else None
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    if choice[0] == "registered":
        return Path(
            stack.enter_context(raycompute.checkpoint_directory(registered, prefix=f"recgen-resume-r{rank}-"))
        )
    if fsio.is_url(choice[0]):
        fsio.cache_root().mkdir(parents=True, exist_ok=True)  # the pods' cache volume, not /tmp
        local = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="recgen-resume-", dir=fsio.cache_root()))
        )
        return fsio.download_dir(choice[0], local)
    return Path(choice[0])


def _peak_memory_mb(use_gpu: bool) -> float:
    if use_gpu:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _export(engine: Any, tok: Any, cfg: dict, zero_stage: int, rank: int, state: dict) -> None:
    """Gather the full weights and write an HF folder + metadata.json (rank 0), replacing any older export."""
    import torch.distributed as dist

    if zero_stage == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank
    else:
        state_dict = engine.module.state_dict() if rank == 0 else None
    if rank == 0:
        final = fsio.as_path(cfg["export_dir"])
        if fsio.is_url(final):  # written locally, then uploaded with metadata.json last
            fsio.cache_root().mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkdtemp(prefix="recgen-export-", dir=fsio.cache_root()))
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            staged = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        module = engine.module
        module.config.use_cache = True
        module.save_pretrained(staged, state_dict=state_dict, safe_serialization=True)
        tok.save_pretrained(staged)
        metadata = {
            **cfg["metadata"],
            **state,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staged / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        if fsio.is_url(final):
            fsio.remove(final / "metadata.json")  # the older export stops being a model first
            fsio.upload_dir(staged, final, last="metadata.json")
            shutil.rmtree(staged, ignore_errors=True)
        elif final.exists():
            trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(trash)
            staged.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staged.rename(final)
    dist.barrier()


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train entry point; ``cfg`` comes from :func:`llmcf_core.llm.sft.worker_config`."""
    rc = RecgenConfig.model_validate(cfg["recgen"])  # the run's recgen settings, as configured
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", cfg["torch_extensions_dir"])  # DeepSpeed's JIT op cache
    if not rc.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world != rc.num_workers:
        raise RuntimeError(f"world size {world} != configured {rc.num_workers}")
    if rc.use_gpu:
        torch.cuda.set_device(ray.train.torch.get_device())
    torch.manual_seed(rc.seed)

    table = fsio.read_parquet(cfg["data_file"], columns=["input_ids", "response_start"])
    data = list(
        zip(table.column("input_ids").to_pylist(), table.column("response_start").to_pylist(), strict=True)
    )
    del table
    tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    ds_config = cfg["ds_config"]
    # Wrap Ray's process group now, so that DeepSpeed's config (below, ZeRO-3) sees the real world size.
    deepspeed.init_distributed(dist_backend="nccl" if rc.use_gpu else "gloo")
    keep_alive = None
    if rc.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # from_pretrained partitions weights while loading
    dtype = torch.bfloat16 if rc.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=dtype)
    model.config.use_cache = False
    if rc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=rc.lr, weight_decay=rc.weight_decay
    )
    total, warmup = cfg["total_steps"], cfg["warmup_steps"]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total),
        config=ds_config,
    )
    del keep_alive

    state: dict[str, Any] = {"step": 0, "losses": [], "tokens": 0, "segments": []}
    with contextlib.ExitStack() as stack:
        folder = resume_folder(stack, ray.train.get_checkpoint(), cfg["run_dir"], rc.num_workers, rank)
        if folder is not None:
            engine.load_checkpoint(
                str(folder), tag=CKPT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            state = json.loads((folder / STATE_FILE).read_text())
    resumed_from = state["step"]
    device = engine.device
    orders: dict[int, Any] = {}
    seg_tokens, seg_start = 0, time.perf_counter()

    def save(metrics: dict) -> None:
        folder = tempfile.mkdtemp(prefix="recgen-ckpt-")
        try:
            engine.save_checkpoint(folder, tag=CKPT_TAG)
            (Path(folder) / f"rank-{rank}.done").write_text(str(state["step"]))
            if rank == 0:
                (Path(folder) / STATE_FILE).write_text(json.dumps(state))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    engine.train()
    while state["step"] < total:
        step = state["step"]
        loss_sum, tokens = 0.0, 0
        for micro in range(rc.grad_accum):
            batch = collate([data[i] for i in rows_for(step, micro, rank, rc, len(data), orders)], pad_id)
            tokens += int(batch["attention_mask"].sum())
            out = engine(**{k: v.to(device) for k, v in batch.items()})
            engine.backward(out.loss)
            engine.step()
            loss_sum += float(out.loss.detach().float())
        stats = torch.tensor([loss_sum / rc.grad_accum, float(tokens)], dtype=torch.float64)
        dist.all_reduce(stats)  # mean loss, total tokens over the workers
        state["step"] = step + 1
        state["tokens"] += int(stats[1])
        seg_tokens += int(stats[1])
        lr = float(engine.get_lr()[0])
        state["losses"].append([state["step"], round(float(stats[0]) / world, 6), lr])
        elapsed = time.perf_counter() - seg_start
        metrics = {
            "step": state["step"],
            "loss": state["losses"][-1][1],
            "lr": lr,
            "tokens_per_s": seg_tokens / elapsed,
        }
        if rank == 0 and (state["step"] % cfg["log_every"] == 0 or state["step"] == total):
            print(
                f"recgen step {state['step']}/{total} loss {metrics['loss']:.4f} lr {lr:.2e} "
                f"tokens/s {metrics['tokens_per_s']:.0f}",
                flush=True,
            )
        if state["step"] % rc.checkpoint_every == 0 or state["step"] == total:
            save(metrics)
            if cfg["fail_after_step"] == state["step"] and rank == 0:
                os._exit(17)  # test hook: a worker dies right after a checkpoint

    peak = torch.tensor([_peak_memory_mb(rc.use_gpu)], dtype=torch.float64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    seconds = time.perf_counter() - seg_start
    state["segments"].append(
        {
            "resumed_from_step": resumed_from,
            "end_step": state["step"],
            "seconds": round(seconds, 3),
            "tokens": seg_tokens,
            "tokens_per_s": round(seg_tokens / seconds, 2) if seg_tokens else None,
            "peak_memory_mb_per_worker": round(float(peak[0]), 1),
        }
    )
    _export(
        engine,
        tok,
        cfg,
        rc.zero_stage,
        rank,
        {
            "final_step": state["step"],
            "losses": state["losses"],
            "train_tokens": state["tokens"],
            "segments": state["segments"],
        },
    )
