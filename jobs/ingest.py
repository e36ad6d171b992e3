"""Ray job: build, check and publish one day partition of samples.

    python -m jobs.ingest --dataset ml-100k --partition 1998-01-15
    python -m jobs.ingest --dataset mylogs --partition 2024-05-01 \
        --interactions logs.parquet --items items.csv [--users users.csv]
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset (ml-100k, ml-1m) or a new name")
    parser.add_argument("--partition", required=True, help="UTC day, YYYY-MM-DD")
    parser.add_argument(
        "--interactions", help="your interactions (Parquet/CSV: user_id,item_id,rating,timestamp)"
    )
    parser.add_argument("--items", help="your items (Parquet/CSV: item_id,title,genres)")
    parser.add_argument(
        "--users",
        help="optional, with --interactions/--items: your users (Parquet/CSV: user_id"
        " and any of age, age_group, gender, occupation)",
    )
    add_config_options(parser, "quality.quarantine_max_rows=100")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.data.ingest import ingest_partition
        from llmcf_core.layout import check_dataset_name, parse_partition

        day = parse_partition(args.partition)
        dataset = check_dataset_name(args.dataset)
        result = ingest_partition(
            load_settings(args.profile, args.set),
            dataset,
            day,
            interactions=args.interactions,
            items=args.items,
            users=args.users,
        )
        return result.to_dict()

    return run_job("ingest", body)


if __name__ == "__main__":
    sys.exit(main())
