"""`make airflow-ui` and `make demo` stop everything they started when a supervisor or a closed terminal
ends them: SIGTERM to make reaches the demo, which stops Airflow standalone (its whole process group),
the job it is running, and the Ray head."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest

from llmcf_core.config import REPO_ROOT, load_config

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _names(pids: list[psutil.Process]) -> str:
    out = []
    for p in pids:
        try:
            out.append(" ".join(p.cmdline()))
        except psutil.Error:
            continue
    return " ".join(out)


def _sigterm_leaves_nothing(tmp_path, target: str, ready, ports: dict[str, int]) -> None:
    """Start `make <target>`, wait until ``ready(names of its process tree)``, SIGTERM make, then
    check that no process of its tree, no port and no process naming the test's folders is left."""
    busy = [f"{name} {port}" for name, port in ports.items() if _listening(port)]
    if busy:
        pytest.skip(f"ports in use by another demo or head: {', '.join(busy)}")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "LLMCF_HOME": str(tmp_path / "home"),
        "LLMCF_AIRFLOW_PORT": str(ports.get("Airflow UI", 18080)),
    }
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "make.log", "wb")  # noqa: SIM115
    make = subprocess.Popen(["make", "-s", target], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert make.poll() is None, (tmp_path / "make.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"make {target} was not ready in 240 s"
            started = _tree(make.pid)
            if ready(_names(started)):
                break
            time.sleep(1)
        started = _tree(make.pid)
        make.send_signal(signal.SIGTERM)
        make.wait(timeout=90)
        time.sleep(2)
        alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
        assert not any(_listening(port) for port in ports.values()), ports
        leftovers = [
            " ".join(p.info["cmdline"] or [])[:120]
            for p in psutil.process_iter(["cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert not leftovers, leftovers
    finally:
        if make.poll() is None:  # a check failed: stop what make started too, not make alone
            try:
                tree = _tree(make.pid)
            except psutil.Error:
                tree = []
            make.send_signal(signal.SIGTERM)  # the demo stops its job, Airflow and Ray on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                make.wait(timeout=90)
            for p in tree:  # SIGKILL to make alone left the demo running for 40 min after a timeout
                with contextlib.suppress(psutil.Error):
                    p.kill()
        log.close()


def test_sigterm_to_make_airflow_ui_leaves_no_airflow_or_ray_process(tmp_path):
    ray = load_config().ray
    ui_port = 18080
    ports = {"Ray GCS": ray.local_gcs_port, "Ray dashboard": ray.local_dashboard_port, "Airflow UI": ui_port}

    def ready(names: str) -> bool:
        return _listening(ui_port) and _listening(ray.local_dashboard_port) and "standalone" in names

    _sigterm_leaves_nothing(tmp_path, "airflow-ui", ready, ports)


def test_sigterm_to_make_demo_stops_its_job_and_ray(tmp_path):
    """SIGTERM while the demo runs its first job (the history bootstrap, `jobs.replay`)."""
    ray = load_config().ray
    ports = {"Ray GCS": ray.local_gcs_port, "Ray dashboard": ray.local_dashboard_port}

    def ready(names: str) -> bool:
        return "jobs.replay" in names and _listening(ray.local_dashboard_port)

    _sigterm_leaves_nothing(tmp_path, "demo", ready, ports)
