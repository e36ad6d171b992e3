"""Ray job: train one recommender (backbone + variant) on the published artifacts up to a day.

    python -m jobs.train_rec --dataset ml-100k --model DIN --variant llmcf --until 1998-04-22
    python -m jobs.train_rec --dataset ml-100k --model SASRec --variant base --seed 1 --workers 0
    python -m jobs.train_rec --dataset ml-100k --model DIN --variant llmcf --partition 1998-04-22 \
        --warm-start --publish

Writes ``<home>/models/rec/<model>-<variant>/<version>/`` (model.pt, model.json, vocab.npz,
metrics.json). The same inputs and settings give the same version: a rerun reuses a finished
folder and resumes an unfinished Ray Train run from its last epoch checkpoint. ``--publish`` runs
the publish gate (``llmcf_core.rec.registry.publish_gate``) afterwards.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job
from llmcf_core.rec.spec import VARIANTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_rec", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--model",
        required=True,
        help="DIN, DeepFM, DCNv2, AutoInt, xDeepFM, DCN, SASRec, GRU4Rec, SRGNN, YoutubeDNN",
    )
    parser.add_argument(
        "--variant",
        default="llmcf",
        help=", ".join(VARIANTS),
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until", help="last day (YYYY-MM-DD) of data to use; default: every published day")
    parser.add_argument("--partition", help="alias of --until (the DAG's partition)")
    parser.add_argument("--embedder", help="embeddings/<embedder>/ to read (default: config)")
    parser.add_argument(
        "--cot-version",
        help="MODEL_VERSION__PROMPT_VERSION of the pool and neighbours (default: <dataset>/cot/CURRENT)",
    )
    parser.add_argument(
        "--workers", type=int, help="Ray Train workers (default rec.num_workers; 0 = in-process)"
    )
    parser.add_argument("--max-epochs", type=int, help="default rec.max_epochs")
    parser.add_argument("--force", action="store_true", help="retrain even if this version exists")
    parser.add_argument("--warm-start", action="store_true", help="start from the published model")
    parser.add_argument("--publish", action="store_true", help="run the publish gate after training")
    add_config_options(parser, "rec.user_features=true")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.layout import InvalidArgument, check_dataset_name, parse_partition
        from llmcf_core.rec import registry
        from llmcf_core.rec.train import train

        if args.until and args.partition and args.until != args.partition:
            raise InvalidArgument("--until and --partition disagree")
        day = args.until or args.partition
        until = parse_partition(day) if day else None
        if args.max_epochs is not None and args.max_epochs < 1:
            raise InvalidArgument("--max-epochs must be >= 1")
        settings = load_settings(args.profile, args.set)
        result = train(
            settings,
            check_dataset_name(args.dataset),
            args.model,
            args.variant,
            seed=args.seed,
            until=until,
            embedder=args.embedder,
            workers=args.workers,
            max_epochs=args.max_epochs,
            force=args.force,
            warm_start=args.warm_start,
            cot_version=args.cot_version or None,
        )
        out = result.to_dict()
        if args.publish:
            decision = registry.publish_gate(
                settings.home,
                result.dataset,
                result.model,
                result.variant,
                result.version,
                tolerance=settings.rec.publish_tolerance,
            )
            out["gate"] = decision.to_dict()
        return out

    return run_job("train_rec", body)


if __name__ == "__main__":
    sys.exit(main())
