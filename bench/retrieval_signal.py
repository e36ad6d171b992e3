"""What the retrieved in-context examples know, counted, beside the counting baselines, per task.

    LLMCF_HOME=<data root> python bench/retrieval_signal.py --dataset ml-100k [--cot-version V]

The same rows `jobs.experiment` adds to a table with llmcf runs ("retrieved examples, counted",
``llmcf_core.rec.baselines.retrieval_baselines``), without training anything: for a data root with
the samples, item embeddings, a pool and both tasks' neighbours (`jobs.replay --stages
embed,neighbors --tasks ctr,next_item`). Prints one JSON object: {task: {split: {row: metrics}}}.
"""

from __future__ import annotations

import argparse
import json

from llmcf_core.config import load_config
from llmcf_core.rec import baselines
from llmcf_core.rec.dataset import load_tables

KEEP = ("auc", "logloss", "hit@10", "ndcg@10", "n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--cot-version", default=None)
    parser.add_argument("--embedder", default=None)
    args = parser.parse_args()
    settings = load_config()
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for task in ("ranking", "sequential"):
        tables = load_tables(
            settings, args.dataset, task=task, embedder=args.embedder, cot_version=args.cot_version
        )
        counted = baselines.baselines_for(tables, task)
        retrieved = baselines.retrieval_baselines(tables, task)
        out[task] = {
            split: {
                name: {k: round(v, 4) for k, v in metrics.items() if k in KEEP}
                for name, metrics in {**counted.get(split, {}), **retrieved.get(split, {})}.items()
            }
            for split in baselines.EVAL_SPLITS
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
