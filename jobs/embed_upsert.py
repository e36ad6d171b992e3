"""Ray job: embed one day's CoT pool, upsert it into Qdrant, verify the counts, publish.

    python -m jobs.embed_upsert --dataset ml-100k --partition 1998-01-15
    python -m jobs.embed_upsert --dataset ml-100k --partition 1998-01-15 --cot-version M__P
    python -m jobs.embed_upsert --dataset ml-100k --rebuild          # a new build of the version
    python -m jobs.embed_upsert --dataset ml-1m --items-only         # item texts only, no CoT pool

Each CoT version has its own pool partitions and collection. Rerunning a partition rewrites the
same points (UUID5 ids from sample_id): counts do not change. A version without a collection (or
--rebuild) gets a full build (new collection, count checks). The alias llmcf_<dataset> is moved
only when the new build replaces the promoted version's own collection; making another version
live is jobs.promote_cot's job.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.embed_upsert", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset (ml-100k, ml-1m, ...)")
    parser.add_argument("--partition", help="UTC day, YYYY-MM-DD (optional with --rebuild)")
    parser.add_argument(
        "--cot-version", help="MODEL_VERSION__PROMPT_VERSION (default: <dataset>/cot/CURRENT)"
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="load every CoT day of the version into a new collection (the alias follows only if it "
        "named this version)",
    )
    parser.add_argument(
        "--items-only",
        action="store_true",
        help="embed the item texts only (what the recommender's text fields read): bases can train "
        "on a dataset that has no CoT pool yet",
    )
    add_config_options(parser, "embedding.backend=local")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.layout import InvalidArgument, check_dataset_name, parse_partition
        from llmcf_core.retrieval.upsert import embed_upsert

        dataset = check_dataset_name(args.dataset)
        settings = load_settings(args.profile, args.set)
        if args.items_only:
            if args.partition or args.rebuild or args.cot_version:
                raise InvalidArgument("--items-only takes no --partition, --rebuild or --cot-version")
            from llmcf_core.layout import RetrievalPaths
            from llmcf_core.retrieval.embed import ensure_item_vectors

            items = ensure_item_vectors(settings, dataset)
            folder = RetrievalPaths(settings.home, dataset, settings.embedding.embedder).items
            return {"dataset": dataset, "items": len(items.ids), "path": str(folder)}
        day = parse_partition(args.partition) if args.partition else None
        return embed_upsert(settings, dataset, day, cot_version=args.cot_version, rebuild=args.rebuild)

    return run_job("embed_upsert", body)


if __name__ == "__main__":
    sys.exit(main())
