"""Experiment: every model x variant x seed on one dataset -> a Markdown table and a PNG plot.

Each run goes through ``train.train`` (so finished versions are reused and interrupted ones
resume). Every table starts with the counting baselines of its task on the same split and rows
(``llmcf_core.rec.baselines``: popularity, recent popularity and item transitions for next item;
item, user and history-label positive rates and their sum for CTR); a model below them is a bug to
find, and the table says which models do not beat the best one. The report gives the mean and standard deviation over seeds of the test metrics (AUC and
LogLoss for ranking models, Hit/NDCG@{1,5,10} for next-item models), the relative lift of each
variant over the same backbone's ``base``, the inputs (data fingerprint, CoT version, pool size,
share of retrieved examples that have a CoT) and the exact command.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmcf_core import fsio
from llmcf_core.rec.backbones import model_class
from llmcf_core.rec.metrics import TOP_KS
from llmcf_core.rec.png import bar_chart
from llmcf_core.rec.train import train

RANKING_COLUMNS = ("auc", "logloss")
SEQUENTIAL_COLUMNS = tuple(f"{m}@{k}" for k in TOP_KS for m in ("hit", "ndcg"))
LOWER_IS_BETTER = {"logloss"}


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


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_experiment(
    settings: Any,
    dataset: str,
    models: list[str],
    variants: list[str],
    seeds: int,
    *,
    out_dir: Path,
    until: dt.date | None = None,
    embedder: str | None = None,
    workers: int | None = None,
    max_epochs: int | None = None,
    command: list[str] | None = None,
) -> ExperimentReport:
    runs: list[dict[str, Any]] = []
    for model in models:
        for variant in variants:
            for seed in range(seeds):
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
                )
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
                        "valid_source": m["valid_source"],
                    }
                )
    counted = _baselines(settings, dataset, {r["task"] for r in runs}, until, embedder)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_path = out_dir / f"{dataset}.json"
    runs_path.write_text(
        json.dumps({"runs": runs, "baselines": counted}, indent=2, sort_keys=True, default=str),
        encoding="utf-8",
    )
    summary = _summarise(runs)
    png_path = out_dir / f"{dataset}.png"
    _plot(png_path, dataset, summary)
    md_path = out_dir / f"{dataset}.md"
    md_path.write_text(
        _markdown(settings, dataset, runs, summary, counted, seeds, png_path.name, command), encoding="utf-8"
    )
    return ExperimentReport(md_path, png_path, runs_path, {"runs": len(runs), "cells": len(summary)})


def _baselines(
    settings: Any, dataset: str, tasks: set[str], until: dt.date | None, embedder: str | None
) -> dict[str, dict[str, Any]]:
    """{task: {split: {baseline: metrics}}} on the tables the models of that task train on."""
    from llmcf_core.rec import baselines
    from llmcf_core.rec.dataset import load_tables

    out = {}
    for task in sorted(tasks):
        tables = load_tables(settings, dataset, until=until, embedder=embedder, task=task, with_icl=False)
        out[task] = baselines.baselines_for(tables, task)
    return out


def _summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        cells.setdefault((run["model"], run["variant"]), {"task": run["task"], "runs": []})["runs"].append(
            run
        )
    for cell in cells.values():
        cols = RANKING_COLUMNS if cell["task"] == "ranking" else SEQUENTIAL_COLUMNS
        cell["test"] = {c: _mean_std([r["test"].get(c, float("nan")) for r in cell["runs"]]) for c in cols}
        primary = "auc" if cell["task"] == "ranking" else "ndcg@10"
        cell["valid"] = _mean_std([r["valid"].get(primary, float("nan")) for r in cell["runs"]])
    return cells


def _markdown(
    settings: Any,
    dataset: str,
    runs: list[dict[str, Any]],
    summary: dict[tuple[str, str], dict[str, Any]],
    counted: dict[str, dict[str, Any]],
    seeds: int,
    png_name: str,
    command: list[str] | None,
) -> str:
    first = next((r for r in runs if "pool_rows" in r["data"]), runs[0])  # an llmcf run knows the pool
    data = first["data"]
    cot = _current_cot(settings, dataset)
    lines = [
        f"# Results: {dataset}",
        "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`{shlex.join(command) if command else 'python -m jobs.experiment'}`.",
        "",
        f"Test metrics, mean ± std over {seeds} seed(s) (0..{seeds - 1}); lift = relative change of the "
        "mean against the same backbone's `base` (for LogLoss, a reduction counts as positive).",
        "",
        "Inputs: "
        f"embedder `{first['embedder']}`, CoT version `{cot}`, data fingerprint `{first['fingerprint'][:12]}`, "
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
        header = [
            "model",
            "variant",
            *cols,
            *(f"lift {c}" for c in lift_cols),
            "valid " + ("AUC" if task == "ranking" else "NDCG@10"),
            "epochs",
        ]
        lines += [f"## {'Ranking (CTR)' if task == 'ranking' else 'Next item (full ranking)'}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        test_base = (counted.get(task) or {}).get("test") or {}
        valid_base = (counted.get(task) or {}).get("valid") or {}
        primary = "auc" if task == "ranking" else "ndcg@10"
        for name, result in test_base.items():
            row = ["counting baseline", name, *(_fmt(result.get(c, float("nan")), 0.0) for c in cols)]
            row += ["–"] * len(lift_cols)
            row += [_fmt(valid_base.get(name, {}).get(primary, float("nan")), 0.0), "–"]
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
            row = [
                model,
                variant,
                *(_fmt(*cell["test"][c]) for c in cols),
                *lifts,
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
    lines += [f"![lift over base by model and variant]({png_name})", ""]
    lines += ["Runs (model folders under `$LLMCF_HOME/models/rec/<model>-<variant>/<version>/`):", ""]
    lines += [f"- {r['model']}-{r['variant']} seed {r['seed']}: `{r['version']}`" for r in runs]
    return "\n".join(lines) + "\n"


def _current_cot(settings: Any, dataset: str) -> str:
    pointer = fsio.as_path(settings.home) / dataset / "cot" / "CURRENT"
    try:
        raw = json.loads(pointer.read_text(encoding="utf-8"))
        return f"{raw['model_version']}__{raw['prompt_version']}"
    except (OSError, ValueError, KeyError):
        return "unknown (no cot/CURRENT)"


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
