"""Integration fixtures: a real local Ray head, started once per session and only when a test needs it.

The head runs on free ports (never the config defaults, so it cannot collide with a demo head started by
``python -m jobs.ray_head start``) and in its own temp dir, so stopping it touches no other head.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from llmcf_core import localray


@pytest.fixture(scope="session")
def ray_head() -> Iterator[localray.LocalRay]:
    """A local single-node Ray head; ``RAY_ADDRESS`` points at its dashboard for the whole session."""
    gcs_port, dashboard_port = localray.free_ports(2)
    temp_dir = tempfile.mkdtemp(prefix="llmcf-rt-", dir="/tmp")  # short: Ray's socket paths are limited
    local = localray.start_head(gcs_port, dashboard_port, num_cpus=2, temp_dir=temp_dir)
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_ADDRESS", local.dashboard_url)
    patch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    try:
        yield local
    finally:
        patch.undo()
        localray.stop_head(local)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _ray_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``@pytest.mark.ray`` get the head even without naming the fixture."""
    if request.node.get_closest_marker("ray") is not None:
        request.getfixturevalue("ray_head")
