"""Environment of a local Airflow (SQLite or PostgreSQL, LocalExecutor) for the demo and tests.

Secrets (JWT secret, admin password) are generated into the Airflow home on first use, never
written in code or config files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from llmcf_core.config import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"
ADMIN_USER = "admin"


def _secret_file(home: Path, name: str, make) -> str:
    path = home / name
    if not path.is_file():
        path.write_text(make(), encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def admin_password(home: Path) -> str:
    passwords = home / "simple_auth_manager_passwords.json"
    if not passwords.is_file():
        passwords.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}), encoding="utf-8")
        passwords.chmod(0o600)
    return json.loads(passwords.read_text(encoding="utf-8"))[ADMIN_USER]


def airflow_env(
    home: Path,
    *,
    db_url: str | None = None,
    api_port: int = 8080,
    parallelism: int = 2,
    paused_at_creation: bool = True,
    ray_dashboard_url: str | None = None,
) -> dict[str, str]:
    """Variables for a local Airflow rooted at ``home`` (created if missing)."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    admin_password(home)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(paused_at_creation),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret_file(home, ".jwt_secret", lambda: secrets.token_hex(48)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    if ray_dashboard_url:
        env["RAY_ADDRESS"] = ray_dashboard_url
    return env


def airflow_cli(
    args: list[str], env: dict[str, str], check: bool = True, **kw
) -> subprocess.CompletedProcess:
    """Run ``airflow <args>`` with this interpreter's Airflow and the given environment."""
    airflow_bin = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(airflow_bin), *args], env={**os.environ, **env}, check=check, **kw)


def start_standalone(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`airflow standalone` (api-server, scheduler, dag-processor, triggerer) in its own session,
    so that ``stop_standalone`` can end every process it started."""
    airflow_bin = Path(sys.executable).with_name("airflow")
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    # standalone starts its components as `airflow ...` from PATH: put this venv first.
    path = os.pathsep.join([str(airflow_bin.parent), os.environ.get("PATH", "")])
    return subprocess.Popen(
        [str(airflow_bin), "standalone"],
        env={**os.environ, **env, "PATH": path},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_standalone(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # stragglers of the group
        os.killpg(proc.pid, signal.SIGKILL)


def exit_on_termination_signals() -> None:
    """SIGTERM and SIGHUP end this process like Ctrl-C does: as an exception, so every ``finally``
    runs and the Airflow and Ray processes it started are stopped (by default either signal kills
    the interpreter on the spot and leaves them running). Call from a main thread's entry point."""
    import signal

    def _raise(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def wait_for_api(base_url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"Airflow API at {base_url} not healthy after {timeout:.0f}s")
