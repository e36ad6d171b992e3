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
