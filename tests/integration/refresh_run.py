"""One refresh run's CoT -> embed -> neighbours chain for a day, as llmcf_refresh runs it.

    python -m tests.integration.refresh_run --dataset tiny --partition 2024-05-02 --model <folder>

Each stage is its own job process (as the DAG's Ray jobs are); the CoT version the CoT job reports
in its ``LLMCF_RESULT`` line goes to the next jobs and to the gates, as the DAG passes it through
XCom. Prints one JSON line: the version, each job's result and each gate's summary. Used by the
concurrency test of promotion-only pointers (tests/integration/test_cot_versions.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from jobs._cli import SUMMARY_PREFIX

# Tiny, in-process CoT generation: what matters here is which version each stage reads.
COT_SETTINGS = {
    "backend": "transformers",
    "ray_min_prompts": 100000,
    "pool_fraction": 1,
    "decoding.num_candidates": 1,
    "decoding.max_new_tokens": 8,
    "decoding.min_new_tokens": 4,
    "min_cot_chars": 1,
    "max_failure_rate": 1,
    "torch_threads": 1,
}


def _job(module: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(SUMMARY_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{module} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(SUMMARY_PREFIX).strip())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--partition", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    from llmcf_core.config import load_config
    from llmcf_core.cot.versions import verify_cot_published
    from llmcf_core.layout import version_name
    from llmcf_core.retrieval.gates import verify_neighbors_published, verify_pool_published

    base = ["--dataset", args.dataset, "--partition", args.partition]
    sets = [x for k, v in COT_SETTINGS.items() for x in ("--set", f"cot.{k}={v}")]
    cot = _job("jobs.generate_cot", [*base, "--model", args.model, *sets])
    version = cot["cot_version"]  # as the DAG's check_cot takes it from the job's result
    assert version == version_name(cot["model_version"], cot["prompt_version"])
    settings = load_config()
    gates = {
        "cot": verify_cot_published(
            settings.home, args.dataset, args.partition, cot["model_version"], cot["prompt_version"]
        )
    }
    embed = _job("jobs.embed_upsert", [*base, "--cot-version", version])
    gates["pool"] = verify_pool_published(settings, args.dataset, args.partition, embed["cot_version"])
    retrieve = _job("jobs.retrieve", [*base, "--cot-version", version])
    gates["neighbors"] = verify_neighbors_published(
        settings, args.dataset, args.partition, "ctr", retrieve["cot_version"]
    )
    print(json.dumps({"version": version, "cot": cot, "embed": embed, "retrieve": retrieve, "gates": gates}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
