"""Ray job: build, check and publish RecGen instruction data for a window of train days.

    python -m jobs.build_instructions --dataset ml-100k --partition 1998-03-07
    python -m jobs.build_instructions --dataset ml-100k --partition 1998-01-16 --window-days 3 \
        --base-model tiny-llama --mix rec-only --max-length 256 --rec-max 64 --general-max 32

``--partition`` is the window's last day; the data lands in
``<home>/<dataset>/recgen_instructions/dt=<partition>/<version>/`` (version printed in the result).
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def optional_int(text: str) -> int | None:
    """An integer, or None for an empty string (a DAG param left empty: use the config's value)."""
    return None if text.strip() in ("", "None") else int(text)


def add_instruction_args(parser: argparse.ArgumentParser) -> None:
    """Flags that decide the instruction data (shared with jobs.finetune_recgen, which locates it).

    Numeric flags accept an empty value, meaning "the config's value".
    """
    parser.add_argument("--dataset", required=True, help="configured dataset, e.g. ml-100k")
    parser.add_argument("--partition", required=True, help="window end (UTC day, YYYY-MM-DD)")
    parser.add_argument(
        "--window-days", type=optional_int, help="train days ending at the partition (0 = all)"
    )
    parser.add_argument("--mix", choices=["concat", "rec-only", "half-rec"], help="rec/general mix")
    parser.add_argument("--base-model", help="tiny-llama, smollm2-135m or an HF folder (its tokenizer)")
    parser.add_argument("--max-length", type=optional_int, help="max tokens per example")
    parser.add_argument("--rec-max", type=optional_int, help="cap on rec examples (0 = all)")
    parser.add_argument("--general-max", type=optional_int, help="cap on general conversations")
    add_config_options(parser, "recgen.general_ratio=0.5")


def instruction_spec(args: argparse.Namespace):
    from llmcf_core.layout import InvalidArgument, check_dataset_name, parse_partition
    from llmcf_core.llm.instructions import InstructionSpec

    if args.window_days is not None and args.window_days < 0:
        raise InvalidArgument("--window-days must be >= 0")
    settings = load_settings(args.profile, args.set)
    spec = InstructionSpec.from_settings(
        settings,
        check_dataset_name(args.dataset),
        parse_partition(args.partition),
        window_days=args.window_days,
        mix=args.mix,
        base_model=args.base_model,
        max_length=args.max_length,
        rec_max_examples=args.rec_max,
        general_max_examples=args.general_max,
    )
    return settings, spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.build_instructions", description=__doc__.splitlines()[0]
    )
    add_instruction_args(parser)
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.llm.instructions import build_instructions

        settings, spec = instruction_spec(args)
        return build_instructions(settings, spec).to_dict()

    return run_job("build_instructions", body)


if __name__ == "__main__":
    sys.exit(main())
