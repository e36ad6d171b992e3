"""Tiny job for the Ray operator's integration tests: print N lines, sleep, exit with a given code.

``python -m jobs._selftest --lines 3 --sleep 0 --exit-code 0``. Lines are flushed one by one so log
streaming can be observed while the job runs; a successful run ends with an ``LLMCF_RESULT`` line
like every job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=3, help="how many lines to print")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after printing")
    parser.add_argument("--exit-code", type=int, default=0, help="exit status")
    parser.add_argument("--tag", default="selftest", help="text included in every line (and in the Ray id)")
    args = parser.parse_args(argv)
    for i in range(args.lines):
        print(f"{args.tag} line {i + 1}/{args.lines}", flush=True)
    if args.sleep > 0:
        time.sleep(args.sleep)
    print(f"{args.tag} exiting with code {args.exit_code}", flush=True)
    if args.exit_code == 0:  # like every job (jobs/_cli.py run_job): one result line at the end
        print(
            "LLMCF_RESULT " + json.dumps({"job": "_selftest", "tag": args.tag, "lines": args.lines}),
            flush=True,
        )
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
