"""Shared fixtures: every test gets its own data root, so nothing touches the real .llmcf/."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture
def llmcf_home(tmp_path, monkeypatch):
    home = tmp_path / "llmcf_home"
    home.mkdir()
    monkeypatch.setenv("LLMCF_HOME", str(home))
    from llmcf_core.config import load_config

    load_config.cache_clear()
    yield home
    load_config.cache_clear()


@pytest.fixture
def settings(llmcf_home):
    from llmcf_core.config import load_config

    return load_config("local")


@pytest.fixture(autouse=True, scope="module")
def _fresh_in_process_ray_per_module():
    """Shut down an in-process Ray instance after each test module.

    Jobs call ``ensure_ray()``, which reuses an initialised Ray; a module that leaves actors or
    placement groups behind (an actor pool, a Ray Train run) would otherwise starve the next
    module's Ray Data or Ray Train work of CPUs on a 2-core machine.
    """
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(autouse=True)
def _torch_global_state_is_restored():
    """Fail the test that leaves autograd switched off for the rest of the process.

    ``torch.set_grad_enabled(False)`` in library code once made every later training test in the
    same pytest process fail with "element 0 of tensors does not require grad".
    """
    yield
    import sys

    if "torch" in sys.modules:
        import torch

        assert torch.is_grad_enabled(), "a test or the code it ran left torch autograd disabled"
