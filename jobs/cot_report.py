"""Job: the quality report of one CoT version over all its published days.

    python -m jobs.cot_report --dataset ml-100k
    python -m jobs.cot_report --dataset ml-100k --version smollm2-135m__v1-lc --embedder minilm-l6-v2

Writes <dataset>/cot/_reports/<model_version>__<prompt_version>/quality.json and quality.md
(lengths, truncation, short / repetitive / prompt-echo texts, label agreement for -nolabel
prompts, within-label diversity of the pool's CoT embeddings). Reads only: no Ray, no model.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.cot_report", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="configured dataset (ml-100k, ml-1m, ...)")
    parser.add_argument("--version", help="MODEL_VERSION__PROMPT_VERSION (default: <dataset>/cot/CURRENT)")
    parser.add_argument(
        "--embedder", help="pool embeddings to measure diversity on (default: embedding.embedder)"
    )
    add_config_options(parser, "embedding.embedder=minilm-l6-v2")
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.cot.report import cot_quality, write_report
        from llmcf_core.layout import check_dataset_name

        settings = load_settings(args.profile, args.set)
        dataset = check_dataset_name(args.dataset)
        report = cot_quality(settings, dataset, args.version, args.embedder)
        path = write_report(settings, dataset, report)
        return {"path": str(path), **report}

    return run_job("cot_report", body)


if __name__ == "__main__":
    sys.exit(main())
