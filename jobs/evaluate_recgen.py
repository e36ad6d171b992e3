"""Ray job: evaluate a RecGen candidate against its base model (rec AUC/LogLoss, general perplexity).

    python -m jobs.evaluate_recgen --dataset ml-100k --partition 1998-03-07 --version <version>
    python -m jobs.evaluate_recgen --dataset ml-100k --partition 1998-03-07 --version <version> \
        --compare rec-only=<rec-only version>

Writes ``eval/metrics.json``, ``eval/balance.md`` and the gate decision ``eval/gate.json`` into the
candidate folder. The job succeeds whatever the gate says; ``jobs.publish_recgen`` (or the DAG's
publish task) refuses a candidate whose gate failed. ``--partition`` is the training window's end;
held-out samples are the valid split of the days after it.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate_recgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--partition", required=True, help="training window end (YYYY-MM-DD)")
    parser.add_argument("--version", required=True, help="candidate version (from jobs.finetune_recgen)")
    parser.add_argument("--base-model", help="base model to compare with (default: the candidate's base)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=MODEL",
        help="another model in the balance table (version, base model name or folder); "
        "repeatable or comma-separated; empty values are ignored",
    )
    parser.add_argument("--eval-days", type=int, help="held-out days (default recgen.eval_days)")
    parser.add_argument("--rec-max", type=int, help="held-out rec samples (default recgen.eval_rec_max)")
    parser.add_argument(
        "--general-max", type=int, help="held-out conversations (default recgen.eval_general_max)"
    )
    add_config_options(parser, "recgen.eval_batch_size=4")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.layout import InvalidArgument, check_dataset_name, parse_partition
        from llmcf_core.llm.evaluate import evaluate_candidate
        from llmcf_core.llm.registry import check_version

        compare = {}
        for item in (part.strip() for value in args.compare for part in value.split(",")):
            if not item:
                continue
            label, sep, name = item.partition("=")
            if not sep or not label or not name:
                raise InvalidArgument(f"--compare {item!r}: expected LABEL=MODEL")
            compare[label] = name
        return {
            "dataset": check_dataset_name(args.dataset),
            "partition": parse_partition(args.partition).isoformat(),
            **evaluate_candidate(
                load_settings(args.profile, args.set),
                dataset=args.dataset,
                window_end=parse_partition(args.partition),
                version=check_version(args.version),
                base_model=args.base_model,
                compare=compare,
                eval_days=args.eval_days,
                rec_max=args.rec_max,
                general_max=args.general_max,
            ),
        }

    return run_job("evaluate_recgen", body)


if __name__ == "__main__":
    sys.exit(main())
