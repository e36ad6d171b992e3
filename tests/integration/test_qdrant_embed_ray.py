"""The Ray Data embedding path (actor pool, fractional CPUs) gives the in-process encoder's vectors."""

from __future__ import annotations

import numpy as np
import pytest

from llmcf_core.config import EmbeddingConfig
from llmcf_core.retrieval.embed import embed_texts

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray(monkeypatch):
    """A Ray instance inside this process (what ensure_ray starts for a job run by hand)."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    ray.shutdown()


def test_ray_data_actor_pool_embeddings_equal_in_process_ones(local_ray, tmp_path):
    texts = [f"title: Film {i}; year: {1990 + i % 10}; genres: Drama, Comedy" for i in range(40)]
    cfg = EmbeddingConfig(backend="ray", ray_min_texts=0, actors=2, actor_num_cpus=0.5, batch_size=8)
    on_ray = embed_texts(texts, cfg, tmp_path)
    import ray

    assert ray.is_initialized()  # it really went through Ray
    local = embed_texts(texts, cfg, tmp_path, backend="local")
    assert on_ray.shape == (40, 384) and on_ray.dtype == np.float32
    np.testing.assert_allclose(on_ray, local, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(on_ray, axis=1), 1.0, atol=1e-5)
