"""Ray job: run the refresh stages over a range of day partitions, in order, in one process.

    python -m jobs.replay --dataset ml-100k --from 1997-09-20 --to 1998-04-22
    python -m jobs.replay --dataset ml-100k --from 1997-09-20 --to 1998-04-22 \
        --stages samples,cot,embed,neighbors --tasks ctr,next_item \
        --set cot.pool_fraction=0.01 --set cot.ray_min_prompts=64 --promote

This is the bootstrap path for history (a new dataset, a new environment, the experiment's
inputs): the same stage functions as `llmcf_refresh`'s jobs (`jobs.ingest`, `jobs.generate_cot`,
`jobs.embed_upsert`, `jobs.retrieve`) with the same checks and atomic publishes, but one process
for the whole range instead of one Ray job per stage and day, so a 200-day history does not pay
an interpreter and model start-up 800 times. The cot stage of ``--cot-days`` days runs as one
generation call (the days share decode steps; each day is still checked and published alone).
Days run oldest first because a day's histories and in-context examples read the days before it;
the first failure stops the replay and names the day and stage. Every stage is idempotent, so
rerunning the same command resumes: published days are recomputed cheaply and left
byte-identical (CoTs and Qdrant points are reused, not redone).

The stages work on one CoT version: `--cot-version`, else the one the configured `cot` settings
write when the cot stage runs, else the promoted one (`cot/CURRENT`). `--promote` promotes it at the
end (`jobs.promote_cot`: CURRENT and the Qdrant alias); without it the shared pointers stay as they
were. Day-to-day operation stays with `llmcf_refresh` (one run per partition, retries, alerts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from typing import Any

from jobs._cli import add_config_options, load_settings, run_job

STAGES = ("samples", "cot", "embed", "neighbors")
TASKS = ("ctr", "next_item")

log = logging.getLogger("jobs.replay")


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    from llmcf_core.layout import InvalidArgument

    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(picked) - set(allowed))
    if not picked or unknown:
        raise InvalidArgument(f"{what} must be a comma-separated subset of {list(allowed)}, not {value!r}")
    return [v for v in allowed if v in picked]  # pipeline order, whatever order was given


def run_day(
    settings: Any,
    dataset: str,
    day: dt.date,
    stages: list[str],
    tasks: list[str],
    logs: dict[str, str | None] | None = None,
    skip_missing_cot: bool = False,
    cot_version: str | None = None,
) -> dict[str, Any]:
    """Run ``stages`` for one day; {stage: seconds, ...} plus the rows each stage published.

    The embed and neighbors stages use CoT version ``cot_version`` (None: the promoted one).
    With ``skip_missing_cot`` a day without a published CoT partition of that version adds
    nothing to the in-context pool (``embed_skipped``: True) instead of stopping the replay; its
    samples still get neighbours from the earlier days' pool.
    """
    from llmcf_core.cot.pipeline import generate_cot_partition
    from llmcf_core.data.ingest import ingest_partition
    from llmcf_core.retrieval.retrieve import retrieve_partition
    from llmcf_core.retrieval.upsert import embed_upsert, has_cot_partition

    out: dict[str, Any] = {}
    for stage in stages:
        started = time.perf_counter()
        try:
            if stage == "samples":
                out["samples_rows"] = ingest_partition(settings, dataset, day, **(logs or {})).rows
            elif stage == "cot":
                out["cot_generated"] = generate_cot_partition(settings, dataset, day).generated
            elif stage == "embed":
                if skip_missing_cot and not has_cot_partition(settings, dataset, day, cot_version):
                    log.warning(
                        "%s dt=%s has no published CoT partition: not added to the pool", dataset, day
                    )
                    out["embed_skipped"] = True
                else:
                    out["pool_rows"] = embed_upsert(settings, dataset, day, cot_version=cot_version).get(
                        "rows"
                    )
            else:
                for task in tasks:
                    retrieve_partition(settings, dataset, day, task=task, cot_version=cot_version)
        except Exception as exc:
            # Keep the type (the exit code depends on it), say where the replay stopped.
            exc.add_note(f"replay stopped at {dataset} dt={day.isoformat()} stage {stage}")
            raise
        out[f"{stage}_s"] = round(time.perf_counter() - started, 2)
    return out


def run_days(
    settings: Any,
    dataset: str,
    days: list[dt.date],
    stages: list[str],
    tasks: list[str],
    logs: dict[str, str | None] | None = None,
    skip_missing_cot: bool = False,
    cot_version: str | None = None,
) -> list[dict[str, Any]]:
    """``run_day`` for consecutive ``days``, with one CoT generation call for all of them: the stages
    before cot day by day, then the cot stage over the days together (each day still checked and
    published on its own), then the stages after it day by day. Each stage of a day reads only that
    day and earlier ones, so this order publishes what day-by-day order does; a small day no longer
    pays every decode step alone. Returns one ``run_day`` result per day (the cot call's seconds
    shared out as the pipeline does: ``CotResult.day_s``)."""
    if "cot" not in stages or len(days) == 1:
        return [
            run_day(settings, dataset, d, stages, tasks, logs, skip_missing_cot, cot_version) for d in days
        ]
    from llmcf_core.cot.pipeline import generate_cot_partitions

    before = [s for s in stages if STAGES.index(s) < STAGES.index("cot")]
    after = [s for s in stages if STAGES.index(s) > STAGES.index("cot")]
    outs = [run_day(settings, dataset, d, before, tasks, logs) for d in days]
    try:
        results = generate_cot_partitions(settings, dataset, days)
    except Exception as exc:
        exc.add_note(
            f"replay stopped at {dataset} dt={days[0]}..{days[-1]} stage cot (days before are published)"
        )
        raise
    for out, result in zip(outs, results, strict=True):
        out["cot_generated"] = result.generated
        out["cot_s"] = round(result.day_s, 2)
    for out, day in zip(outs, days, strict=True):
        out |= run_day(settings, dataset, day, after, tasks, logs, skip_missing_cot, cot_version)
    return outs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.replay", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset (ml-100k, ml-1m)")
    parser.add_argument("--from", dest="start", required=True, help="first UTC day, YYYY-MM-DD")
    parser.add_argument("--to", dest="end", required=True, help="last UTC day, YYYY-MM-DD (inclusive)")
    parser.add_argument("--interactions", help="your interaction logs, as for jobs.ingest")
    parser.add_argument("--items", help="your items table, as for jobs.ingest")
    parser.add_argument("--users", help="your users table (optional), as for jobs.ingest")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)}")
    parser.add_argument(
        "--tasks", default="ctr", help="neighbour tasks: ctr (ranking), next_item (SASRec...)"
    )
    parser.add_argument(
        "--skip-days-without-cot",
        action="store_true",
        help="embed stage: a day with no published CoT partition adds nothing to the pool instead of "
        "stopping the replay (a pool generated for part of the days); the result lists those days",
    )
    parser.add_argument(
        "--cot-version",
        help="MODEL_VERSION__PROMPT_VERSION for the embed and neighbors stages (default: what the cot "
        "settings write when the cot stage runs, else <dataset>/cot/CURRENT)",
    )
    parser.add_argument(
        "--cot-days",
        type=int,
        default=30,
        help="days per CoT generation call (default 30): their prompts share the decode steps; "
        "1 generates day by day",
    )
    parser.add_argument(
        "--promote",
        action="store_true",
        help="promote the replay's CoT version at the end (cot/CURRENT and the Qdrant alias, as "
        "jobs.promote_cot)",
    )
    add_config_options(parser, "cot.pool_fraction=0.01")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.layout import InvalidArgument, check_dataset_name, parse_partition

        dataset = check_dataset_name(args.dataset)
        start, end = parse_partition(args.start), parse_partition(args.end)
        if end < start:
            raise InvalidArgument(f"--to {end} is before --from {start}")
        stages = _csv(args.stages, STAGES, "--stages")
        tasks = _csv(args.tasks, TASKS, "--tasks")
        settings = load_settings(args.profile, args.set)
        if "cot" in stages:
            from llmcf_core.cot.backend import reexec_for_vllm, resolve_backend

            # From the command line the whole replay moves to the vLLM venv; called in-process
            # (argv given) it never replaces its caller's process: the CoT stage then says what is missing.
            if argv is None and resolve_backend(settings.cot) == "vllm":
                reexec_for_vllm(settings.cot, "jobs.replay", sys.argv[1:])
        cot_version = args.cot_version
        if not cot_version and "cot" in stages:
            from llmcf_core.cot.pipeline import version_written

            cot_version = version_written(settings.cot, settings.home)
        if args.promote and not cot_version:
            from llmcf_core.layout import RetrievalPaths, read_current_cot

            paths = RetrievalPaths(settings.home, dataset, settings.embedding.embedder)
            cot_version = read_current_cot(paths).folder
        if args.cot_days < 1:
            raise InvalidArgument(f"--cot-days must be >= 1, not {args.cot_days}")
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        totals: dict[str, float] = {}
        rows = {"samples_rows": 0, "cot_generated": 0, "pool_rows": 0}
        skipped: list[str] = []
        started = time.perf_counter()
        logs = {"interactions": args.interactions, "items": args.items, "users": args.users}
        n = 0
        step = args.cot_days if "cot" in stages else 1  # without cot: day by day, logged as it goes
        for first in range(0, len(days), step):
            chunk = days[first : first + step]
            infos = run_days(
                settings,
                dataset,
                chunk,
                stages,
                tasks,
                logs,
                skip_missing_cot=args.skip_days_without_cot,
                cot_version=cot_version,
            )
            for day, info in zip(chunk, infos, strict=True):
                n += 1
                if info.pop("embed_skipped", False):
                    skipped.append(day.isoformat())
                for key, value in info.items():
                    if key.endswith("_s"):
                        totals[key] = round(totals.get(key, 0.0) + value, 2)
                    elif key in rows and value:
                        rows[key] += int(value)
                log.info("replay %s dt=%s (%d/%d): %s", dataset, day, n, len(days), info)
        promoted = None
        if args.promote:
            from llmcf_core.retrieval.promote import promote

            promoted = promote(settings, dataset, cot_version)
        return {
            "dataset": dataset,
            "cot_version": cot_version,
            "promoted": promoted,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "days": len(days),
            "stages": stages,
            "tasks": tasks if "neighbors" in stages else [],
            "overrides": args.set,
            "stage_seconds": totals,
            "wall_seconds": round(time.perf_counter() - started, 2),
            **rows,
            **({"embed_skipped_days": skipped} if args.skip_days_without_cot else {}),
        }

    return run_job("replay", body)


if __name__ == "__main__":
    sys.exit(main())
