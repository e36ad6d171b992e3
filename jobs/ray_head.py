"""CLI: start, stop or check the local single-node Ray head of demos and tests (llmcf_core.localray).

    python -m jobs.ray_head start    # prints the dashboard URL; reuses a head already answering
    python -m jobs.ray_head stop     # stops exactly this head's processes (never `ray stop`)
    python -m jobs.ray_head status   # exit 0 if the dashboard answers, else 1

Ports and CPUs come from the profile's ``ray`` section (``local_gcs_port``, ``local_dashboard_port``,
``local_num_cpus``), after ``--profile`` and ``--set`` (e.g. ``--set ray.local_num_cpus=4``); stop
and status need the ports start used. ``make ray-start`` / ``make ray-stop`` run it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from jobs._cli import EXIT_BAD_ARGS, add_config_options, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ray_head", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--temp-dir", default=None, help="default: /tmp/llmcf-ray-<gcs port>")
    add_config_options(parser, "ray.local_num_cpus=4")
    args = parser.parse_args(argv)

    from llmcf_core.layout import InvalidArgument
    from llmcf_core.localray import (
        STATE_FILE,
        dashboard_answers,
        default_temp_dir,
        read_state,
        start_head,
        stop_processes,
    )

    try:
        cfg = load_settings(args.profile, args.set).ray
    except InvalidArgument as exc:
        print(f"ray_head: invalid argument: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    temp_dir = os.path.abspath(args.temp_dir or default_temp_dir(cfg.local_gcs_port))
    dashboard_url = f"http://127.0.0.1:{cfg.local_dashboard_port}"
    if args.command == "start":
        local = start_head(cfg.local_gcs_port, cfg.local_dashboard_port, cfg.local_num_cpus, temp_dir)
        if not local.started:
            print(f"reusing the Ray head already answering at {local.dashboard_url}", file=sys.stderr)
        print(local.dashboard_url)
        return 0
    if args.command == "stop":
        state = read_state(temp_dir)
        count = stop_processes(temp_dir, (state or {}).get("pgid"))
        with contextlib.suppress(OSError):
            Path(temp_dir, STATE_FILE).unlink()
        print(
            f"stopped {count} Ray processes of the head in {temp_dir}"
            if count
            else "no local Ray head running"
        )
        return 0
    up = dashboard_answers(dashboard_url)
    print(f"{'running' if up else 'not running'}: {dashboard_url} (GCS 127.0.0.1:{cfg.local_gcs_port})")
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
