"""Start and stop a local single-node Ray head for demos and tests.

Why this exists: ``ray start --head`` defaults to GCS port 6379 (Redis holds it on these machines) and to
fixed ports for the client server (10001) and the dashboard agent (52365), so two heads on one machine, or
one head next to Redis, collide. Here every fixed port is chosen explicitly, the head binds to 127.0.0.1
only, and each head gets its own ``--temp-dir`` so that ``stop_head`` can stop exactly this head (``ray stop``
would stop every Ray process on the machine).

No Airflow import here; the Airflow side lives in ``llmcf_airflow.ray_job``.

CLI (used by the Makefile): ``python -m jobs.ray_head start|stop|status`` (jobs/ray_head.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "llmcf-localray.json"
START_LOG = "ray-start.log"
# Unix socket paths (``<temp>/session_<date>_<pid>/sockets/plasma_store``) must stay under ~107 bytes.
_MAX_TEMP_DIR_LEN = 40


@dataclass
class LocalRay:
    """A local Ray head. ``started`` is False when an already running head was reused (then we never stop it)."""

    address: str  # GCS address, "127.0.0.1:PORT"
    dashboard_url: str  # Jobs API / dashboard, "http://127.0.0.1:DPORT"
    started: bool
    temp_dir: str | None = None
    pgid: int | None = None


def default_temp_dir(gcs_port: int) -> str:
    """One temp dir per head (keyed by its GCS port), short enough for Ray's socket paths."""
    base = "/tmp" if os.path.isdir("/tmp") else os.path.realpath(os.environ.get("TMPDIR", "."))
    return os.path.join(base, f"llmcf-ray-{gcs_port}")


def dashboard_answers(dashboard_url: str, timeout: float = 2.0) -> bool:
    """True when the Jobs API answers ``GET /api/jobs/`` (what ``JobSubmissionClient.list_jobs`` calls).

    Plain HTTP on purpose: ``JobSubmissionClient(url)`` silently replaces ``url`` with ``$RAY_ADDRESS`` when
    that is set, which would make us probe a different head.
    """
    request = urllib.request.Request(f"{dashboard_url}/api/jobs/", headers=ray_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status != 200:
                return False
            json.loads(resp.read() or b"null")
            return True
    except urllib.error.HTTPError as exc:
        # Ray >= 2.5x turns token auth on for new heads once ~/.ray/auth_token exists (any local
        # ray.init() writes it). 401/403 still prove the Jobs API is up; Ray's SDK sends the token.
        return exc.code in (401, 403)
    except (OSError, ValueError):
        return False


def ray_auth_headers() -> dict[str, str]:
    """Ray's token (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) as a bearer header, if there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        with contextlib.suppress(OSError):
            token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (checked on all interfaces, like Ray's own bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so connections in TIME_WAIT from a previous head do not block them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(count: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct ports the OS reports free right now (held open together so they differ)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("", 0))
            port = sock.getsockname()[1]
            if port not in exclude and port not in ports:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def _ray_cli() -> list[str]:
    """The ``ray`` CLI of the current interpreter (not whatever ``ray`` is first on PATH)."""
    binary = Path(sys.executable).parent / "ray"
    if binary.is_file():
        return [str(binary)]
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _log_tail(temp_dir: str, lines: int = 40) -> str:
    """The last lines of the ``ray start`` output and of the dashboard/GCS/raylet logs, for error messages."""
    candidates = [Path(temp_dir) / START_LOG]
    logs = Path(temp_dir) / "session_latest" / "logs"
    candidates += [logs / name for name in ("dashboard.log", "gcs_server.out", "raylet.out")]
    parts = []
    for path in candidates:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if text:
            parts.append(f"--- {path} (last {min(lines, len(text))} lines)\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) or f"(no Ray logs found under {temp_dir})"


def _write_state(temp_dir: str, local: LocalRay, gcs_port: int, dashboard_port: int) -> None:
    state = {
        **asdict(local),
        "gcs_port": gcs_port,
        "dashboard_port": dashboard_port,
        "started_at": time.time(),
    }
    Path(temp_dir, STATE_FILE).write_text(json.dumps(state, indent=2))


def read_state(temp_dir: str) -> dict | None:
    """The state ``start_head`` wrote into ``temp_dir``, or None."""
    try:
        return json.loads(Path(temp_dir, STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def start_head(
    gcs_port: int,
    dashboard_port: int,
    num_cpus: int = 2,
    temp_dir: str | None = None,
    *,
    object_store_memory: int | None = None,
    timeout_s: float = 90.0,
) -> LocalRay:
    """Start a single-node Ray head on 127.0.0.1 (or reuse one already answering on ``dashboard_port``).

    Waits until the Jobs API answers; on failure raises ``RuntimeError`` with the tail of the Ray logs and
    stops whatever was started.
    """
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    address = f"127.0.0.1:{gcs_port}"
    if dashboard_answers(dashboard_url):
        return LocalRay(address=address, dashboard_url=dashboard_url, started=False)
    for name, port in (("GCS", gcs_port), ("dashboard", dashboard_port)):
        if not _port_is_free(port):
            raise RuntimeError(f"cannot start a Ray head: {name} port {port} is already in use")

    temp_dir = os.path.abspath(temp_dir or default_temp_dir(gcs_port))
    if len(temp_dir) > _MAX_TEMP_DIR_LEN:
        raise ValueError(
            f"temp_dir {temp_dir!r} is too long for Ray's unix socket paths (max {_MAX_TEMP_DIR_LEN} chars)"
        )
    os.makedirs(temp_dir, exist_ok=True)
    client_port, agent_http, agent_grpc, runtime_env_port, metrics_port = free_ports(
        5, exclude={gcs_port, dashboard_port}
    )
    cmd = [
        *_ray_cli(),
        "start",
        "--head",
        f"--port={gcs_port}",
        f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        # Fixed defaults that collide between heads: client server 10001, dashboard agent 52365.
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env_port}",
        f"--metrics-export-port={metrics_port}",
        # The CLI default 10002-19999 is shared by all heads; 0/0 lets the OS pick free ports per worker.
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]
    if object_store_memory:
        cmd.append(f"--object-store-memory={int(object_store_memory)}")

    env = dict(os.environ)
    # `ray start` and the job drivers must not follow an address meant for some other cluster.
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    # Job entrypoints run `python -m jobs.x`: make `python` this interpreter even if the venv is not active.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["RAY_USAGE_STATS_ENABLED"] = "0"

    with open(Path(temp_dir, START_LOG), "wb") as out:
        # New session: every Ray process gets this process group unless Ray moves it (workers, drivers).
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=temp_dir
        )
    local = LocalRay(
        address=address, dashboard_url=dashboard_url, started=True, temp_dir=temp_dir, pgid=proc.pid
    )
    _write_state(temp_dir, local, gcs_port, dashboard_port)

    deadline = time.monotonic() + timeout_s
    try:
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"`ray start` did not return within {timeout_s:.0f} s") from exc
        if rc != 0:
            raise RuntimeError(f"`ray start` exited with code {rc}")
        while not dashboard_answers(dashboard_url):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Ray Jobs API at {dashboard_url} did not answer within {timeout_s:.0f} s"
                )
            time.sleep(0.5)
    except RuntimeError as exc:
        tail = _log_tail(temp_dir)
        stop_head(local)
        raise RuntimeError(f"{exc}\n{tail}") from exc
    return local


def _head_processes(temp_dir: str, pgid: int | None) -> list:
    """Processes of the head in ``temp_dir``: those naming it on their command line or sharing its process
    group, plus all their descendants (workers and job drivers get their own process groups)."""
    import psutil  # ships with ray[default]

    root = temp_dir.rstrip("/")
    me = os.getpid()
    roots: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid == me:
                continue
            args = proc.info["cmdline"] or []
            names_dir = any(a == root or a.endswith("=" + root) or root + "/" in a for a in args)
            # ...and is a Ray process, not e.g. `tail -f <temp_dir>/session_latest/logs/raylet.out`.
            is_ray = "ray" in " ".join(args).replace(root, "")
            if (names_dir and is_ray) or (pgid is not None and os.getpgid(proc.pid) == pgid):
                roots[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    found = dict(roots)
    for proc in roots.values():
        try:
            for child in proc.children(recursive=True):
                if child.pid != me:
                    found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(found.values())


def stop_processes(temp_dir: str, pgid: int | None = None, grace_s: float = 3.0) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, every process of the head in ``temp_dir``; returns how many.

    Only this head's processes are touched (unlike ``ray stop``, which stops all Ray processes on the host).
    """
    import psutil

    total = 0
    for _ in range(3):  # processes can spawn while others shut down: rescan until none are left
        procs = _head_processes(temp_dir, pgid)
        if not procs:
            break
        total += len(procs)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
    return total


def stop_head(local: LocalRay, grace_s: float = 3.0) -> None:
    """Stop the head if we started it (a reused head is left alone); leaves no Ray process of it behind."""
    if not local.started or not local.temp_dir:
        return
    stop_processes(local.temp_dir, local.pgid, grace_s=grace_s)
    with contextlib.suppress(OSError):
        Path(local.temp_dir, STATE_FILE).unlink()
