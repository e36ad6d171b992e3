"""Job: compare variants of each backbone over seeds -> docs/results/<dataset>.md, .png and .json.

    python -m jobs.experiment --dataset ml-100k --models DIN,DeepFM,SASRec --variants base,llmcf --seeds 3
    python -m jobs.experiment --dataset ml-100k --models DIN --variants base,llmcf,llmcf_wocot,llmcf_mean \
        --seeds 5 --workers 0 --until 1998-04-22

Every run is ``jobs.train_rec``'s training (model folders under ``models/rec/``); runs that
already exist for the same inputs and settings are reused, so an interrupted experiment picks up
where it stopped. Tables accumulate: runs of earlier calls stay in the table (``--fresh`` starts
over), so backbones, variants and seeds can be added one call at a time. A setting is compared
with the default as an arm in the same table:

    python -m jobs.experiment --dataset ml-100k --models GRU4Rec --variants llmcf --seeds 3 \
        --arm ictdrop0.5 --set rec.model.ict_dropout=0.5

``--render`` rewrites a table from its json and archived predictions (no training, no data read):
after a change of the table's statistics or layout, on any machine.

    python -m jobs.experiment --dataset ml-100k --render --out docs/results
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from jobs._cli import add_config_options, load_settings, run_job

# the options of a call that trains runs; --render takes none of them
_RUN_OPTIONS = (
    "models",
    "variants",
    "seeds",
    "first_seed",
    "fresh",
    "force",
    "until",
    "partition",
    "embedder",
    "cot_version",
    "workers",
    "max_epochs",
    "arm",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", help="comma-separated backbones (default DIN,DeepFM,SASRec)")
    parser.add_argument("--variants", help="comma-separated; base is the reference (default base,llmcf)")
    parser.add_argument("--seeds", type=int, help="seeds first..first+N-1 (default 3)")
    parser.add_argument("--first-seed", type=int, help="first seed (default 0)")
    parser.add_argument("--fresh", action="store_true", help="drop the runs of earlier calls from the table")
    parser.add_argument(
        "--force", action="store_true", help="retrain runs whose version exists instead of reusing them"
    )
    parser.add_argument("--until", help="last day (YYYY-MM-DD) of data; default: every published day")
    parser.add_argument("--partition", help="alias of --until")
    parser.add_argument("--embedder")
    parser.add_argument(
        "--cot-version",
        help="MODEL_VERSION__PROMPT_VERSION of the pool and neighbours (default: <dataset>/cot/CURRENT)",
    )
    parser.add_argument("--workers", type=int, help="Ray Train workers per run (0 = in-process)")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--out", help="output folder (default docs/results in the checkout)")
    parser.add_argument(
        "--arm",
        help="label this call's runs as an arm of their variants, e.g. --arm ictdrop0.5 with "
        "--set rec.model.ict_dropout=0.5: cells <variant>[<arm>] beside the plain variants, "
        "each compared with base and with its plain variant",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite the table at --out from its json and archived predictions: train nothing, read no data",
    )
    add_config_options(parser, "rec.user_features=true")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.config import REPO_ROOT
        from llmcf_core.layout import InvalidArgument, check_dataset_name, parse_partition
        from llmcf_core.rec.backbones import model_class
        from llmcf_core.rec.experiment import render_table, run_experiment
        from llmcf_core.rec.spec import VARIANTS

        command = ["python", "-m", "jobs.experiment", *(argv if argv is not None else sys.argv[1:])]
        out_dir = Path(args.out) if args.out else REPO_ROOT / "docs" / "results"
        if args.render:
            ignored = [
                "--" + name.replace("_", "-")
                for name in _RUN_OPTIONS
                if getattr(args, name) not in (None, False)
            ]
            if ignored:
                raise InvalidArgument(
                    f"--render rewrites the whole table from its json and trains nothing: drop {', '.join(ignored)}"
                )
            settings = load_settings(args.profile, args.set)
            dataset = check_dataset_name(args.dataset)
            return render_table(settings, dataset, out_dir=out_dir, command=command).to_dict()

        models = [m for m in (args.models or "DIN,DeepFM,SASRec").split(",") if m]
        variants = [v for v in (args.variants or "base,llmcf").split(",") if v]
        seeds = 3 if args.seeds is None else args.seeds
        first_seed = args.first_seed or 0
        for m in models:
            try:
                model_class(m)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown or not variants:
            raise InvalidArgument(f"unknown variants {unknown}: use {', '.join(VARIANTS)}")
        if args.arm is not None and not re.fullmatch(r"[A-Za-z0-9_.=+-]{1,40}", args.arm):
            raise InvalidArgument(f"--arm {args.arm!r}: use 1-40 letters, digits or _ . = + -")
        if seeds < 1 or first_seed < 0:
            raise InvalidArgument("--seeds must be >= 1 and --first-seed >= 0")
        day = args.until or args.partition
        settings = load_settings(args.profile, args.set)
        report = run_experiment(
            settings,
            check_dataset_name(args.dataset),
            models,
            variants,
            range(first_seed, first_seed + seeds),
            out_dir=out_dir,
            until=parse_partition(day) if day else None,
            embedder=args.embedder,
            workers=args.workers,
            max_epochs=args.max_epochs,
            command=command,
            fresh=args.fresh,
            cot_version=args.cot_version,
            arm=args.arm,
            force=args.force,
        )
        return report.to_dict()

    return run_job("experiment", body)


if __name__ == "__main__":
    sys.exit(main())
