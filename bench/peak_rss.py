"""Peak total RSS of a command and everything it starts (including detached Ray processes).

    .venv/bin/python bench/peak_rss.py -- make demo
    .venv/bin/python bench/peak_rss.py -- make test

Samples every process whose ancestor is the command, plus processes whose command line names
Ray's or Airflow's workers started meanwhile (Ray daemons re-parent to init), every 0.5 s.
Reports the peak of the summed RSS (an upper bound: shared pages are counted per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, rss_bytes, cmdline)."""
    out: dict[int, tuple[int, int, str]] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/statm") as fh:
                rss = int(fh.read().split()[1]) * page
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        out[int(name)] = (int(fields[1]), rss, cmd)
    return out


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    before = set(_processes())
    started = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak = 0
    peak_at = 0.0
    while proc.poll() is None:
        procs = _processes()
        tree = {proc.pid}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        # Detached children (ray daemons, airflow standalone) of this run: new since the start.
        extra = {
            pid
            for pid, (_, _, cmd) in procs.items()
            if pid not in before and ("ray" in cmd or "airflow" in cmd or "gcs_server" in cmd)
        }
        total = sum(procs[p][1] for p in tree | extra if p in procs)
        if total > peak:
            peak, peak_at = total, time.perf_counter() - started
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    print(
        f"peak_rss_gib={peak / 2**30:.2f} at_s={peak_at:.0f} wall_s={elapsed:.0f} rc={proc.returncode} "
        f"cmd={' '.join(argv)}"
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
