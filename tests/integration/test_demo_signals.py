"""`make airflow-ui` stops everything it started when a supervisor or a closed terminal ends it: SIGTERM
to make reaches the demo, which stops Airflow standalone (its whole process group) and the Ray head."""

from __future__ import annotations

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


def test_sigterm_to_make_airflow_ui_leaves_no_airflow_or_ray_process(tmp_path):
    ray = load_config().ray
    ui_port = 18080
    ports = {"Ray GCS": ray.local_gcs_port, "Ray dashboard": ray.local_dashboard_port, "Airflow UI": ui_port}
    busy = [f"{name} {port}" for name, port in ports.items() if _listening(port)]
    if busy:
        pytest.skip(f"ports in use by another demo or head: {', '.join(busy)}")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "LLMCF_HOME": str(tmp_path / "home"),
        "LLMCF_AIRFLOW_PORT": str(ui_port),
    }
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "make.log", "wb")  # noqa: SIM115
    make = subprocess.Popen(["make", "-s", "airflow-ui"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while not (_listening(ui_port) and _listening(ray.local_dashboard_port)):
            assert make.poll() is None, (tmp_path / "make.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the UI did not come up in 240 s"
            time.sleep(1)
        started = _tree(make.pid)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "standalone" in names, names
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
        if make.poll() is None:
            make.kill()
        log.close()
