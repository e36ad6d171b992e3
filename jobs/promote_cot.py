"""Operator command: promote a CoT version (move cot/CURRENT and the Qdrant alias to it).

    python -m jobs.promote_cot --dataset ml-100k --version smollm2-135m__v1-lc
    python -m jobs.promote_cot --dataset ml-100k --version recgen-2024-05__v1-lc --through 1998-04-22

Refused (exit code 2, nothing moved) when the version lacks a day the promoted version covers (up
to --through), or its collection does not hold exactly its published pool rows. A version that
has CoTs but no pool or collection yet is embedded first (--no-build refuses instead). CoT,
embedding and retrieval runs never move these pointers; see docs/runbook.md.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.promote_cot", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset (ml-100k, ml-1m, ...)")
    parser.add_argument("--version", required=True, help="MODEL_VERSION__PROMPT_VERSION to promote")
    parser.add_argument(
        "--through", help="YYYY-MM-DD: only days up to this one must be covered (default: every day)"
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="refuse instead of embedding a version that has no complete pool and collection",
    )
    add_config_options(parser, "qdrant.lock_timeout_s=600")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.layout import check_dataset_name, parse_partition
        from llmcf_core.retrieval.promote import promote

        settings = load_settings(args.profile, args.set)
        return promote(
            settings,
            check_dataset_name(args.dataset),
            args.version,
            through=parse_partition(args.through) if args.through else None,
            build=not args.no_build,
        )

    return run_job("promote_cot", body)


if __name__ == "__main__":
    sys.exit(main())
