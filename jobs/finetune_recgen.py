"""Ray job: full-parameter RecGen fine-tuning with DeepSpeed on Ray Train workers.

    python -m jobs.finetune_recgen --dataset ml-100k --partition 1998-03-07
    python -m jobs.finetune_recgen --dataset ml-100k --partition 1998-01-16 --window-days 3 \
        --base-model tiny-llama --max-length 256 --rec-max 64 --general-max 32 \
        --workers 2 --zero-stage 3 --max-steps 20 --lr 1e-3 --version tiny-test

The instruction flags (--window-days, --mix, --base-model, --max-length, --rec-max, --general-max,
and any --set recgen.* that shapes the data) must match the jobs.build_instructions run whose data is
used. Rerunning with the same --version
(default: derived from the arguments) resumes from the run's last checkpoint. The model lands in
``<home>/models/recgen/_candidates/<version>/`` until jobs.evaluate_recgen gates it.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import run_job
from jobs.build_instructions import add_instruction_args, instruction_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.finetune_recgen", description=__doc__.splitlines()[0]
    )
    add_instruction_args(parser)
    parser.add_argument("--version", help="model version = Ray Train run name (default: derived)")
    parser.add_argument("--workers", type=int, help="Ray Train workers")
    parser.add_argument("--cpus-per-worker", type=float)
    parser.add_argument(
        "--gpu", action=argparse.BooleanOptionalAction, default=None, help="one GPU per worker"
    )
    parser.add_argument("--zero-stage", type=int, choices=[2, 3])
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int, help="optimizer steps (0 = epochs)")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--storage-path", help="Ray Train storage (default $LLMCF_HOME/models/recgen/_runs)")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.llm import instructions
        from llmcf_core.llm.sft import FinetuneSpec, finetune

        settings, ispec = instruction_spec(args)
        spec = FinetuneSpec.from_settings(
            settings,
            dataset=ispec.dataset,
            window_end=ispec.window_end,
            instructions_dir=instructions.locate(settings, ispec),
            version=args.version,
            base_model=ispec.base_model,
            num_workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            use_gpu=args.gpu,
            zero_stage=args.zero_stage,
            bf16=args.bf16,
            micro_batch_size=args.micro_batch_size,
            grad_accum=args.grad_accum,
            gradient_checkpointing=args.gradient_checkpointing,
            lr=args.lr,
            epochs=args.epochs,
            max_steps=args.max_steps,
            checkpoint_every=args.checkpoint_every,
            storage_path=args.storage_path,
        )
        return {"dataset": spec.dataset, "partition": spec.window_end.isoformat(), **finetune(settings, spec)}

    return run_job("finetune_recgen", body)


if __name__ == "__main__":
    sys.exit(main())
