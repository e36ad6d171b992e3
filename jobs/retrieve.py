"""Ray job: K label-balanced, leakage-safe in-context examples for one day's samples.

    python -m jobs.retrieve --dataset ml-100k --partition 1998-01-15
    python -m jobs.retrieve --dataset ml-100k --partition 1998-01-15 --task next_item

Writes <dataset>/neighbors/<cot version>/dt=D/ (task ctr) or
<dataset>/neighbors_next_item/<cot version>/dt=D/ after verifying the leakage rules and the
agreement of the version's Qdrant collection with the exact search.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.retrieve", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset (ml-100k, ml-1m, ...)")
    parser.add_argument("--partition", required=True, help="UTC day, YYYY-MM-DD")
    parser.add_argument(
        "--task",
        default="ctr",
        choices=["ctr", "next_item"],
        help="ctr: 0.5 cos(history) + 0.5 cos(target); next_item: cos(history) only",
    )
    parser.add_argument(
        "--cot-version", help="MODEL_VERSION__PROMPT_VERSION (default: <dataset>/cot/CURRENT)"
    )
    parser.add_argument(
        "--no-verify-store",
        action="store_true",
        help="skip the Qdrant agreement check (e.g. when the store is unreachable)",
    )
    add_config_options(parser, "retrieval.k=8")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.layout import check_dataset_name, parse_partition
        from llmcf_core.retrieval.retrieve import retrieve_partition

        day = parse_partition(args.partition)
        dataset = check_dataset_name(args.dataset)
        return retrieve_partition(
            load_settings(args.profile, args.set),
            dataset,
            day,
            task=args.task,
            cot_version=args.cot_version,
            verify_store=not args.no_verify_store,
        )

    return run_job("retrieve", body)


if __name__ == "__main__":
    sys.exit(main())
