"""Peak total RSS of a command and everything it starts (including detached Ray processes).

    .venv/bin/python bench/peak_rss.py -- make demo
    .venv/bin/python bench/peak_rss.py -- make test

Samples every process whose ancestor is the command, plus processes whose command line names
Ray's or Airflow's workers started meanwhile (Ray daemons re-parent to init), every 0.5 s.
Reports the peak of the summed RSS (an upper bound: shared pages are counted per process), the
summed PSS at that moment (shared pages split between their users: the memory really held) and
the largest processes at the peak.
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
    peak = pss = 0
    peak_at = 0.0
    peak_top: list[tuple[int, str]] = []
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
        extra = {pid for pid, (_, _, cmd) in procs.items() if pid not in before and _is_daemon(cmd)}
        members = [p for p in tree | extra if p in procs]
        total = sum(procs[p][1] for p in members)
        if total > peak:
            peak, peak_at = total, time.perf_counter() - started
            pss = sum(_pss(p) for p in members)
            top = sorted(members, key=lambda p: -procs[p][1])[:6]
            peak_top = [(procs[p][1], procs[p][2][:90]) for p in top]
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    print(
        f"peak_rss_gib={peak / 2**30:.2f} pss_at_peak_gib={pss / 2**30:.2f} at_s={peak_at:.0f} "
        f"wall_s={elapsed:.0f} rc={proc.returncode} cmd={' '.join(argv)}"
    )
    for rss, cmd in peak_top:
        print(f"  at peak: {rss / 2**30:.2f} GiB  {cmd}")
    return proc.returncode


def _is_daemon(cmd: str) -> bool:
    """Ray's and Airflow's detached processes (they re-parent to init)."""
    first = cmd.split(" ", 1)[0]
    return (
        first.startswith("ray::")
        or any(k in cmd for k in ("raylet", "gcs_server", "/ray/", "ray/dashboard", "ray.util.client"))
        or "airflow" in first
        or " airflow " in f" {cmd} "
        or "/bin/airflow" in cmd
    )


def _pss(pid: int) -> int:
    """Proportional set size: shared pages split between their users (sums to real memory)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
