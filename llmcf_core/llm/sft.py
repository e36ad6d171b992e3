"""RecGen fine-tuning driver: full-parameter SFT with DeepSpeed on Ray Train workers.

``finetune(settings, spec)`` starts a ``TorchTrainer`` whose workers run
:func:`llmcf_core.llm.sft_worker.train_loop_per_worker`. The Ray Train run is named after the
model version and stored under ``recgen.storage_path`` (default ``$LLMCF_HOME/models/recgen/_runs``):
running the same version again (an Airflow retry, a manual rerun after a crash) resumes from its
last checkpoint instead of starting over. The result is a candidate model folder
``<home>/models/recgen/_candidates/<version>/`` that the evaluation job gates and the registry
publishes.

DeepSpeed configs are ``configs/deepspeed/zero{2,3}.json``; their ``"auto"`` values are filled
here from the run's settings. On CPUs DeepSpeed JIT-compiles a comm op once (~70 s) into
``TORCH_EXTENSIONS_DIR`` (default ``<repo>/.cache/torch_extensions``), so later runs skip it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcf_core import fsio, storage
from llmcf_core.config import CONFIG_DIR, REPO_ROOT, RecgenConfig, Settings
from llmcf_core.layout import InvalidArgument
from llmcf_core.llm import registry

log = logging.getLogger(__name__)

DEFAULT_TORCH_EXTENSIONS_DIR = REPO_ROOT / ".cache" / "torch_extensions"


def torch_extensions_dir() -> str:
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(DEFAULT_TORCH_EXTENSIONS_DIR)


@dataclass(frozen=True)
class FinetuneSpec:
    """One fine-tuning run. ``version`` names the run, its checkpoints and the candidate model.

    ``recgen`` is the ``recgen`` config section as this run uses it (with the run's overrides); the
    other fields are what only this run has.
    """

    dataset: str
    window_end: dt.date
    instructions_dir: Path
    version: str
    recgen: RecgenConfig
    log_every: int = 10
    fail_after_step: int | None = None  # tests: a worker dies right after this step's checkpoint

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        dataset: str,
        window_end: dt.date,
        instructions_dir: Path,
        version: str | None = None,
        log_every: int | None = None,
        fail_after_step: int | None = None,
        **overrides: Any,
    ) -> FinetuneSpec:
        """``overrides``: ``recgen`` fields for this run (None: the configured value), validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            rc = RecgenConfig.model_validate({**settings.recgen.model_dump(), **given})
        except ValueError as exc:  # pydantic.ValidationError: unknown field or bad value
            raise InvalidArgument(f"invalid fine-tuning setting(s) {given}: {exc}") from None
        if rc.use_gpu and not rc.bf16:
            rc = rc.model_copy(update={"bf16": True})
        instructions_dir = fsio.as_path(instructions_dir)
        version = version or default_version(dataset, window_end, instructions_dir, rc)
        registry.check_version(version)
        return cls(
            dataset=dataset,
            window_end=window_end,
            instructions_dir=instructions_dir,
            version=version,
            recgen=rc,
            fail_after_step=fail_after_step,
            **({"log_every": log_every} if log_every is not None else {}),
        )

    @property
    def global_batch(self) -> int:
        rc = self.recgen
        return rc.micro_batch_size * rc.grad_accum * rc.num_workers


def default_version(dataset: str, window_end: dt.date, instructions_dir: Any, rc: RecgenConfig) -> str:
    """Deterministic, so a retried task reuses the run (and its checkpoints)."""
    values = {**rc.model_dump(), "instructions_dir": instructions_dir}
    keys = (
        "base_model",
        "instructions_dir",
        "num_workers",
        "zero_stage",
        "bf16",
        "micro_batch_size",
        "grad_accum",
        "lr",
        "weight_decay",
        "warmup_ratio",
        "grad_clip",
        "epochs",
        "max_steps",
        "seed",
    )
    digest = hashlib.sha256(json.dumps({k: values[k] for k in keys}, sort_keys=True, default=str).encode())
    instr = fsio.as_path(instructions_dir).name.split("-")[0]
    return f"{dataset}-{window_end}-{instr}-{digest.hexdigest()[:8]}"


def deepspeed_config(spec: FinetuneSpec, hidden_size: int) -> dict[str, Any]:
    """``configs/deepspeed/zero<stage>.json`` with its "auto" values filled in for this run."""
    rc = spec.recgen
    config = json.loads((CONFIG_DIR / "deepspeed" / f"zero{rc.zero_stage}.json").read_text())
    config["train_micro_batch_size_per_gpu"] = rc.micro_batch_size
    config["gradient_accumulation_steps"] = rc.grad_accum
    config["train_batch_size"] = spec.global_batch
    config["gradient_clipping"] = rc.grad_clip
    config["bf16"] = {"enabled": rc.bf16}
    zero = config["zero_optimization"]
    auto = {  # the values HF Trainer derives from the hidden size (fixed 2e8-element buckets cost GBs)
        "reduce_bucket_size": hidden_size * hidden_size,
        "allgather_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in list(zero.items()):
        if value == "auto":
            zero[key] = auto[key]
    if not rc.use_gpu:
        zero["overlap_comm"] = False  # no side streams on CPU
    return config


def total_steps(spec: FinetuneSpec, n_rows: int) -> int:
    if spec.recgen.max_steps:
        return spec.recgen.max_steps
    return max(1, math.ceil(spec.recgen.epochs * n_rows / spec.global_batch))


def worker_config(spec: FinetuneSpec, settings: Settings) -> dict[str, Any]:
    """The plain dict every worker receives (picklable, no settings objects): the run's ``recgen``
    settings as they are (``recgen``, ``RecgenConfig.model_dump()``) and what this run computed."""
    from transformers import AutoConfig

    from llmcf_core.llm.models import resolve_model

    rc = spec.recgen
    try:
        model_dir = resolve_model(rc.base_model, settings.home)
    except FileNotFoundError as exc:
        raise InvalidArgument(str(exc)) from None
    manifest = storage.read_manifest(spec.instructions_dir)
    if manifest is None:
        raise InvalidArgument(f"{spec.instructions_dir} is not a published instruction artifact")
    n_rows = int(manifest["rows"])
    if n_rows < 1:
        raise InvalidArgument(f"{spec.instructions_dir} has no rows")
    steps = total_steps(spec, n_rows)
    hidden = int(getattr(AutoConfig.from_pretrained(model_dir), "hidden_size", 1024))
    metadata = {
        "version": spec.version,
        "run_name": spec.version,
        "dataset": spec.dataset,
        "base_model": rc.base_model,
        "base_model_dir": str(model_dir),
        "instructions": {
            "path": str(spec.instructions_dir),
            "version": manifest.get("version"),
            "window": manifest.get("window"),
            "mix": (manifest.get("spec") or {}).get("mix"),
            "max_length": (manifest.get("spec") or {}).get("max_length"),
            "counts": manifest.get("counts"),
        },
        "window_end": spec.window_end.isoformat(),
        "train": {
            "workers": rc.num_workers,
            "use_gpu": rc.use_gpu,
            "zero_stage": rc.zero_stage,
            "bf16": rc.bf16,
            "micro_batch_size": rc.micro_batch_size,
            "grad_accum": rc.grad_accum,
            "global_batch": spec.global_batch,
            "lr": rc.lr,
            "schedule": "cosine",
            "warmup_ratio": rc.warmup_ratio,
            "grad_clip": rc.grad_clip,
            "epochs": rc.epochs,
            "total_steps": steps,
            "examples": n_rows,
            "optimizer": "torch.optim.AdamW",
        },
        "versions": _library_versions(),
    }
    return {
        "recgen": rc.model_dump(),
        "model_dir": str(model_dir),
        "data_file": str(storage.part_file(spec.instructions_dir, manifest)),
        "export_dir": str(registry.candidate_dir(settings.home, spec.version)),
        "total_steps": steps,
        "warmup_steps": int(round(rc.warmup_ratio * steps)),
        "log_every": spec.log_every,
        "fail_after_step": spec.fail_after_step,
        "torch_extensions_dir": torch_extensions_dir(),
        "run_dir": _run_dir(spec, settings),
        "ds_config": deepspeed_config(spec, hidden),
        "metadata": metadata,
    }


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "deepspeed", "ray", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def storage_path(spec: FinetuneSpec, settings: Settings) -> str:
    return spec.recgen.storage_path or str(registry.runs_dir(settings.home))


def _run_dir(spec: FinetuneSpec, settings: Settings) -> str:
    """The run folder (a path or a URL), scanned by the workers for unregistered checkpoints."""
    return str(fsio.as_path(storage_path(spec, settings)) / spec.version)


def finetune(settings: Settings, spec: FinetuneSpec) -> dict[str, Any]:
    """Train (or resume, or reuse) the candidate model of ``spec.version``; returns its metadata summary."""
    published = registry.version_dir(settings.home, spec.version)
    if registry.is_model_dir(published):
        log.info("version %s is already published at %s: nothing to train", spec.version, published)
        return _summary(spec, published, reused=True)
    cfg = worker_config(spec, settings)
    candidate = fsio.as_path(cfg["export_dir"])
    done = registry.read_metadata(candidate)
    if done and done.get("final_step") == cfg["total_steps"] and done.get("run_name") == spec.version:
        log.info("candidate %s already finished (%d steps): reusing it", candidate, done["final_step"])
        return _summary(spec, candidate, reused=True)

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", cfg["torch_extensions_dir"])
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from llmcf_core.llm.sft_worker import train_loop_per_worker
    from llmcf_core.raycompute import ensure_ray

    ensure_ray(settings.ray.local_num_cpus, dashboard=True)  # Ray Train needs the State API
    rc = spec.recgen
    resources = {"CPU": rc.cpus_per_worker}
    if rc.use_gpu:
        resources["GPU"] = 1
    run_storage, run_fs = fsio.ray_storage(storage_path(spec, settings))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(
            num_workers=rc.num_workers, use_gpu=rc.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if rc.use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.version,
            storage_path=run_storage,
            storage_filesystem=run_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=rc.keep_checkpoints),
            failure_config=FailureConfig(max_failures=rc.max_failures),
        ),
    )
    log.info(
        "fine-tuning %s: %d workers, ZeRO-%d, %d steps",
        spec.version,
        rc.num_workers,
        rc.zero_stage,
        cfg["total_steps"],
    )
    trainer.fit()
    if not registry.is_model_dir(candidate):
        raise RuntimeError(f"training finished but no model was exported to {candidate}")
    return _summary(spec, candidate, reused=False)


def _summary(spec: FinetuneSpec, folder: Any, *, reused: bool) -> dict[str, Any]:
    meta = registry.read_metadata(folder) or {}
    losses = meta.get("losses") or []
    segments = meta.get("segments") or []
    return {
        "version": spec.version,
        "path": str(folder),
        "reused": reused,
        "final_step": meta.get("final_step"),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "resumed_from_step": segments[-1]["resumed_from_step"] if segments else None,
        "tokens_per_s": segments[-1].get("tokens_per_s") if segments else None,
        "peak_memory_mb_per_worker": segments[-1].get("peak_memory_mb_per_worker") if segments else None,
    }
