"""One base-variant training run with rec settings overridden, printed beside its counting floor.

    LLMCF_HOME=<data root> python bench/rec_tune.py --dataset ml-100k --model DIN --set model.lr=3e-4 --set patience=3

The data root needs the dataset's published samples and item embeddings (e.g. `jobs.replay
--stages samples`, then `llmcf_core.retrieval.embed.ensure_item_vectors`). In-process (no Ray),
forced (always retrains), one seed; used for the tuning table of docs/recommender.md.
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

from llmcf_core.config import RecConfig, load_config
from llmcf_core.rec.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", required=True)
    parser.add_argument("--variant", default="base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", default=[], help="[rec.]FIELD=VALUE or [rec.]model.FIELD=VALUE (YAML value)"
    )
    args = parser.parse_args()
    settings = load_config()
    overrides, raw = {}, settings.rec.model_dump()
    for item in args.set:
        key, _, value = item.partition("=")
        key = key.removeprefix("rec.")
        overrides[key] = yaml.safe_load(value)
        *parents, name = key.split(".")  # model.lr: the rec.model sub-section
        section = raw
        for part in parents:
            section = section[part]
        section[name] = overrides[key]
    settings = settings.model_copy(update={"rec": RecConfig.model_validate(raw)})
    started = time.perf_counter()
    result = train(settings, args.dataset, args.model, args.variant, seed=args.seed, workers=0, force=True)
    m = result.metrics
    metric = m["primary_metric"]
    print(
        json.dumps(
            {
                "model": args.model,
                "variant": args.variant,
                "overrides": overrides,
                "metric": metric,
                "valid": m["valid"][metric],
                "test": (m["test"] or {}).get(metric),
                "test_all": m["test"],
                "epochs": m["epochs"],
                "best_epoch": m["best_epoch"],
                "floor": m["baseline_floor"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
