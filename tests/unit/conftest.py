"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is fastest, and far faster than two on a busy shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
