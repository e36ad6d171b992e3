"""Publish a gated RecGen candidate: move it into the registry and point ``latest`` at it.

    python -m jobs.publish_recgen --version <version>

Exit code 3 when the candidate failed (or never ran) the evaluation gate: nothing is published and
``latest`` does not move. Rerunning after a success is a no-op.
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import add_config_options, load_settings, run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.publish_recgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--version", required=True)
    add_config_options(parser)
    args = parser.parse_args(argv)

    def body() -> dict:
        from llmcf_core.llm import registry
        from llmcf_core.quality import CheckReport, DataCheckFailed, Failure

        version = registry.check_version(args.version)
        home = load_settings(args.profile, args.set).home
        try:
            return registry.publish(home, version)
        except registry.GateRefused as exc:  # exit 3 like a failed data check: no retry
            failure = Failure("recgen_publish_gate", 1, [], [], str(exc))
            raise DataCheckFailed(CheckReport("recgen_gate", version, "", 0, 1, [failure])) from None

    return run_job("publish_recgen", body)


if __name__ == "__main__":
    sys.exit(main())
