"""CoT generation for one day partition: pool -> prompts -> blocks -> check -> publish.

1. Pool: the partition's train samples (a deterministic fraction of them if configured).
2. Skip what exists: rows of the published version and of committed blocks are kept; only pool
   samples without a successful row are generated (failed rows are retried unless
   ``retry_failed`` is off). A killed run therefore redoes only unfinished blocks, and a rerun of
   a finished partition generates nothing.
3. Prompts are rendered in the driver (``prompt.py``, same code for both backends); a prompt
   that cannot be built (unknown item, too long) becomes a failed row without reaching a model.
4. Generation streams through Ray Data (transformers actor pool, or vLLM); the driver groups the
   candidates of each block, keeps the best per sample (``score.py``) and commits the block.
5. The merged table is checked (GX suite ``cot``); a failure quarantines the failing rows and
   raises :class:`DataCheckFailed` (committed blocks stay for the rerun). Otherwise it is
   published atomically into ``cot/dt=D/<model_version>__<prompt_version>/`` and the blocks are
   removed. ``cot/CURRENT`` is not touched: only a promotion moves it (``retrieval.promote``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from llmcf_core import layout, storage
from llmcf_core.config import CotConfig, Settings
from llmcf_core.cot import versions as cot_versions
from llmcf_core.cot.backend import resolve_backend, vllm_importable
from llmcf_core.cot.blocks import BlockStore, empty_table, group_blocks, merge_rows, to_table
from llmcf_core.cot.check import check_cot
from llmcf_core.cot.pool import select_pool
from llmcf_core.cot.prompt import PromptBuilder, effective_prompt_version, template, tokenizer_markers
from llmcf_core.cot.score import FINISH_ERROR, Candidate, best_of
from llmcf_core.layout import COT, DataPaths, InvalidArgument
from llmcf_core.quality.publish import publish_checked, reject

log = logging.getLogger(__name__)

# Resilience drill / tests: the process SIGKILLs itself after committing this many blocks.
KILL_AFTER_BLOCKS_ENV = "LLMCF_COT_KILL_AFTER_BLOCKS"


@dataclass
class CotResult:
    dataset: str
    partition: str
    path: str
    model: str
    model_version: str
    prompt_version: str
    backend: str
    pool: int
    generated: int  # samples sent to generation in this run
    reused: int  # samples kept from the published version or committed blocks
    failed: int  # rows recorded as failed in the published table
    resumed_blocks: int  # committed blocks found at start
    new_blocks: int
    generated_tokens: int
    generation_s: float
    changed: bool
    checks: dict[str, Any] = field(default_factory=dict)
    # the day's wall seconds in its call: its own preparation, check and publish, plus its share of
    # the shared part (engine, model call) by generated tokens, as ``generation_s``; the days of one
    # call sum to the call's seconds
    day_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tokens_per_s"] = (
            round(self.generated_tokens / self.generation_s, 2) if self.generation_s else None
        )
        # what the run wrote, as the later stages take it (--cot-version MODEL__PROMPT)
        out["cot_version"] = layout.CotVersion(self.model_version, self.prompt_version).folder
        return out


class BlockCommitter:
    """Collects candidate rows per block; when a block is complete, keeps the best and commits it."""

    def __init__(
        self,
        store: BlockStore,
        plan: pd.DataFrame,
        *,
        n_candidates: int,
        model_version: str,
        prompt_version: str,
        label_conditioned: bool,
        min_chars: int,
        forbidden: list[str],
    ) -> None:
        self.store = store
        self.n_candidates = n_candidates
        self.const = {"model_version": model_version, "prompt_version": prompt_version}
        self.best_kwargs = {
            "label_conditioned": label_conditioned,
            "min_chars": min_chars,
            "forbidden": forbidden,
        }
        self.members = {int(b): group for b, group in plan.groupby("block")}
        ok = plan["prompt_error"].isna()
        self.expected = (ok.groupby(plan["block"]).sum() * n_candidates).astype(int).to_dict()
        self.pending: dict[int, list[pd.DataFrame]] = defaultdict(list)
        self.received: dict[int, int] = defaultdict(int)
        self.committed: list[int] = []
        self.generated_tokens = 0
        kill = os.environ.get(KILL_AFTER_BLOCKS_ENV, "").strip()
        self.kill_after = int(kill) if kill else None

    def commit_ready(self) -> None:
        for block, expected in sorted(self.expected.items()):
            if block not in self.committed and self.received[block] >= expected:
                self._commit(block)

    def add(self, candidates: pd.DataFrame) -> None:
        for block, group in candidates.groupby("block"):
            block = int(block)
            self.pending[block].append(group)
            self.received[block] += len(group)
        self.commit_ready()

    def finish(self) -> None:
        self.commit_ready()
        missing = sorted(set(self.expected) - set(self.committed))
        if missing:
            raise RuntimeError(f"generation ended with {len(missing)} incomplete blocks: {missing[:10]}")

    def _commit(self, block: int) -> None:
        members = self.members[block]
        pending = self.pending.pop(block, [])
        cands = pd.concat(pending, ignore_index=True) if pending else pd.DataFrame(columns=["sample_id"])
        by_sample = {sid: _candidates(group) for sid, group in cands.groupby("sample_id")}
        rows = []
        for m in members.itertuples(index=False):
            if isinstance(m.prompt_error, str):
                best = {"cot_text": None, "n_tokens": 0, "finish_reason": FINISH_ERROR, "score": None}
                best["error"] = m.prompt_error
            else:
                found = by_sample.get(m.sample_id, [])
                if len(found) < self.n_candidates:
                    raise RuntimeError(
                        f"block {block}: {m.sample_id} has {len(found)} of {self.n_candidates} candidates"
                    )
                self.generated_tokens += sum(c.n_tokens for c in found)
                best = best_of(found, label=int(m.label), terms=list(m.target_terms), **self.best_kwargs)
            rows.append({"sample_id": m.sample_id, "label": int(m.label), **self.const, **best})
        path = self.store.write(block, to_table(pd.DataFrame(rows)))
        self.committed.append(block)
        log.info("committed block %d (%d samples) -> %s", block, len(rows), path.name)
        if self.kill_after is not None and len(self.committed) >= self.kill_after:
            log.warning("%s=%d: killing this process now", KILL_AFTER_BLOCKS_ENV, self.kill_after)
            os.kill(os.getpid(), signal.SIGKILL)


def _candidates(group: pd.DataFrame) -> list[Candidate]:
    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    return [
        Candidate(int(c.candidate), text(c.text), int(c.n_tokens), str(c.finish_reason), text(c.error))
        for c in group.itertuples(index=False)
    ]


def _generator_kwargs(cfg: CotConfig, model_dir: str) -> dict[str, Any]:
    return {
        "model_dir": model_dir,
        "decoding": cfg.decoding.model_dump(),
        "dtype": cfg.dtype,
        "device": "cuda" if cfg.gpus_per_actor > 0 else "cpu",
        "torch_threads": cfg.torch_threads,
    }


@functools.lru_cache(maxsize=1)
def _local_generator(frozen_kwargs: str) -> Any:
    """One in-process generator per (model, decoding, dtype, device): a day-by-day replay loads it once."""
    from llmcf_core.cot.engine_hf import TransformersGenerator

    return TransformersGenerator(**json.loads(frozen_kwargs))


def _run_transformers(plan: pd.DataFrame, cfg: CotConfig, model_dir: str) -> Iterator[pd.DataFrame]:
    """Candidate rows from a Ray Data actor pool running batched generate().

    Below ``cfg.ray_min_prompts`` prompts the same generator class runs in this process instead,
    over batches of at most ``batch_size`` prompts (whole blocks joined up to ``batch_size``, then
    split into batches of ``batch_size``).
    """
    frames = [group for _, group in plan.loc[:, ["sample_id", "block", "prompt"]].groupby("block", sort=True)]
    kwargs = _generator_kwargs(cfg, model_dir)
    if len(plan) < cfg.ray_min_prompts:
        generator = _local_generator(json.dumps(kwargs, sort_keys=True))
        for frame in group_blocks(plan.loc[:, ["sample_id", "block", "prompt"]], cfg.batch_size):
            for start in range(0, len(frame), cfg.batch_size):
                yield generator(frame.iloc[start : start + cfg.batch_size].reset_index(drop=True))
        return

    import ray

    from llmcf_core.cot.engine_hf import TransformersGenerator
    from llmcf_core.raycompute import ensure_ray

    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_pandas(frames).map_batches(
        TransformersGenerator,
        fn_constructor_kwargs=kwargs,
        batch_size=cfg.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pandas")


def _eos_ids(tokenizer: Any, model_dir: str) -> list[int]:
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        value = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        value = None
    ids.update([value] if isinstance(value, int) else list(value or []))
    return sorted(int(i) for i in ids)


def candidates_stream(
    plan: pd.DataFrame, cfg: CotConfig, model_dir: str, tokenizer: Any
) -> Iterable[pd.DataFrame]:
    work = plan[plan["prompt_error"].isna()]
    if work.empty:
        return []
    if cfg.backend == "vllm":
        from llmcf_core.cot.engine_vllm import run_vllm

        return run_vllm(work, cfg, model_dir, _eos_ids(tokenizer, model_dir))
    return _run_transformers(work, cfg, model_dir)


def _read_published(folder) -> Any:
    return storage.read_partition(folder) if storage.is_published(folder) else empty_table()


@dataclass
class _DayWork:
    """One day partition of a CoT call: what is published, what is committed, what is left."""

    day: dt.date
    paths: DataPaths
    pool: pd.DataFrame
    published: Any
    store: BlockStore
    final_dir: Any
    todo: pd.DataFrame
    resumed_blocks: int
    new_blocks: int = 0
    generated_tokens: int = 0
    generation_s: float = 0.0
    own_s: float = 0.0  # preparation + check + publish of this day alone


def _generate(
    work: list[_DayWork],
    cfg: CotConfig,
    ref: cot_versions.ModelRef,
    tokenizer: Any,
    mv: str,
    pv: str,
    forbidden: list[str],
) -> None:
    """Prompts for every day's ``todo``, one generation stream over all of them, block commits per
    day. Each day's blocks are numbered in its own block store; the stream sees them renumbered
    across the days. Sets each day's new blocks, generated tokens and its share of the stream's
    seconds (in proportion to its generated tokens: the days decode in the same batches)."""
    items = storage.read_partition(work[0].paths.items, columns=["item_id", "title", "genres", "text"])
    builder = PromptBuilder(
        tokenizer,
        items.to_pandas(),
        prompt_version=cfg.prompt_version,
        label_conditioned=cfg.label_conditioned,
        history_items=cfg.prompt_history_items,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )
    plans, committers, owner = [], [], {}  # owner: stream block -> (day index, the day's own block)
    for i, w in enumerate(work):
        plan = builder.build(w.todo)
        first = w.store.next_index()
        plan["block"] = [first + j // cfg.block_size for j in range(len(plan))]
        committer = BlockCommitter(
            w.store,
            plan,
            n_candidates=cfg.decoding.candidates,
            model_version=mv,
            prompt_version=pv,
            label_conditioned=cfg.label_conditioned,
            min_chars=cfg.min_cot_chars,
            forbidden=forbidden,
        )
        committer.commit_ready()  # blocks whose prompts all failed need no model
        committers.append(committer)
        stream_plan = plan.copy()
        local = sorted(set(plan["block"]))
        ids = {b: len(owner) + n for n, b in enumerate(local)}
        owner |= {ids[b]: (i, b) for b in local}
        stream_plan["block"] = plan["block"].map(ids)
        plans.append(stream_plan)
    plan = pd.concat(plans, ignore_index=True)
    started = time.perf_counter()
    for candidates in candidates_stream(plan, cfg, str(ref.path), tokenizer):
        day_of = candidates["block"].map(lambda b: owner[int(b)][0])
        for i, part in candidates.groupby(day_of):
            part = part.copy()
            part["block"] = part["block"].map(lambda b: owner[int(b)][1])
            committers[int(i)].add(part)
    seconds = time.perf_counter() - started
    for committer in committers:
        committer.finish()
    tokens = sum(c.generated_tokens for c in committers)
    for w, committer in zip(work, committers, strict=True):
        w.new_blocks, w.generated_tokens = len(committer.committed), committer.generated_tokens
        w.generation_s = seconds * committer.generated_tokens / tokens if tokens else seconds / len(work)


def version_written(cfg: CotConfig, home: Any) -> str:
    """The CoT version (MODEL__PROMPT) a run with ``cfg`` writes (resolves the model, loads nothing)."""
    ref = cot_versions.resolve_cot_model(cfg.model, home)
    return layout.version_name(
        ref.model_version, effective_prompt_version(cfg.prompt_version, cfg.label_conditioned)
    )


def generate_cot_partition(
    settings: Settings,
    dataset: str,
    day: dt.date,
    *,
    cot: CotConfig | None = None,
) -> CotResult:
    """Generate, check and publish the CoTs of one day partition (see the module docstring)."""
    return generate_cot_partitions(settings, dataset, [day], cot=cot)[0]


def generate_cot_partitions(
    settings: Settings,
    dataset: str,
    days: list[dt.date],
    *,
    cot: CotConfig | None = None,
) -> list[CotResult]:
    """Generate the CoTs of several day partitions in one generation stream, then check and publish
    each day as ``generate_cot_partition`` does, oldest first.

    A decode step costs about the same for 2 prompts as for 64, so a small day (a 1% pool has a few
    samples a day) pays the full ``max_new_tokens`` steps alone; together the days share them.
    Each day keeps its own blocks, check and atomic publish: if one day's check fails, the days
    before it are published, its blocks and the later days' blocks stay committed for the rerun,
    and the error names the day."""
    if not days:
        return []
    cfg = cot or settings.cot
    cfg = cfg.model_copy(update={"backend": resolve_backend(cfg)})
    if cfg.backend == "vllm" and not vllm_importable():
        raise InvalidArgument(
            "cot backend vllm needs vLLM in this interpreter: run the job with the vLLM venv's Python "
            "(`make setup-vllm`; jobs.generate_cot and jobs.replay switch to it themselves)"
        )
    paths = DataPaths(settings.home, dataset)
    for day in days:
        samples_dir = paths.samples(day)
        if not storage.is_published(samples_dir):
            raise InvalidArgument(
                f"samples of {dataset} dt={day.isoformat()} are not published ({samples_dir}): run jobs.ingest"
            )
    if not storage.is_published(paths.items):
        raise InvalidArgument(f"items of {dataset} are not published ({paths.items}): run jobs.ingest")
    template(cfg.prompt_version)  # unknown versions fail before any work
    ref = cot_versions.resolve_cot_model(cfg.model, settings.home)
    mv, pv = ref.model_version, effective_prompt_version(cfg.prompt_version, cfg.label_conditioned)
    started = time.perf_counter()
    work = []
    for day in sorted(set(days)):
        prepared = time.perf_counter()
        work.append(_prepare_day(paths, day, cfg, mv, pv))
        work[-1].own_s = time.perf_counter() - prepared

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    forbidden = [*template(cfg.prompt_version).markers, *tokenizer_markers(tokenizer)]
    busy = [w for w in work if len(w.todo)]
    if busy:
        _generate(busy, cfg, ref, tokenizer, mv, pv, forbidden)
    results = []
    for w in work:
        checked = time.perf_counter()
        results.append(_check_and_publish(settings, dataset, w, cfg, ref, mv, pv, forbidden))
        w.own_s += time.perf_counter() - checked
    shared = time.perf_counter() - started - sum(w.own_s for w in work)
    tokens = sum(w.generated_tokens for w in work)
    for w, result in zip(work, results, strict=True):
        share = w.generated_tokens / tokens if tokens else 1 / len(work)
        result.day_s = round(w.own_s + shared * share, 3)
    return results


def _prepare_day(paths: DataPaths, day: dt.date, cfg: CotConfig, mv: str, pv: str) -> _DayWork:
    """The day's pool, and which of its samples still need a CoT (no published or committed row)."""
    store = BlockStore(layout.blocks_dir(paths, day, mv, pv))
    final_dir = layout.version_dir(paths, day, mv, pv)
    pool = select_pool(storage.read_partition(paths.samples(day)).to_pandas(), cfg.pool_fraction)
    published = _read_published(final_dir)
    resumed_blocks = len(store.files())
    existing = merge_rows(published, store.read())
    keep = existing if not cfg.retry_failed else existing[existing["error"].isna()]
    todo = pool[~pool["sample_id"].isin(set(keep["sample_id"]))]
    log.info(
        "cot %s dt=%s %s__%s: pool %d, reused %d, to generate %d (%d committed blocks)",
        paths.dataset,
        day.isoformat(),
        mv,
        pv,
        len(pool),
        len(pool) - len(todo),
        len(todo),
        resumed_blocks,
    )
    return _DayWork(day, paths, pool, published, store, final_dir, todo, resumed_blocks)


def _check_and_publish(
    settings: Settings,
    dataset: str,
    w: _DayWork,
    cfg: CotConfig,
    ref: cot_versions.ModelRef,
    mv: str,
    pv: str,
    forbidden: list[str],
) -> CotResult:
    """Merge the day's published and committed rows, check them (GX suite ``cot``), publish."""
    day, pool, store, final_dir = w.day, w.pool, w.store, w.final_dir
    paths, partition = w.paths, w.day.isoformat()
    rows = merge_rows(w.published, store.read())
    rows = rows.set_index("sample_id").reindex(pool["sample_id"]).reset_index()
    missing = rows["model_version"].isna()
    if missing.any():  # cannot happen unless a block was lost: fail retryably, keep the blocks
        raise RuntimeError(
            f"{int(missing.sum())} pool samples have no CoT row, e.g. {rows['sample_id'][missing].iloc[0]}"
        )
    table = to_table(rows)
    frame = table.to_pandas()
    report = check_cot(
        frame,
        dataset=dataset,
        partition=day,
        pool_labels=dict(zip(pool["sample_id"], pool["label"].astype(int), strict=True)),
        model_version=mv,
        prompt_version=pv,
        max_new_tokens=cfg.decoding.max_new_tokens,
        min_chars=cfg.min_cot_chars,
        max_failure_rate=cfg.max_failure_rate,
        max_failed_rows=cfg.max_failed_rows,
        forbidden=forbidden,
    )
    quarantine_dir = paths.quarantine(COT, day)
    if not report.success:
        log.error(
            "cot check failed: quarantining the failing rows at %s; committed blocks kept", quarantine_dir
        )
        reject(frame, report, quarantine_dir, limit=settings.quality.quarantine_max_rows)

    failed = int(frame["error"].notna().sum())
    published_result = publish_checked(
        table,
        final_dir,
        report,
        {
            "dataset": dataset,
            "partition": partition,
            "model": ref.spec,
            "model_version": mv,
            "prompt_version": pv,
            "label_conditioned": cfg.label_conditioned,
            "pool_fraction": cfg.pool_fraction,
            "backend": cfg.backend,
            "decoding": cfg.decoding.model_dump(),
            "failed_rows": failed,
        },
        clear=[quarantine_dir],
    )
    store.clear()
    return CotResult(
        dataset=dataset,
        partition=partition,
        path=str(published_result.path),
        model=ref.spec,
        model_version=mv,
        prompt_version=pv,
        backend=cfg.backend,
        pool=len(pool),
        generated=len(w.todo),
        reused=len(pool) - len(w.todo),
        failed=failed,
        resumed_blocks=w.resumed_blocks,
        new_blocks=w.new_blocks,
        generated_tokens=w.generated_tokens,
        generation_s=round(w.generation_s, 3),
        changed=published_result.changed,
        checks={"cot": report.success},
    )
