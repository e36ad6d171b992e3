"""CLI: score candidate items for one user with a published recommender (the online path).

    python -m jobs.score --dataset ml-100k --model DIN --variant llmcf \
        --user 1 --history 50,172,133 --candidates 1,2,3

Prints ``{"version", "scores": {item: score}, "latency_ms"}`` as one JSON line; the library is
``llmcf_core.rec.scoring.Scorer`` (docs/recommender.md, "Online scoring").
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from jobs._cli import EXIT_BAD_ARGS, add_config_options, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.score", description="Score candidates.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--variant", default="llmcf")
    parser.add_argument("--version", help="default: the published version")
    parser.add_argument("--user", type=int, required=True)
    parser.add_argument("--history", default="", help="comma-separated item ids, oldest first")
    parser.add_argument("--history-labels", help="comma-separated 1 (liked) / 0 per history item")
    parser.add_argument("--candidates", required=True, help="comma-separated item ids")
    parser.add_argument("--timestamp", type=int, help="only examples older than this (epoch seconds)")
    add_config_options(parser)
    args = parser.parse_args(argv)

    from llmcf_core.layout import InvalidArgument
    from llmcf_core.rec.scoring import Scorer, ScoreRequest

    def ids(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    try:
        settings = load_settings(args.profile, args.set)
    except InvalidArgument as exc:
        print(f"score: invalid argument: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    scorer = Scorer.load(settings, args.dataset, args.model, args.variant, version=args.version)
    labels = ids(args.history_labels) if args.history_labels else None
    if labels is not None and len(labels) != len(ids(args.history)):
        parser.error(f"--history-labels has {len(labels)} values for {len(ids(args.history))} history items")
    req = ScoreRequest(args.user, ids(args.history), ids(args.candidates), args.timestamp, labels)
    started = time.perf_counter()
    scores = scorer.score(req)
    elapsed = (time.perf_counter() - started) * 1000
    out = {
        "version": scorer.loaded.meta["version"],
        "scores": {
            str(i): (None if np.isnan(s) else round(float(s), 6))
            for i, s in zip(req.candidate_item_ids, scores, strict=True)
        },
        "latency_ms": round(elapsed, 3),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
