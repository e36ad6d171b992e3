"""The test command (`make test` -> tests/run_suites.sh): both pytest sessions run, and the suite
fails when either fails or collects nothing (pytest's exit code 5)."""

from __future__ import annotations

import os
import subprocess

import pytest

from llmcf_core.config import REPO_ROOT

FAKE = """#!/bin/bash
if [[ "$*" == *tests/integration* ]]; then echo "integration $*"; exit $IRC; fi
echo "unit $*"; exit $URC
"""


@pytest.mark.parametrize(
    ("integration", "unit", "expected"), [(0, 0, 0), (1, 0, 1), (0, 1, 1), (5, 0, 1), (0, 5, 1), (2, 1, 2)]
)
def test_both_sessions_run_and_either_failing_fails_the_suite(tmp_path, integration, unit, expected):
    fake = tmp_path / "python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "IRC": str(integration), "URC": str(unit)}
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "tests" / "run_suites.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert "integration -m pytest" in proc.stdout and "tests/integration" in proc.stdout
    assert "unit -m pytest" in proc.stdout and "tests/unit tests/data" in proc.stdout
    assert ("no tests collected" in proc.stdout) == (5 in (integration, unit))
