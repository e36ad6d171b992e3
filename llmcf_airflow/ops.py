"""On-call actions over Airflow's REST API (``/api/v2``), as a library and a small CLI.

    python -m llmcf_airflow.ops pools                     # create/update the pools from the config
    python -m llmcf_airflow.ops failed                    # failed partitions with their failed tasks
    python -m llmcf_airflow.ops trigger 1998-01-15        # one run for one partition
    python -m llmcf_airflow.ops clear 1998-01-15          # re-run only the failed tasks of that run
    python -m llmcf_airflow.ops backfill 1998-01-14 1998-01-16   # missing + failed runs in a range

Connection: ``LLMCF_AIRFLOW_URL`` (default http://127.0.0.1:8080), ``LLMCF_AIRFLOW_USER`` (admin) and
``LLMCF_AIRFLOW_PASSWORD`` (default: read from ``$AIRFLOW_HOME/simple_auth_manager_passwords.json``).
The CLI equivalents are in docs/runbook.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmcf_core.layout import parse_partition

DEFAULT_DAG = "llmcf_refresh"
TERMINAL = {"success", "failed"}


def _day(partition: str) -> str:
    return f"{parse_partition(partition).isoformat()}T00:00:00Z"


@dataclass
class AirflowAPI:
    """A thin authenticated client of Airflow 3's public REST API."""

    base_url: str
    username: str
    password: str
    timeout: float = 30.0

    @classmethod
    def from_env(cls) -> AirflowAPI:
        password = os.environ.get("LLMCF_AIRFLOW_PASSWORD")
        user = os.environ.get("LLMCF_AIRFLOW_USER", "admin")
        if not password:
            home = Path(os.environ.get("AIRFLOW_HOME", Path.cwd() / ".airflow"))
            pw_file = home / "simple_auth_manager_passwords.json"
            if not pw_file.is_file():
                raise SystemExit(f"set LLMCF_AIRFLOW_PASSWORD or AIRFLOW_HOME (no {pw_file})")
            password = json.loads(pw_file.read_text())[user]
        url = os.environ.get("LLMCF_AIRFLOW_URL", "http://127.0.0.1:8080")
        return cls(url.rstrip("/"), user, password)

    def __post_init__(self) -> None:
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout)
        self._token: str | None = None

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            resp = self._client.post(
                "/auth/token", json={"username": self.username, "password": self.password}
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._client.request(method, f"/api/v2{path}", headers=self._auth(), **kw)
        if resp.status_code == 401:  # token expired: once more with a fresh one
            self._token = None
            resp = self._client.request(method, f"/api/v2{path}", headers=self._auth(), **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    # -- DAGs and runs -------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("GET", f"/dags/{dag_id}")
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, partition: str, conf: dict | None = None) -> dict:
        body = {"logical_date": _day(partition), "conf": conf or {}, "note": f"partition {partition}"}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def runs(self, dag_id: str, state: str | None = None) -> list[dict]:
        params: dict[str, Any] = {"limit": 100, "order_by": "logical_date"}
        if state:
            params["state"] = [state]
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def run_for(self, dag_id: str, partition: str) -> dict | None:
        start = _day(partition)
        found = self.request(
            "GET",
            f"/dags/{dag_id}/dagRuns",
            params={"logical_date_gte": start, "logical_date_lte": start, "limit": 10},
        )["dag_runs"]
        return found[-1] if found else None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 3.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in TERMINAL:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} still {state} after {timeout:.0f}s")
            time.sleep(poll)

    # -- on-call actions ------------------------------------------------------------------------
    def failed_partitions(self, dag_id: str) -> list[dict]:
        out = []
        for run in self.runs(dag_id, state="failed"):
            tis = self.task_instances(dag_id, run["dag_run_id"])
            failed = [t["task_id"] for t in tis if t["state"] in ("failed", "upstream_failed")]
            out.append(
                {
                    "partition": (run.get("logical_date") or "")[:10],
                    "run_id": run["dag_run_id"],
                    "failed_tasks": failed,
                }
            )
        return out

    def clear_failed(self, dag_id: str, partition: str, dry_run: bool = False) -> dict:
        run = self.run_for(dag_id, partition)
        if run is None:
            raise RuntimeError(f"no run of {dag_id} for partition {partition}")
        body = {
            "dry_run": dry_run,
            "only_failed": True,
            "dag_run_id": run["dag_run_id"],
            "reset_dag_runs": True,
        }
        return self.request("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)

    def backfill(
        self, dag_id: str, first: str, last: str, max_active_runs: int = 1, conf: dict | None = None
    ) -> dict:
        body = {
            "dag_id": dag_id,
            "from_date": _day(first),
            "to_date": _day(last),
            "reprocess_behavior": "failed",
            "max_active_runs": max_active_runs,
            "dag_run_conf": conf or {},
        }
        return self.request("POST", "/backfills", json=body)

    def backfill_state(self, backfill_id: int) -> dict:
        return self.request("GET", f"/backfills/{backfill_id}")

    def ensure_pool(self, name: str, slots: int, description: str, include_deferred: bool = True) -> dict:
        body = {
            "name": name,
            "slots": slots,
            "description": description,
            "include_deferred": include_deferred,
        }
        try:
            return self.request("POST", "/pools", json=body)
        except RuntimeError as exc:
            if "409" not in str(exc):
                raise
            return self.request("PATCH", f"/pools/{name}", json=body)


def pool_specs() -> list[tuple[str, int, str]]:
    from llmcf_core.config import load_config

    af = load_config().airflow
    return [
        (af.pool_cpu, af.pool_cpu_slots, "Ray jobs on CPU workers (deferred tasks count)"),
        (af.pool_gpu, af.pool_gpu_slots, "Ray jobs on GPUs: one slot per GPU (deferred tasks count)"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcf_airflow.ops", description=__doc__.splitlines()[0])
    parser.add_argument("--dag", default=DEFAULT_DAG)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pools", help="create or update the ray_cpu / ray_gpu pools")
    sub.add_parser("failed", help="list failed partitions and their failed tasks")
    p = sub.add_parser("trigger", help="trigger one partition and wait for it")
    p.add_argument("partition")
    p.add_argument(
        "--conf",
        type=json.loads,
        default={},
        help='run conf (params) as JSON, e.g. \'{"stages": ["samples"]}\'',
    )
    p.add_argument("--no-wait", action="store_true")
    p = sub.add_parser("clear", help="re-run only the failed tasks of one partition")
    p.add_argument("partition")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("backfill", help="create runs for missing or failed partitions in a range")
    p.add_argument("first")
    p.add_argument("last")
    p.add_argument("--max-active-runs", type=int, default=1)
    p.add_argument("--conf", type=json.loads, default={}, help="run conf (params) of the new runs, as JSON")
    args = parser.parse_args(argv)

    api = AirflowAPI.from_env()
    if args.cmd == "pools":
        for name, slots, desc in pool_specs():
            api.ensure_pool(name, slots, desc)
            print(f"pool {name}: {slots} slots (deferred tasks count)")
    elif args.cmd == "failed":
        rows = api.failed_partitions(args.dag)
        for r in rows:
            print(f"{r['partition']}  {r['run_id']}  failed: {', '.join(r['failed_tasks']) or '-'}")
        if not rows:
            print("no failed runs")
    elif args.cmd == "trigger":
        run = api.trigger(args.dag, args.partition, args.conf)
        print(f"triggered {run['dag_run_id']}")
        if not args.no_wait:
            print(api.wait_for_run(args.dag, run["dag_run_id"]))
    elif args.cmd == "clear":
        result = api.clear_failed(args.dag, args.partition, dry_run=args.dry_run)
        tis = [t["task_id"] for t in result.get("task_instances", [])]
        print(f"{'would clear' if args.dry_run else 'cleared'} {len(tis)} task(s): {', '.join(tis) or '-'}")
    elif args.cmd == "backfill":
        result = api.backfill(args.dag, args.first, args.last, args.max_active_runs, args.conf)
        print(f"backfill {result['id']} created for {args.first} .. {args.last} (reprocess failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
