"""Training: one loop, run in-process (``workers=0``) or by Ray Train on N DDP workers.

``fit(io, tables, run)`` is the loop every worker runs: Adam (paper settings), one pass over the
worker's share of the train rows per epoch, validation after each epoch (AUC for ranking, NDCG@10
for next item; every rank evaluates its share, the predictions are gathered), early stopping
after ``patience`` epochs without improvement, a checkpoint per epoch, then the test metrics of the
best epoch's weights. ``io`` hides where it runs:

- ``LocalIO``: this process; a checkpoint file in the run folder.
- ``RayIO``: a Ray Train worker; rows come from its Ray Data shard (``get_dataset_shard``), the
  model is wrapped in DDP (gloo on CPU), checkpoints go through ``ray.train.report`` (rank 0
  writes them) and come back from ``ray.train.get_checkpoint()`` when a run with the same name and
  storage path is started again (Ray Train V2 restores the run), which is how resume works.

``train(...)`` is the driver: assemble the data, pick the version, skip if that version exists,
run the loop, write the model folder. ``jobs.train_rec`` is a thin CLI over it.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llmcf_core import fsio, raycompute
from llmcf_core.config import RecModelConfig
from llmcf_core.layout import InvalidArgument
from llmcf_core.rec import baselines, registry
from llmcf_core.rec import metrics as M
from llmcf_core.rec.backbones import RecModel, SequentialModel, build_model, model_class
from llmcf_core.rec.dataset import RecTables, apply_control, load_tables
from llmcf_core.rec.spec import VARIANTS, needs_neighbors, uses_icl, uses_text

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class RunSpec:
    """Everything the loop needs besides the data (picklable: it travels to Ray workers)."""

    model: str
    variant: str
    seed: int
    hp: RecModelConfig  # rec.model with the backbone's lr override (RecConfig.model_for)
    batch_size: int
    eval_batch_size: int
    max_epochs: int
    patience: int
    threads: int = 1

    def settings_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hp"] = self.hp.model_dump(mode="json")  # the saved model's meta["hparams"]
        # off (the default), or a variant without the ICT: versions stay as before the setting
        if not out["hp"]["ict_dropout"] or not uses_icl(self.variant):
            del out["hp"]["ict_dropout"]
        if uses_icl(self.variant):  # starts from the base's weights (build_model): a new version
            # also the widened layers' base columns and a zero ICT gate, i.e. the base's function
            # (sequential backbones before their gate: "shared-with-base")
            out["init"] = "base-function"
        return out


# --------------------------------------------------------------------------------------------
# Where the loop runs
# --------------------------------------------------------------------------------------------


class LoopIO(Protocol):
    rank: int
    world: int
    device: torch.device

    def train_rows(self, epoch: int) -> Iterable[np.ndarray]: ...
    def wrap(self, model: RecModel) -> torch.nn.Module: ...
    def gather(self, obj: Any) -> list[Any]: ...
    def load_state(self) -> dict[str, Any] | None: ...
    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...


class LocalIO:
    """This process alone; the checkpoint is ``<run_dir>/state.pt`` (replaced atomically)."""

    rank, world = 0, 1
    device = torch.device("cpu")

    def __init__(self, run_dir: Path, rows: np.ndarray, batch_size: int, seed: int) -> None:
        self.run_dir, self.rows, self.batch_size, self.seed = fsio.as_path(run_dir), rows, batch_size, seed
        self.reports: list[dict[str, Any]] = []

    def train_rows(self, epoch: int) -> Iterator[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        for i in range(0, len(order), self.batch_size):
            yield order[i : i + self.batch_size]

    def wrap(self, model: RecModel) -> torch.nn.Module:
        return model

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def load_state(self) -> dict[str, Any] | None:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        fsio.write_bytes_atomic(self.run_dir / STATE_FILE, buffer.getvalue())
        self.reports.append(metrics)


class RayIO:
    """Inside a Ray Train worker (TorchTrainer): Ray Data shard, DDP, ray.train checkpoints."""

    def __init__(self, run: RunSpec) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.shard = ray.train.get_dataset_shard("train")
        self.run = run

    def train_rows(self, epoch: int) -> Iterator[np.ndarray]:
        batches = self.shard.iter_batches(
            batch_size=self.run.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=max(4 * self.run.batch_size, 10_000),
            local_shuffle_seed=self.run.seed * 1_000 + epoch,
        )
        for batch in batches:
            yield batch["row"]

    def wrap(self, model: RecModel) -> torch.nn.Module:
        import ray.train.torch

        # The item text/genre buffers never change: no need to broadcast them every step.
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def load_state(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with raycompute.checkpoint_directory(checkpoint, prefix=f"rec-resume-r{self.rank}-") as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if self.rank == 0:
                torch.save(state, Path(folder) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return batch if device.type == "cpu" else {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: RecModel,
    tables: RecTables,
    rows: np.ndarray,
    io: LoopIO,
    batch_size: int,
    values_out: dict[str, torch.Tensor] | None = None,
) -> dict | None:
    """Metrics on ``rows`` (None if empty); each rank scores ``rows[rank::world]``.

    ``values_out``: filled with the scored ``rows`` and their ``values`` (probabilities, or the
    target's 0-based rank for next item), as tensors (they travel in checkpoints).
    """
    if len(rows) == 0:
        return None
    was_training = model.training
    model.eval()
    mine = rows[io.rank :: io.world]
    parts = []
    for i in range(0, len(mine), batch_size):
        chunk = mine[i : i + batch_size]
        batch = _to(tables.batch(chunk), io.device)
        if isinstance(model, SequentialModel):
            scores = model.full_sort_predict(batch).cpu().numpy()  # (B, n_items)
            parts.append(M.target_ranks(scores, tables.item[chunk] - 1))
        else:
            parts.append(model.predict(batch).cpu().numpy())
    model.train(was_training)
    local = (mine, np.concatenate(parts) if parts else np.zeros(0))
    gathered = io.gather(local)
    all_rows = np.concatenate([g[0] for g in gathered])
    values = np.concatenate([g[1] for g in gathered])
    if values_out is not None:
        order = np.argsort(all_rows, kind="stable")
        values_out["rows"] = torch.from_numpy(all_rows[order].astype(np.int64))
        values_out["values"] = torch.from_numpy(values[order].astype(np.float64))
    if isinstance(model, SequentialModel):
        return M.topk_metrics(values)
    return M.ranking_metrics(tables.label[all_rows], values)


def fit(
    io: LoopIO, tables: RecTables, run: RunSpec, warm_state: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Train with early stopping; returns the final state (best weights, metrics)."""
    torch.set_num_threads(max(1, run.threads))
    # Weight decay drives unused weights towards zero until they are denormal (below 1.2e-38), and
    # x86 cores compute with denormals tens of times slower: without this an xDeepFM epoch on one
    # core grew from 13 s to 150 s, DCNv2's from 4 s to 24 s. Flushing them to zero changes no metric
    # (docs/recommender.md, "Training"); the setting is process-wide and harmless elsewhere.
    torch.set_flush_denormal(True)
    model = build_model(run.model, tables.spec(), run.hp, run.variant, seed=run.seed)
    primary = M.PRIMARY_METRIC[model.task]
    optimizer = torch.optim.Adam(model.parameters(), lr=run.hp.lr, weight_decay=run.hp.weight_decay)

    state = io.load_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("resuming %s-%s at epoch %d", run.model, run.variant, state["epoch"])
    else:
        if warm_state is not None:
            model.load_state_dict(warm_state)
        state = {"epoch": 0, "best": -math.inf, "bad_epochs": 0, "best_model": None, "history": []}
        state |= {"done": False, "resumed_from": None}
    if state["epoch"] > 0 and state["epoch"] < run.max_epochs and not state["done"]:
        state["resumed_from"] = state["epoch"]
    model = model.to(io.device)
    net = io.wrap(model)  # DDP under Ray Train; calling it runs forward() == calculate_loss()
    valid_rows, test_rows = tables.rows("valid"), tables.rows("test")

    while not state["done"] and state["epoch"] < run.max_epochs:
        epoch = state["epoch"]
        torch.manual_seed(run.seed * 100_003 + epoch * 101 + io.rank)  # negatives: reproducible on resume
        model.train()
        started, losses = time.perf_counter(), []
        for rows in io.train_rows(epoch):
            terms = net(_to(tables.batch(rows), io.device))
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            losses.append((terms.total.item(), terms.task.item(), terms.recon.item()))
        valid = evaluate(model, tables, valid_rows, io, run.eval_batch_size) or {}
        score = float(valid.get(primary, float("nan")))
        loss = np.mean(losses, axis=0) if losses else np.full(3, np.nan)
        record = {
            "epoch": epoch + 1,
            "loss": float(loss[0]),
            "task_loss": float(loss[1]),
            "recon_loss": float(loss[2]),
            "valid": valid,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if score > state["best"] + 1e-6 or state["best_model"] is None:
            state["best"], state["bad_epochs"] = score, 0
            state["best_model"] = copy.deepcopy(model.state_dict())
            state["best_epoch"] = epoch + 1
        else:
            state["bad_epochs"] += 1
        state["history"].append(record)
        state["epoch"] = epoch + 1
        state["done"] = state["bad_epochs"] >= run.patience
        state["model"], state["optimizer"] = model.state_dict(), optimizer.state_dict()
        if io.rank == 0:
            log.info("epoch %d: loss %.4f valid %s %.4f", epoch + 1, record["loss"], primary, score)
        io.save(state, {"epoch": epoch + 1, "loss": record["loss"], f"valid_{primary}": score})

    model.load_state_dict(state["best_model"])
    best = state["history"][state["best_epoch"] - 1]
    test_values: dict[str, torch.Tensor] = {}
    final = {
        "primary_metric": primary,
        "valid": best["valid"],
        "test": evaluate(model, tables, test_rows, io, run.eval_batch_size, test_values),
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "stopped_early": state["bad_epochs"] >= run.patience,
        "resumed_from_epoch": state.get("resumed_from"),
        "history": state["history"],
    }
    state["final"] = final  # a later run with a larger max_epochs continues unless stopped early
    state["test_predictions"] = test_values
    io.save(state, {"final": True, "epoch": state["epoch"], f"valid_{primary}": best["valid"].get(primary)})
    return state


def _ray_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker."""
    import ray

    run: RunSpec = config["run"]
    tables: RecTables = ray.get(config["tables"])
    warm = ray.get(config["warm"]) if config.get("warm") is not None else None
    fit(RayIO(run), tables, run, warm)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    dataset: str
    model: str
    variant: str
    version: str
    path: Path
    metrics: dict[str, Any]
    trained: bool  # False: this version existed and was reused

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "dataset": self.dataset,
            "model": self.model,
            "variant": self.variant,
            "version": self.version,
            "path": str(self.path),
            "trained": self.trained,
            "primary_metric": m["primary_metric"],
            "valid": m["valid"],
            "test": m["test"],
            "best_epoch": m["best_epoch"],
            "epochs": m["epochs"],
        }


def version_id(
    dataset: str, until: dt.date | None, seed: int, fingerprint: str, run: RunSpec, extra: dict
) -> str:
    payload = json.dumps(
        {"data": fingerprint, "run": run.settings_dict(), **extra}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{dataset}-{until.isoformat() if until else 'all'}-s{seed}-{digest}"


def _text_marker(task: str, variant: str) -> dict[str, str]:
    """A run that reads item text gets a version of its own since the history's mean text embedding
    is summed by ``fields.mean_of_rows`` (2026-12-06): it sums in another order than the gather it
    replaced, so such runs differ in the last bits and then in their metrics (DIN base seed 0 test
    AUC 0.76076 -> 0.76059). Runs without text keep their versions: they compute exactly as before."""
    reads_text = uses_text(variant) if task == "ranking" else uses_icl(variant)
    return {"text_mean": "fused"} if reads_text else {}


def train(
    settings: Any,
    dataset: str,
    model: str,
    variant: str,
    *,
    seed: int = 0,
    until: dt.date | None = None,
    embedder: str | None = None,
    workers: int | None = None,
    max_epochs: int | None = None,
    force: bool = False,
    warm_start: bool = False,
    cot_version: str | None = None,
) -> TrainResult:
    """Train (or reuse) ``model``-``variant`` on ``dataset`` up to ``until``; write its folder.
    ``cot_version`` (MODEL__PROMPT): the pool and neighbours the llmcf* variants read (None: the
    dataset's promoted version)."""
    try:
        cls = model_class(model)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if variant not in VARIANTS:
        raise InvalidArgument(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    model = cls.__name__
    rec = settings.rec
    workers = rec.num_workers if workers is None else workers
    if workers < 0:
        raise InvalidArgument("workers must be >= 0")
    tables = load_tables(
        settings,
        dataset,
        until=until,
        embedder=embedder,
        task=cls.task,
        with_icl=needs_neighbors(variant),
        cot_version=cot_version,
    )
    apply_control(tables, variant, seed)
    if len(tables.rows("train")) == 0:
        raise InvalidArgument(f"no train samples for {dataset!r} up to {until or 'now'}")
    run = RunSpec(
        model=model,
        variant=variant,
        seed=seed,
        hp=rec.model_for(model),
        batch_size=rec.batch_size,
        eval_batch_size=rec.eval_batch_size,
        max_epochs=max_epochs or rec.max_epochs_overrides.get(model, rec.max_epochs),
        patience=rec.patience_overrides.get(model, rec.patience),
        threads=max(1, int(rec.cpus_per_worker)),  # more threads than CPUs thrash on a shared host
    )
    home = settings.home
    previous = registry.current_version(home, dataset, model, variant) if warm_start else None
    version = version_id(
        dataset,
        until,
        seed,
        tables.fingerprint,
        run,
        # format 2: the folder holds the test predictions (older versions are retrained, not reused)
        {"warm_from": previous, "workers": workers, "format": 2, **_text_marker(cls.task, variant)},
    )
    final = registry.version_dir(home, model, variant, version)
    if registry.is_complete(final) and not force:
        log.info("version %s exists: reusing it", version)
        return TrainResult(
            dataset, model, variant, version, final, registry.read_json(final / registry.METRICS_FILE), False
        )
    run_dir = registry.runs_dir(home, model, variant) / version
    if force:
        fsio.rmtree(run_dir)

    warm_state, warm_info = _warm_start(home, model, variant, previous, tables, run)
    started = time.perf_counter()
    if workers == 0:
        state = fit(LocalIO(run_dir, tables.rows("train"), run.batch_size, seed), tables, run, warm_state)
    else:
        state = _fit_ray(tables, run, run_dir, workers, rec, warm_state)
    seconds = round(time.perf_counter() - started, 3)
    counted = baselines.baselines_for(tables, cls.task)
    floor_valid = baselines.floor(counted, cls.task, "valid")
    floor_test = baselines.floor(counted, cls.task, "test")

    metrics = {
        **state["final"],
        "dataset": dataset,
        "model": model,
        "variant": variant,
        "version": version,
        "seed": seed,
        "until": tables.until,
        "embedder": tables.embedder,
        "cot_version": tables.cot_version,
        "workers": workers,
        "train_seconds": seconds,
        "valid_source": tables.valid_source,
        "data": tables.stats,
        "fingerprint": tables.fingerprint,
        "warm_start": warm_info,
        "baselines": counted,  # counting baselines on the same split (llmcf_core.rec.baselines)
        "baseline_floor": {
            "name": floor_valid[0] if floor_valid else None,
            "metric": state["final"]["primary_metric"],
            "valid": floor_valid[1] if floor_valid else None,
            "test": floor_test[1] if floor_test else None,
        },
    }
    meta = {
        "model": model,
        "variant": variant,
        "task": cls.task,
        "dataset": dataset,
        "version": version,
        "embedder": tables.embedder,
        "cot_version": tables.cot_version,  # the pool and neighbours trained on (None: no examples)
        "until": tables.until,
        "seed": seed,
        "hparams": run.hp.model_dump(mode="json"),  # modelio.stored_model_config reads it back
        "spec": tables.spec().sizes(),
        "genres": tables.genres,
        "fingerprint": tables.fingerprint,
        # categorical user side features: value vocabularies (index v + 1), for online scoring
        "user_features": {"names": tables.user_feature_names, "vocab": tables.user_feature_vocab},
    }
    from llmcf_core.rec.modelio import write_version

    write_version(
        final,
        state["best_model"],
        meta,
        tables.user_ids,
        tables.item_ids,
        metrics,
        _predictions(tables, state),
    )
    return TrainResult(dataset, model, variant, version, final, metrics, True)


def _predictions(tables: RecTables, state: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The test rows' scores with what the paired statistics need (``registry.PREDICTIONS_FILE``)."""
    values = state.get("test_predictions") or {}
    if "rows" not in values:
        return None
    rows = values["rows"].numpy()
    return {
        "sample_id": tables.sample_id[rows],
        "value": values["values"].numpy(),
        "label": tables.label[rows],
        "cold": tables.cold_users(rows),
    }


def _warm_start(
    home: Path, model: str, variant: str, previous: str | None, tables: RecTables, run: RunSpec
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    if previous is None:
        return None, None
    from llmcf_core.rec.modelio import load_version, warm_start_state

    old = load_version(registry.version_dir(home, model, variant, previous))
    fresh = build_model(model, tables.spec(), run.hp, run.variant)
    state, copied = warm_start_state(old, fresh, tables.user_ids, tables.item_ids)
    return state, {"from": previous, **copied}


def _fit_ray(
    tables: RecTables, run: RunSpec, run_dir: Path, workers: int, rec: Any, warm_state: dict | None
) -> dict[str, Any]:
    """Run ``fit`` on ``workers`` Ray Train workers; the run resumes if ``run_dir`` holds one."""
    import pyarrow as pa
    import ray
    import ray.data
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from llmcf_core.raycompute import ensure_ray

    ensure_ray(dashboard=True)  # Ray Train's placement-group cleaner needs the State API
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = np.random.default_rng(run.seed).permutation(tables.rows("train"))
    blocks = max(1, min(64, len(rows) // 4096))
    # In-memory blocks need no Ray Data tasks: nothing competes with the workers for CPUs.
    train_ds = ray.data.from_arrow([pa.table({"row": part}) for part in np.array_split(rows, blocks)])
    storage_path, storage_fs = fsio.ray_storage(run_dir.parent)
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={
            "run": run,
            "tables": ray.put(tables),
            "warm": ray.put(warm_state) if warm_state is not None else None,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=rec.use_gpu, resources_per_worker={"CPU": rec.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train_ds},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_dir} finished without a checkpoint")
    with raycompute.checkpoint_directory(result.checkpoint, prefix="rec-final-") as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
