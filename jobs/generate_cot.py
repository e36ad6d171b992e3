"""Ray job: generate, check and publish the chain-of-thought texts of one day partition.

    python -m jobs.generate_cot --dataset ml-100k --partition 1998-01-15
    python -m jobs.generate_cot --dataset ml-1m --partition 2000-12-01 --model recgen:latest --backend vllm
    python -m jobs.generate_cot --dataset ml-100k --partition 1998-01-15 --model current
    python -m jobs.generate_cot --dataset ml-100k --partition 1998-01-15 \
        --set cot.pool_fraction=0.1 --set cot.decoding.max_new_tokens=128

Reruns are cheap and safe: finished samples and committed blocks are kept (see docs/cot.md). The
job writes its own CoT version and never moves ``cot/CURRENT``: ``jobs.promote_cot`` does.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def cot_settings(base, model: str | None, backend: str | None):
    """The ``cot`` config (``--set`` overrides already applied) with the job's own options."""
    from pydantic import ValidationError

    from llmcf_core.config import CotConfig
    from llmcf_core.layout import InvalidArgument

    update: dict = {}
    if model:
        update["model"] = model
    if backend:
        update["backend"] = backend
    try:
        return CotConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        raise InvalidArgument(f"invalid cot settings: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.generate_cot", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset, e.g. ml-100k")
    parser.add_argument("--partition", required=True, help="UTC day, YYYY-MM-DD")
    parser.add_argument(
        "--model",
        help="recgen:latest, recgen:<version>, a base model name, a folder, or current (the model of "
        "the promoted CoT version; cot.model before any promotion). Default: cot.model",
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "transformers", "vllm"],
        help="default: config cot.backend; vllm re-executes this job with the vLLM venv's Python",
    )
    add_config_options(parser, "cot.pool_fraction=0.1")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.cot.backend import reexec_for_vllm, resolve_backend
        from llmcf_core.cot.pipeline import generate_cot_partition
        from llmcf_core.cot.versions import model_for_run
        from llmcf_core.layout import DataPaths, check_dataset_name, parse_partition

        day = parse_partition(args.partition)
        dataset = check_dataset_name(args.dataset)
        settings = load_settings(args.profile, args.set)
        model = (
            model_for_run(DataPaths(settings.home, dataset), args.model, settings.cot.model)
            if args.model
            else None
        )
        cot = cot_settings(settings.cot, model, args.backend)
        # Only from the command line: called in-process (argv given) it never replaces its caller.
        if argv is None and resolve_backend(cot) == "vllm":
            reexec_for_vllm(cot, "jobs.generate_cot", sys.argv[1:])
        return generate_cot_partition(settings, dataset, day, cot=cot).to_dict()

    return run_job("generate_cot", body)


if __name__ == "__main__":
    sys.exit(main())
