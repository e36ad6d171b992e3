"""Experiment: every model x variant x seed on one dataset -> a Markdown table and a PNG plot.

Each run goes through ``train.train`` (so finished versions are reused and interrupted ones
resume). Every table starts with the counting baselines of its task on the same split and rows
(``llmcf_core.rec.baselines``: popularity, recent popularity and item transitions for next item;
item, user and history-label positive rates and their sum for CTR); a model below them is a bug to
find, and the table says which models do not beat the best one. The report gives the mean and
standard deviation over seeds of the test metrics (AUC and LogLoss for ranking models,
Hit/NDCG@{1,5,10} for next-item models), the primary metric on cold users (no train rows) and warm
users, the relative lift of each variant over the same backbone's ``base``, the paired
differences with bootstrap 95% intervals over test rows (``llmcf_core.rec.stats``: every variant
against ``base``, ``llmcf`` against ``base_notext`` and against each control), the inputs (data
fingerprint, CoT version, pool size, share of retrieved examples that have a CoT) and the exact
command.

Each run's test predictions are archived beside the table (``predictions/``: float32 scores per run,
the test rows' ids, labels and cold flags once), so a later call on another machine, where the
earlier runs' folders do not exist, still computes their paired intervals. An interval (or a cell's
cold / warm metric) that an earlier call computed from runs whose predictions are in neither place
is carried over from the earlier json while those runs are unchanged, marked as such in the table.

An arm (``arm=``, the job's ``--arm``) names the settings a call changed (its ``--set``s, e.g.
``rec.model.ict_dropout=0.5``): its runs form cells ``<variant>[<arm>]`` beside the plain variants,
and each is compared with ``base`` and with its plain variant, so a setting is judged against the
default on the same test rows, seeds and inputs.

Runs accumulate: the runs of an earlier call (``<dataset>.json`` in the output folder) are kept
unless this call re-runs the same model, variant (and arm) and seed, or ran the same kind of input (task,
with or without neighbours) on other data (then the old ones are stale and dropped); ``fresh=True``
starts over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmcf_core import fsio
from llmcf_core.layout import DataPaths, InvalidArgument
from llmcf_core.rec import registry, stats
from llmcf_core.rec.backbones import model_class
from llmcf_core.rec.metrics import TOP_KS
from llmcf_core.rec.png import bar_chart
from llmcf_core.rec.spec import needs_neighbors
from llmcf_core.rec.train import train

log = logging.getLogger(__name__)

CONTROLS = ("llmcf_k0", "llmcf_random", "llmcf_shufcot", "llmcf_recon", "llmcf_wocot", "llmcf_mean")
SUBSETS = ("all", "cold", "warm")
RANKING_COLUMNS = ("auc", "logloss")
SEQUENTIAL_COLUMNS = tuple(f"{m}@{k}" for k in TOP_KS for m in ("hit", "ndcg"))
LOWER_IS_BETTER = {"logloss"}


def cell_variant(run: dict[str, Any]) -> str:
    """The run's column in the table: its variant, or ``<variant>[<arm>]`` for an arm's run."""
    return f"{run['variant']}[{run['arm']}]" if run.get("arm") else run["variant"]


def plain_variant(cell: str) -> str:
    """The variant of a ``cell_variant``: ``llmcf[ictdrop0.5]`` -> ``llmcf``."""
    return cell.split("[", 1)[0]


@dataclass
class ExperimentReport:
    markdown: Path
    png: Path
    runs: Path
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"markdown": str(self.markdown), "png": str(self.png), "runs": str(self.runs), **self.summary}


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _lift(value: float, base: float, metric: str) -> float:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return float("nan")
    change = (value - base) / abs(base) * 100
    return -change if metric in LOWER_IS_BETTER else change


def input_kind(run: dict[str, Any]) -> tuple[str, bool]:
    """A run's kind of input: its task, and whether it reads retrieved examples. Runs of one kind
    share data (one fingerprint); merging, baselines and the table's inputs line go by it."""
    return run["task"], needs_neighbors(run["variant"])


def _cot_versions(runs: list[dict[str, Any]]) -> list[str]:
    """The CoT versions the runs read (only runs with examples read CoTs), sorted."""
    return sorted({r["cot_version"] for r in runs if needs_neighbors(r["variant"]) and r.get("cot_version")})


KIND_NAMES = {
    ("ranking", False): "ranking",
    ("ranking", True): "ranking with examples",
    ("sequential", False): "next item",
    ("sequential", True): "next item with examples",
}


def _fingerprints(runs: list[dict[str, Any]]) -> str:
    """The data fingerprint(s) of the table's runs, per kind of input when they differ (runs pair
    only within one fingerprint: item vectors differ in their last bits across CPU types)."""
    kinds: dict[str, set[str]] = {}
    for r in runs:
        kind = KIND_NAMES.get(input_kind(r), r["task"])
        kinds.setdefault(kind, set()).add(r["fingerprint"][:12])
    if len({p for prints in kinds.values() for p in prints}) == 1:
        return f"data fingerprint `{next(iter(kinds.values())).pop()}`"
    return "data fingerprints " + ", ".join(
        f"{kind} " + "/".join(f"`{p}`" for p in sorted(prints)) for kind, prints in kinds.items()
    )


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_experiment(
    settings: Any,
    dataset: str,
    models: list[str],
    variants: list[str],
    seeds: int | range,
    *,
    out_dir: Path,
    until: dt.date | None = None,
    embedder: str | None = None,
    workers: int | None = None,
    max_epochs: int | None = None,
    command: list[str] | None = None,
    fresh: bool = False,
    cot_version: str | None = None,
    arm: str | None = None,
    force: bool = False,
) -> ExperimentReport:
    """Train (or reuse: the same inputs and settings give the same version) each model x variant x
    seed, then merge the runs into the table at ``out_dir``. ``force`` retrains existing versions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = out_dir / f"{dataset}.json"
    runs: list[dict[str, Any]] = []
    trained = 0
    for model in models:
        for variant in variants:
            for seed in range(seeds) if isinstance(seeds, int) else seeds:
                result = train(
                    settings,
                    dataset,
                    model,
                    variant,
                    seed=seed,
                    until=until,
                    embedder=embedder,
                    workers=workers,
                    max_epochs=max_epochs,
                    cot_version=cot_version,
                    force=force,
                )
                trained += int(result.trained)
                m = result.metrics
                runs.append(
                    {
                        "model": result.model,
                        "variant": variant,
                        "seed": seed,
                        "version": result.version,
                        "task": model_class(model).task,
                        "valid": m["valid"],
                        "test": m["test"] or {},
                        "best_epoch": m["best_epoch"],
                        "epochs": m["epochs"],
                        "train_seconds": m["train_seconds"],
                        "data": m["data"],
                        "fingerprint": m["fingerprint"],
                        "embedder": m["embedder"],
                        "cot_version": m.get("cot_version"),
                        "valid_source": m["valid_source"],
                        # relative to $LLMCF_HOME: the table must not name one machine's paths
                        "folder": _relative(result.path, settings.home),
                        "command": command,
                        **({"arm": arm} if arm else {}),
                    }
                )
    reused = len(runs) - trained
    # The table is read after the training, and read, merged and written under a lock on its
    # folder: two calls adding runs to one table at once both keep their runs.
    with fsio.locked_dir(out_dir):
        earlier_table = {} if fresh else _earlier_table(runs_path)
        runs, dropped = merge_runs(earlier_table.get("runs", []), runs)
        shown = _computed_inputs(settings, dataset, runs, until, embedder, cot_version, earlier_table)
        md_path, png_path, summary = _write_table(
            settings, dataset, out_dir, runs, earlier_table, dropped, shown, command
        )
    return _report((md_path, png_path, runs_path), runs, summary, dropped, trained, reused)


def _report(
    paths: tuple[Path, Path, Path], runs: list, summary: dict, dropped: int, trained: int, reused: int
) -> ExperimentReport:
    """The call's report: the table's files (md, png, json), the table's runs and cells, and what
    this call trained and reused."""
    counts = {"runs": len(runs), "cells": len(summary), "dropped_stale_runs": dropped}
    return ExperimentReport(*paths, {**counts, "trained": trained, "reused": reused})


def render_table(
    settings: Any, dataset: str, *, out_dir: Path, command: list[str] | None = None
) -> ExperimentReport:
    """Rewrite the table at ``out_dir`` from its own json and archived test predictions, training
    nothing and reading no data: its runs, baselines and CoT report are kept as they are, the paired
    intervals and the Markdown are computed again (after a change of the table's statistics or
    layout, on a machine without the runs' data)."""
    runs_path = out_dir / f"{dataset}.json"
    if not runs_path.is_file():
        raise InvalidArgument(f"render: no table at {runs_path}")
    with fsio.locked_dir(out_dir):
        earlier_table = _earlier_table(runs_path)
        runs = earlier_table.get("runs", [])
        if not runs:
            raise InvalidArgument(f"render: no table with runs at {runs_path}")
        shown = TableInputs(
            earlier_table.get("baselines", {}),
            earlier_table.get("retrieval_baselines", {}),
            list(earlier_table.get("cot_quality") or []),
            dict(earlier_table.get("cot_quality_pools") or {}),
        )
        md_path, png_path, summary = _write_table(
            settings, dataset, out_dir, runs, earlier_table, 0, shown, command
        )
    return _report((md_path, png_path, runs_path), runs, summary, 0, 0, len(runs))


@dataclass(frozen=True)
class TableInputs:
    """What a table shows beside its runs: the counting baselines and the retrieved examples'
    baselines ({task: {split: {baseline: metrics}}}), the CoT-quality report's lines, and the
    report of each pool the runs read ({data fingerprint with examples: lines}) it is made from."""

    baselines: dict[str, dict[str, Any]]
    retrieval_baselines: dict[str, dict[str, Any]]
    cot_quality: list[str]
    cot_quality_pools: dict[str, list[str]] = field(default_factory=dict)


def _pools(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{data fingerprint: the kinds of input that read it} of the runs with examples: one entry per
    in-context pool the table's runs read (a pool rebuilt on another CPU type is another pool)."""
    pools: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: r["task"]):
        if needs_neighbors(r["variant"]):
            kind = KIND_NAMES.get(input_kind(r), r["task"])
            kinds = pools.setdefault(r["fingerprint"], [])
            if kind not in kinds:
                kinds.append(kind)
    return pools


def _embedder(runs: list[dict[str, Any]]) -> str | None:
    """The embedder of the runs with examples (their CoT vectors' and the report's)."""
    return next((r.get("embedder") for r in runs if needs_neighbors(r["variant"])), None)


def _earlier_cot_pools(earlier_table: dict[str, Any]) -> dict[str, list[str]]:
    """The earlier table's report per pool; a table written before reports were kept per pool has
    one report, of the pool its runs with examples read."""
    kept = {fp: lines for fp, lines in (earlier_table.get("cot_quality_pools") or {}).items() if lines}
    if kept:
        return kept
    lines = list(earlier_table.get("cot_quality") or [])
    return {fp: lines for fp in _pools(earlier_table.get("runs", []))} if lines else {}


def _compose_cot_quality(pools: dict[str, list[str]], reports: dict[str, list[str]]) -> list[str]:
    """The table's CoT section from the runs' ``_pools`` and each pool's report: the one pool's
    report, or each pool's with its kinds and fingerprint in the heading when runs of one table read
    different pools."""
    present = [fp for fp in pools if reports.get(fp)]
    if len(present) == 1:
        return list(reports[present[0]])
    lines: list[str] = []
    for fp in present:
        head, *rest = reports[fp]
        lines += [f"{head}: the pool of {' and '.join(pools[fp])} (data fingerprint `{fp[:12]}`)", *rest]
    return lines


def _computed_inputs(
    settings: Any,
    dataset: str,
    runs: list[dict[str, Any]],
    until: dt.date | None,
    embedder: str | None,
    cot_version: str | None,
    earlier_table: dict[str, Any],
) -> TableInputs:
    """The baselines and CoT reports computed from this home's data; a task or pool whose data here
    is not its runs' keeps the earlier table's (see ``_baselines``)."""
    counted, retrieval, home_pools = _baselines(
        settings, dataset, runs, until, embedder, cot_version, earlier_table
    )
    reports: dict[str, list[str]] = {}
    earlier = _earlier_cot_pools(earlier_table)
    here: list[str] | None = None
    pools = _pools(runs)
    for fp in pools:  # only runs with examples read CoTs
        if fp in home_pools or not earlier:
            if here is None:
                versions = _cot_versions(runs)
                version = versions[0] if len(versions) == 1 else None
                here = _cot_quality_lines(settings, dataset, version, embedder or _embedder(runs))
            reports[fp] = here
        elif fp in earlier:  # this home's CoTs are not the ones these runs read: keep their pool's report
            reports[fp] = earlier[fp]
    return TableInputs(counted, retrieval, _compose_cot_quality(pools, reports), reports)


def _write_table(
    settings: Any,
    dataset: str,
    out_dir: Path,
    runs: list[dict[str, Any]],
    earlier_table: dict[str, Any],
    dropped: int,
    shown: TableInputs,
    command: list[str] | None,
) -> tuple[Path, Path, dict[tuple[str, str], dict[str, Any]]]:
    """The table's json, PNG and Markdown from the merged runs and what the caller computed (or
    kept) to show beside them (under the folder's lock); reads the runs' test predictions (run folders
    or the table's archive), no dataset tables."""
    runs_path = out_dir / f"{dataset}.json"
    counted, retrieval, cot_quality = shown.baselines, shown.retrieval_baselines, shown.cot_quality
    summary = _summarise(runs)
    comparisons = _comparisons(runs, summary, settings.home, out_dir, earlier_table)
    fsio.write_text_atomic(
        runs_path,
        json.dumps(
            {
                "runs": runs,
                "baselines": counted,
                "retrieval_baselines": retrieval,
                "comparisons": comparisons,
                "cells": _cell_subsets(summary),
                "cot_quality": cot_quality,
                "cot_quality_pools": shown.cot_quality_pools,
            },
            indent=2,
            sort_keys=True,
            default=str,
        ),
    )
    png_path = out_dir / f"{dataset}.png"
    _plot(png_path, dataset, summary)
    md_path = out_dir / f"{dataset}.md"
    fsio.write_text_atomic(
        md_path,
        _markdown(
            settings,
            dataset,
            runs,
            summary,
            counted,
            comparisons,
            png_path.name,
            command,
            dropped,
            retrieval,
            cot_quality,
        ),
    )
    return md_path, png_path, summary


def _relative(folder: Any, home: Any) -> str:
    try:
        return str(Path(str(folder)).relative_to(str(fsio.as_path(home))))
    except ValueError:
        return str(folder)


def _earlier_table(path: Path) -> dict[str, Any]:
    """An earlier call's table (``<dataset>.json``): its runs, comparisons and cells' cold/warm."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        log.warning("%s is not JSON: starting the table over", path)
        return {}
    raw["runs"] = [r for r in raw.get("runs", []) if isinstance(r, dict) and "model" in r]
    return raw


def merge_runs(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Earlier runs plus new ones: a new run replaces the earlier one of the same model, variant and
    seed; an earlier run whose input kind (task, with or without neighbours) was re-run here on other
    data (another fingerprint) is stale and dropped. Returns the runs and how many were dropped."""

    fresh_prints: dict[tuple[str, bool], set[str]] = {}
    for r in new:
        fresh_prints.setdefault(input_kind(r), set()).add(r["fingerprint"])
    keys = {(r["model"], cell_variant(r), r["seed"]) for r in new}
    kept, dropped = [], 0
    for r in earlier:
        if (r["model"], cell_variant(r), r["seed"]) in keys:
            continue
        prints = fresh_prints.get(input_kind(r))
        if prints is not None and r.get("fingerprint") not in prints:
            dropped += 1
            continue
        kept.append(r)
    return kept + list(new), dropped


def _baselines(
    settings: Any,
    dataset: str,
    runs: list[dict[str, Any]],
    until: dt.date | None,
    embedder: str | None,
    cot_version: str | None,
    earlier: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], set[str]]:
    """({task: {split: {baseline: metrics}}}, the same for the retrieved examples, the fingerprints
    of this home's data with examples that runs read), on the tables the models of each task train on. A task
    with runs that read examples is loaded once, with the examples of the runs' CoT version, and
    gets both (``baselines.retrieval_baselines``).

    The tables must be the runs' data: where this home's data of a task has another fingerprint
    than the task's runs (runs made on another machine, whose item vectors differ in the last bits,
    or on a rebuilt pool), the ``earlier`` table's baselines of that task are kept; where this home
    has no pool for a task's runs with examples, the ``earlier`` table's retrieval baselines are."""
    from llmcf_core.rec import baselines
    from llmcf_core.rec.dataset import load_tables

    earlier = earlier or {}
    icl = [r for r in runs if needs_neighbors(r["variant"])]
    versions = _cot_versions(runs)
    version = cot_version or (versions[0] if len(versions) == 1 else None)
    icl_tasks = {r["task"] for r in icl}
    counted, retrieved, home_pools = {}, {}, set()
    for task in sorted({r["task"] for r in runs}):
        icl_tables = None
        if task in icl_tasks:
            try:
                icl_tables = load_tables(
                    settings, dataset, until=until, embedder=embedder, task=task, cot_version=version
                )
            except InvalidArgument as exc:  # the table still shows the runs; say why this part is missing
                log.warning("no retrieval baselines for %s %s: %s", dataset, task, exc)
        with_examples = icl_tables is not None
        kind = [r for r in runs if input_kind(r) == (task, with_examples)]
        tables = (
            icl_tables
            if icl_tables is not None
            else load_tables(settings, dataset, until=until, embedder=embedder, task=task, with_icl=False)
        )
        ours = tables.fingerprint in {r["fingerprint"] for r in kind}
        kept = task in earlier.get("baselines", {})
        if not ours and kept:
            log.warning(
                "%s %s: this home's data (fingerprint %s) is not the runs': keeping the table's baselines",
                dataset,
                task,
                tables.fingerprint[:12],
            )
            counted[task] = earlier["baselines"][task]
            if task in earlier.get("retrieval_baselines", {}):
                retrieved[task] = earlier["retrieval_baselines"][task]
            continue
        counted[task] = baselines.baselines_for(tables, task)
        if with_examples:
            retrieved[task] = baselines.retrieval_baselines(tables, task)
            if ours:
                home_pools.add(tables.fingerprint)
        elif task in icl_tasks and task in earlier.get("retrieval_baselines", {}):
            # no pool in this home (e.g. a call adding runs without examples on another machine): the
            # runs with examples come from the earlier table, and so do what their examples know
            retrieved[task] = earlier["retrieval_baselines"][task]
    return counted, retrieved, home_pools


def _summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        key = (run["model"], cell_variant(run))
        cells.setdefault(key, {"task": run["task"], "runs": []})["runs"].append(run)
    for cell in cells.values():
        cols = RANKING_COLUMNS if cell["task"] == "ranking" else SEQUENTIAL_COLUMNS
        cell["test"] = {c: _mean_std([r["test"].get(c, float("nan")) for r in cell["runs"]]) for c in cols}
        primary = "auc" if cell["task"] == "ranking" else "ndcg@10"
        cell["valid"] = _mean_std([r["valid"].get(primary, float("nan")) for r in cell["runs"]])
    return cells


# --------------------------------------------------------------------------------------------
# Paired statistics over the test rows (the runs' saved predictions)
# --------------------------------------------------------------------------------------------


PREDICTIONS_DIR = "predictions"


def _archive_key(run: dict[str, Any]) -> str:
    return f"{run['model']}-{run['variant']}-{run['version']}"


def _archive(out_dir: Path, run: dict[str, Any], ids: Any, value: Any, label: Any, cold: Any) -> None:
    """Keep a run's test predictions beside the table (``predictions/``): the run's scores
    (float32) and, once per set of test rows, the rows' ids, labels and cold flags, so a later call
    on another machine (another $LLMCF_HOME) still pairs this run's seeds with its own."""
    folder = out_dir / PREDICTIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n".join(map(str, ids)).encode())
    digest.update(np.asarray(label, dtype=np.int64).tobytes() + np.asarray(cold, dtype=bool).tobytes())
    rows = digest.hexdigest()[:16]  # content-addressed: the same rows, labels and flags share a file
    rows_path = folder / f"rows-{rows}.npz"
    if not rows_path.is_file():
        buf = io.BytesIO()
        np.savez_compressed(buf, sample_id=np.asarray(ids), label=np.asarray(label), cold=np.asarray(cold))
        fsio.write_bytes_atomic(rows_path, buf.getvalue())
    run_path = folder / f"{_archive_key(run)}.npz"
    if not run_path.is_file():  # a version's predictions never change
        buf = io.BytesIO()
        np.savez_compressed(buf, value=np.asarray(value, dtype=np.float32), rows=np.array(rows))
        fsio.write_bytes_atomic(run_path, buf.getvalue())


def _from_archive(out_dir: Path, run: dict[str, Any]) -> tuple[Any, Any, Any, Any] | None:
    path = out_dir / PREDICTIONS_DIR / f"{_archive_key(run)}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        value, rows = z["value"].astype(np.float64), str(z["rows"])
    rows_path = out_dir / PREDICTIONS_DIR / f"rows-{rows}.npz"
    if not rows_path.is_file():
        return None
    with np.load(rows_path, allow_pickle=False) as z:
        return z["sample_id"], value, z["label"], z["cold"]


class _Predictions:
    """Each run's test predictions, aligned on one task's test rows, resampled once per subset.

    Read from the run's folder under $LLMCF_HOME (and then archived beside the table), else from
    that archive (``out_dir/predictions``, written when the run was made on another machine)."""

    def __init__(self, runs: list[dict[str, Any]], home: Any, out_dir: Path | None = None) -> None:
        self.values: dict[tuple[str, str, int], np.ndarray] = {}
        self.ref: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # task: ids, labels, cold
        self.cache: dict[tuple, stats.Resampled] = {}
        self.missing: list[str] = []
        for r in sorted(runs, key=lambda r: (r["model"], cell_variant(r), r["seed"])):
            path = fsio.as_path(home) / (r.get("folder") or "") / registry.PREDICTIONS_FILE
            if r.get("folder") and path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    ids, value, label, cold = z["sample_id"], z["value"], z["label"], z["cold"]
                if out_dir is not None:
                    _archive(out_dir, r, ids, value, label, cold)
                    value = value.astype(np.float32).astype(np.float64)  # as a later call reads it
            else:
                found = _from_archive(out_dir, r) if out_dir is not None else None
                if found is None:
                    self.missing.append(f"{r['model']}-{cell_variant(r)} seed {r['seed']}")
                    continue
                ids, value, label, cold = found
            task = r["task"]
            if task not in self.ref:
                self.ref[task] = (ids, label, cold)
            ref_ids = self.ref[task][0]
            if not np.array_equal(ids, ref_ids):  # other rows (another data version): align or skip
                pos = {sid: i for i, sid in enumerate(ids)}
                at = np.array([pos.get(sid, -1) for sid in ref_ids])
                if (at < 0).any():
                    self.missing.append(f"{r['model']}-{cell_variant(r)} seed {r['seed']} (other test rows)")
                    continue
                value = value[at]
            self.values[(r["model"], cell_variant(r), r["seed"])] = value

    def seeds(self, model: str, variant: str) -> list[int]:
        return sorted(s for (m, v, s) in self.values if m == model and v == variant)

    def resampled(
        self, task: str, model: str, variant: str, seeds: list[int], subset: str
    ) -> list[stats.Resampled]:
        _, labels, cold = self.ref[task]
        mask = None if subset == "all" else (cold if subset == "cold" else ~cold)
        out = []
        for seed in seeds:
            key = (model, variant, seed, subset)
            if key not in self.cache:
                self.cache[key] = stats.resample_metric(
                    task, labels, self.values[(model, variant, seed)], mask=mask
                )
            out.append(self.cache[key])
        return out


def _pairs(variants: list[str]) -> list[tuple[str, str]]:
    """(A, B) comparisons of one backbone: every variant against base, llmcf against base_notext
    (the paper's comparison) and against each control, an arm ``v[arm]`` against its variant ``v``."""
    out = [(v, "base") for v in variants if v != "base" and "base" in variants]
    if "llmcf" in variants:
        out += [("llmcf", b) for b in ("base_notext", *CONTROLS) if b in variants]
    out += [(v, plain_variant(v)) for v in variants if plain_variant(v) != v and plain_variant(v) in variants]
    return list(dict.fromkeys(out))


def _comparisons(
    runs: list[dict[str, Any]],
    summary: dict[tuple[str, str], dict[str, Any]],
    home: Any,
    out_dir: Path | None = None,
    earlier: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The paired comparisons of the table, and each cell's cold / warm primary metric (set on the
    cells of ``summary``), from the runs' test predictions.

    Where fewer seeds can be paired now than an earlier call of this table paired (``earlier``: its
    json), because the earlier runs' predictions are neither under this $LLMCF_HOME nor archived,
    and those runs are unchanged (same version for each seed of both cells), the earlier row is
    carried over (``carried``) rather than lost."""
    preds = _Predictions(runs, home, out_dir)
    earlier = earlier or {}
    now, then = _versions(runs), _versions(earlier.get("runs", []))
    old_rows = {(c["model"], c["a"], c["b"]): c for c in earlier.get("comparisons", []) if "all" in c}
    out = []
    models = list(dict.fromkeys(m for m, _ in summary))
    for model in models:
        variants = [v for (m, v) in summary if m == model]
        task = summary[(model, variants[0])]["task"]
        for a, b in _pairs(variants):
            seeds = sorted(set(preds.seeds(model, a)) & set(preds.seeds(model, b)))
            if task not in preds.ref:
                seeds = []
            old = old_rows.get((model, a, b))
            if _carries(old, seeds, model, (a, b), now, then):
                out.append({**old, "carried": True})
                continue
            row: dict[str, Any] = {"model": model, "task": task, "a": a, "b": b, "seeds": seeds}
            if not seeds:
                # Predictions live in the run folders under $LLMCF_HOME and in the table's archive
                # (predictions/); a run known from neither keeps its metrics but not its intervals.
                row["missing"] = "no paired test predictions (not under this LLMCF_HOME nor archived)"
                out.append(row)
                continue
            for subset in SUBSETS:
                row[subset] = stats.interval(
                    preds.resampled(task, model, a, seeds, subset),
                    preds.resampled(task, model, b, seeds, subset),
                ).to_dict()
            out.append(row)
    old_cells = {(c["model"], c["variant"]): c for c in earlier.get("cells", [])}
    for cell_key, cell in summary.items():  # cold / warm primary metric per cell
        model, variant = cell_key
        seeds = preds.seeds(model, variant) if cell["task"] in preds.ref else []
        old = old_cells.get(cell_key)
        if _carries(old, seeds, model, (variant,), now, then):
            cell["subsets"] = {k: tuple(v) for k, v in old["subsets"].items()}
            cell["subset_rows"], cell["subset_seeds"] = old["subset_rows"], old["seeds"]
            continue
        if not seeds:
            continue
        cell["subsets"] = {
            subset: _mean_std([r.point for r in preds.resampled(cell["task"], model, variant, seeds, subset)])
            for subset in ("cold", "warm")
        }
        cold = preds.ref[cell["task"]][2]
        cell["subset_rows"] = {"cold": int(cold.sum()), "warm": int((~cold).sum())}
        cell["subset_seeds"] = seeds
    if preds.missing:
        log.warning("runs without test predictions (no intervals): %s", ", ".join(preds.missing))
    return out


def _versions(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], str]:
    return {(r["model"], cell_variant(r), r["seed"]): r["version"] for r in runs}


def _carries(
    old: dict[str, Any] | None,
    seeds: list[int],
    model: str,
    cells: tuple[str, ...],
    now: dict[tuple[str, str, int], str],
    then: dict[tuple[str, str, int], str],
) -> bool:
    """Whether an earlier row or cell (``old``) is carried over: it paired more seeds than ``seeds``
    (those pairable now), and every run it was computed from (each of its seeds of each cell) is
    still in the table as the same version."""
    if old is None or len(old["seeds"]) <= len(seeds):
        return False
    keys = [(model, c, s) for c in cells for s in old["seeds"]]
    return bool(keys) and all(k in then and now.get(k) == then[k] for k in keys)


def _cell_subsets(summary: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cell's cold / warm primary metric and the seeds it is over, kept in the json so a later
    call without these runs' predictions can carry it."""
    return [
        {
            "model": model,
            "variant": variant,
            "seeds": cell["subset_seeds"],
            "subsets": cell["subsets"],
            "subset_rows": cell["subset_rows"],
        }
        for (model, variant), cell in summary.items()
        if "subsets" in cell
    ]


def _markdown(
    settings: Any,
    dataset: str,
    runs: list[dict[str, Any]],
    summary: dict[tuple[str, str], dict[str, Any]],
    counted: dict[str, dict[str, Any]],
    comparisons: list[dict[str, Any]],
    png_name: str,
    command: list[str] | None,
    dropped: int = 0,
    retrieval: dict[str, dict[str, Any]] | None = None,
    cot_quality: list[str] | None = None,
) -> str:
    first = next((r for r in runs if "pool_rows" in r["data"]), runs[0])  # an llmcf run knows the pool
    data = first["data"]
    with_icl = any(needs_neighbors(r["variant"]) for r in runs)
    versions = _cot_versions(runs)
    cot = (
        ", ".join(versions) or _current_cot(settings, dataset) if with_icl else "none (no run reads examples)"
    )
    lines = [
        f"# Results: {dataset}",
        "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`{shlex.join(command) if command else 'python -m jobs.experiment'}`.",
        "",
        "Test metrics, mean ± std over the seeds of each cell (the epochs column has one entry per "
        "seed); lift = relative change of the mean against the same backbone's `base` (for LogLoss, "
        "a reduction counts as positive). Cold = test rows of users with no train rows, warm = the "
        "others. Variants: `base` backbone with the item text fields (ranking; sequential backbones "
        "are id-based), `base_notext` without them (the paper's base), `llmcf` backbone + ICT, "
        "controls `llmcf_k0` (ICT without examples), `llmcf_random` (random earlier examples, same "
        "labels), `llmcf_shufcot` (CoTs permuted within a label), `llmcf_recon` (trained with the "
        "reconstruction loss, ICT output cut: scores as its backbone), `llmcf_wocot`, `llmcf_mean`; "
        "`<variant>[<arm>]`: the variant trained with the settings its arm names (the `--set`s in the "
        "run's command).",
        "",
        f"Runs accumulate over calls of `jobs.experiment` (each run's command is in {dataset}.json)"
        + (f"; {dropped} stale run(s) on other data were dropped by this call." if dropped else "."),
        "",
        "Inputs: "
        f"embedder `{first['embedder']}`, CoT version `{cot}`, {_fingerprints(runs)}, "
        f"rows {data.get('rows')}, in-context pool {data.get('pool_rows', 'n/a')} examples, "
        f"share of retrieved examples with a CoT {data.get('example_share_with_cot', 'n/a')}, "
        f"validation from `{first['valid_source']}`.",
        "",
    ]
    for task, cols in (("ranking", RANKING_COLUMNS), ("sequential", SEQUENTIAL_COLUMNS)):
        cells = {k: v for k, v in summary.items() if v["task"] == task}
        if not cells:
            continue
        lift_cols = ("auc", "logloss") if task == "ranking" else ("ndcg@10", "hit@10")
        primary_name = "AUC" if task == "ranking" else "NDCG@10"
        header = [
            "model",
            "variant",
            *cols,
            *(f"lift {c}" for c in lift_cols),
            f"cold {primary_name}",
            f"warm {primary_name}",
            f"valid {primary_name}",
            "epochs",
        ]
        lines += [f"## {'Ranking (CTR)' if task == 'ranking' else 'Next item (full ranking)'}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        test_base = (counted.get(task) or {}).get("test") or {}
        primary = "auc" if task == "ranking" else "ndcg@10"
        for kind, results in (
            ("counting baseline", counted),
            ("retrieved examples, counted", retrieval or {}),
        ):
            by_split = results.get(task) or {}
            for name, result in sorted((by_split.get("test") or {}).items()):  # as the json keeps them
                valid = (by_split.get("valid") or {}).get(name, {}).get(primary, float("nan"))
                row = [kind, name, *(_fmt(result.get(c, float("nan")), 0.0) for c in cols)]
                row += ["–"] * (len(lift_cols) + 2) + [_fmt(valid, 0.0), "–"]
                lines.append("| " + " | ".join(row).replace(" ± 0.0000", "") + " |")
        for (model, variant), cell in cells.items():
            base = summary.get((model, "base"))
            lifts = []
            for c in lift_cols:
                if base is None or variant == "base":
                    lifts.append("–")
                else:
                    lift = _lift(cell["test"][c][0], base["test"][c][0], c)
                    lifts.append("n/a" if math.isnan(lift) else f"{lift:+.2f}%")
            epochs = "/".join(str(r["epochs"]) for r in cell["runs"])
            subsets = cell.get("subsets") or {}
            over = cell.get("subset_seeds", [])
            fewer = (
                f" ({len(over)} seed{'s' if len(over) > 1 else ''})" if len(over) != len(cell["runs"]) else ""
            )
            row = [
                model,
                variant,
                *(_fmt(*cell["test"][c]) for c in cols),
                *lifts,
                *(_fmt(*subsets[k]) + fewer if k in subsets else "n/a" for k in ("cold", "warm")),
                _fmt(*cell["valid"]),
                epochs,
            ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        best = max(
            (
                (name, r.get(primary, float("nan")))
                for name, r in test_base.items()
                if name != "popularity" or task != "ranking"
            ),
            key=lambda nv: -math.inf if math.isnan(nv[1]) else nv[1],
            default=None,
        )
        if best is not None:
            losers = [f"{m}/{v}" for (m, v), cell in cells.items() if not cell["test"][primary][0] > best[1]]
            verdict = (
                f"**Below the best counting baseline ({best[0]}, test {primary} {best[1]:.4f}): "
                f"{', '.join(losers)}.**"
                if losers
                else f"Every model beats the best counting baseline ({best[0]}, test {primary} {best[1]:.4f})."
            )
            lines += [verdict, ""]
        if (retrieval or {}).get(task):
            lines += [
                'Rows "retrieved examples, counted" read the in-context pool (no learning): what the '
                "examples the llmcf variants see know about the label or the next item. They are not a "
                "floor for `base`; an llmcf model that does not beat them leaves retrieval signal unused.",
                "",
            ]
        lines += _comparison_lines(task, comparisons, summary)
    lines += cot_quality or []
    lines += [f"![lift over base by model and variant]({png_name})", ""]
    lines += ["Runs (model folders under `$LLMCF_HOME/models/rec/<model>-<variant>/<version>/`):", ""]
    lines += [f"- {r['model']}-{cell_variant(r)} seed {r['seed']}: `{r['version']}`" for r in runs]
    return "\n".join(lines) + "\n"


def _ci(d: dict[str, Any] | None) -> str:
    if not d or math.isnan(d.get("diff", float("nan"))):
        return "n/a"
    return f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def _comparison_lines(
    task: str, comparisons: list[dict[str, Any]], summary: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    rows = [c for c in comparisons if c["task"] == task]
    if not rows:
        return []
    metric = "AUC" if task == "ranking" else "NDCG@10"
    lines = [
        f"### Paired differences ({metric}, test)",
        "",
        f"A − B = mean over the paired seeds of {metric}(A) − {metric}(B) on the same test rows, with a "
        f"paired bootstrap 95% interval over test rows ({stats.N_BOOT} resamples, shared by every "
        'row of this table). The verdict is the row interval\'s. "over seeds" is a Student-t 95% '
        "interval over the per-seed differences (n − 1 degrees of freedom): it holds the training "
        "noise the row interval leaves out, and is wide with few seeds.",
        "",
        "| model | A − B | seeds | all rows | over seeds | per seed | cold users | warm users | verdict (all rows) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    above, below, rows_only = [], [], []
    for c in rows:
        name = f"{c['a']} − {c['b']}"
        if "missing" in c:
            lines.append(f"| {c['model']} | {name} | – | {c['missing']} | | | | | n/a |")
            continue
        per_seed = ", ".join(f"{d:+.4f}" for d in c["all"]["per_seed"])
        verdict = c["all"]["verdict"]
        seed_lo, seed_hi = stats.seed_interval(c["all"]["per_seed"])  # also for rows of older tables
        over_seeds = "n/a" if math.isnan(seed_lo) else f"[{seed_lo:+.4f}, {seed_hi:+.4f}]"
        seeds = f"{len(c['seeds'])}*" if c.get("carried") else str(len(c["seeds"]))
        lines.append(
            f"| {c['model']} | {name} | {seeds} | {_ci(c['all'])} | {over_seeds} | {per_seed} | "
            f"{_ci(c['cold'])} (n={c['cold']['n']}) | {_ci(c['warm'])} (n={c['warm']['n']}) | {verdict} |"
        )
        (above if verdict == "above 0" else below if verdict == "below 0" else []).append(
            f"{c['model']} {name}"
        )
        if verdict in ("above 0", "below 0") and stats.verdict(seed_lo, seed_hi) != verdict:
            rows_only.append(f"{c['model']} {name}")
    lines += [
        "",
        "Outside their interval (above zero): "
        + (", ".join(above) or "none")
        + ". Below zero: "
        + (", ".join(below) or "none")
        + ". Every other difference includes zero: no evidence either way at this size. "
        + "Outside their row interval but not over seeds (the seeds disagree, or too few to say): "
        + (", ".join(rows_only) or "none")
        + ".",
        "",
    ]
    if any(c.get("carried") for c in rows):
        lines += [
            "\\* computed by an earlier call of this table from the same runs (same versions), whose test "
            "predictions this call could not read (not under its LLMCF_HOME nor archived); a run added "
            "since is not in that row.",
            "",
        ]
    return lines


def _cot_quality_lines(
    settings: Any, dataset: str, version: str | None, embedder: str | None = None
) -> list[str]:
    """The CoT-quality report of the runs' CoT version (None: the promoted one) and embedder (None:
    the configured one), when its CoTs are published here."""
    try:
        from llmcf_core.cot import report

        text = report.render_markdown(report.cot_quality(settings, dataset, version, embedder))
    except Exception as exc:  # noqa: BLE001 - a results table must not fail for want of a CoT report
        log.info("no CoT quality report for %s: %s", dataset, exc)
        return []
    return [f"## CoT quality ({version or 'promoted CoT version'})", "", text.strip(), ""]


def _current_cot(settings: Any, dataset: str) -> str:
    from llmcf_core.layout import promoted_cot

    try:
        current = promoted_cot(DataPaths(settings.home, dataset))
    except (OSError, ValueError):
        current = None
    return current.folder if current else "unknown (no cot/CURRENT)"


def _plot(path: Path, dataset: str, summary: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Lift of each variant over its backbone's base, in % of the base's test AUC (ranking) or
    NDCG@10 (next item): one axis for both tasks; whiskers = the variant's std over seeds."""
    models = list(dict.fromkeys(m for m, _ in summary))
    variants = [v for v in dict.fromkeys(v for _, v in summary) if v != "base"] or ["base"]
    means = np.full((len(models), len(variants)), np.nan)
    stds = np.full_like(means, np.nan)
    for (model, variant), cell in summary.items():
        base = summary.get((model, "base"))
        if variant not in variants or base is None:
            continue
        metric = "auc" if cell["task"] == "ranking" else "ndcg@10"
        ref = base["test"][metric][0]
        if ref and not math.isnan(ref):
            means[models.index(model), variants.index(variant)] = _lift(cell["test"][metric][0], ref, metric)
            stds[models.index(model), variants.index(variant)] = cell["test"][metric][1] / abs(ref) * 100
    bar_chart(path, f"{dataset}: test lift over base in % (AUC / NDCG@10)", models, variants, means, stds)
