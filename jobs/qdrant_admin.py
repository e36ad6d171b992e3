"""CLI: Qdrant collection and alias operations (llmcf_core.retrieval.admin).

    python -m jobs.qdrant_admin status   --dataset ml-100k
    python -m jobs.qdrant_admin create   --dataset ml-100k     # empty collection, current spec
    python -m jobs.qdrant_admin swap     --dataset ml-100k --collection NAME
    python -m jobs.qdrant_admin rollback --dataset ml-100k
    python -m jobs.qdrant_admin drop     --dataset ml-100k --collection NAME

Prints the operation's outcome as JSON; exit code 2 on a refused request (unknown collection,
dropping the live one, a missing --collection). swap and rollback also point cot/CURRENT at the
CoT version of the collection they make live (the alias and CURRENT move together); to make another
CoT version live use python -m jobs.promote_cot, which checks that it covers every day first.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobs._cli import add_config_options, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.qdrant_admin", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["status", "create", "swap", "rollback", "drop"])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--collection")
    add_config_options(parser, "qdrant.lock_timeout_s=600")
    args = parser.parse_args(argv)

    from llmcf_core.layout import InvalidArgument, check_dataset_name
    from llmcf_core.retrieval.admin import create_collection, drop_collection, rollback, status, swap_alias

    dataset = check_dataset_name(args.dataset)
    try:
        settings = load_settings(args.profile, args.set)  # a bad --set is a refused request too
        if args.command in ("swap", "drop") and not args.collection:
            raise InvalidArgument(f"{args.command} needs --collection")
        if args.command == "status":
            out: Any = status(settings, dataset)
        elif args.command == "create":
            out = {"collection": create_collection(settings, dataset)}
        elif args.command == "swap":
            out = swap_alias(settings, dataset, args.collection)
        elif args.command == "rollback":
            out = rollback(settings, dataset)
        else:
            drop_collection(settings, dataset, args.collection)
            out = {"dropped": args.collection}
    except InvalidArgument as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
