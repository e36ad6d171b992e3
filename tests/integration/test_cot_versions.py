"""Pointers move only by promotion: two concurrent refresh runs with different CoT models leave
``cot/CURRENT`` and the live Qdrant collection as they were, each run reading the version it
resolved; ``jobs.promote_cot`` then refuses a version that lacks days and moves both pointers for
one that covers them.

The runs are real job processes (``tests/integration/refresh_run.py``: jobs.generate_cot with a
tiny Llama, jobs.embed_upsert, jobs.retrieve and the DAG's gates), started at the same time on one
data root and one local Qdrant folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from jobs import embed_upsert as embed_job
from jobs import ingest, promote_cot
from jobs import retrieve as retrieve_job
from llmcf_core import layout as cot_layout
from llmcf_core import storage
from llmcf_core.config import REPO_ROOT, load_config
from llmcf_core.layout import CotVersion, DataPaths, RetrievalPaths
from llmcf_core.retrieval.store import QdrantStore

from .retrieval_timeline import DATASET, DAYS, MODEL, PROMPT, publish_cot, set_current, write_logs

pytestmark = pytest.mark.slow

PROMOTED = CotVersion(MODEL, PROMPT)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Two copies of the tiny Llama under different folder names: two CoT model versions."""
    from llmcf_core.llm.models import resolve_model

    tiny = resolve_model("tiny-llama", tmp_path_factory.getbasetemp() / "cot-models")
    root = tmp_path_factory.mktemp("cot-model-copies")
    out = {}
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny, root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture
def home(llmcf_home, tmp_path_factory, settings):
    """Three ingested days with CoT version smollm2-135m__v1-lc promoted: pool, live collection
    (alias) and neighbours built for every day."""
    flags = write_logs(tmp_path_factory.mktemp("logs"))
    for day in DAYS:
        assert ingest.main(["--dataset", DATASET, "--partition", day.isoformat(), *flags]) == 0
        publish_cot(llmcf_home, day)
    set_current(llmcf_home)
    for day in DAYS:
        assert embed_job.main(["--dataset", DATASET, "--partition", day.isoformat()]) == 0
        assert retrieve_job.main(["--dataset", DATASET, "--partition", day.isoformat()]) == 0
    return llmcf_home


def _store(settings) -> QdrantStore:
    return QdrantStore.open(settings.qdrant, settings.home, lock_timeout_s=60)


def _snapshot(home, settings) -> dict:
    """What the promoted version's readers see: the pointer, the alias, its points, its files."""
    paths = RetrievalPaths(home, DATASET, settings.embedding.embedder)
    with _store(settings) as store:
        live = store.alias_target(DATASET)
        points = store.count(live)
    return {
        "current": (paths.cot_pointer).read_text(),
        "alias": live,
        "points": points,
        "pool": [storage.read_manifest(paths.pool(d, PROMOTED))["sha256"] for d in DAYS],
        "neighbors": [storage.read_manifest(paths.neighbors(d, "ctr", PROMOTED))["sha256"] for d in DAYS],
    }


def test_concurrent_runs_with_other_cot_models_leave_the_pointers_alone(home, settings, tiny_models, capsys):
    before = _snapshot(home, settings)
    env = {**os.environ, "LLMCF_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tests.integration.refresh_run", "--dataset", DATASET]
            + ["--partition", DAYS[1].isoformat(), "--model", folder],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, folder in tiny_models.items()
    }
    results = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results[name] = json.loads(out.strip().splitlines()[-1])

    # Each run read the version it resolved, end to end, into its own folders and collection.
    collections = set()
    for name, result in results.items():
        version = f"{name}__{PROMPT}"
        assert result["version"] == version
        assert result["cot"]["generated"] > 0
        assert result["embed"]["cot_version"] == version and result["retrieve"]["cot_version"] == version
        assert (
            result["gates"]["pool"]["cot_version"] == result["gates"]["neighbors"]["cot_version"] == version
        )
        assert f"/{version}/dt=" in result["retrieve"]["path"]
        collections.add(result["embed"]["collection"])
    assert len(collections) == 2 and before["alias"] not in collections

    # ... and the promoted version's pointer, alias, points and files are exactly as they were.
    assert _snapshot(home, settings) == before
    with _store(settings) as store:
        for name in tiny_models:
            spec = store.spec_of(store.collection_of(_spec(settings, name)))
            assert spec.cot == CotVersion(name, PROMPT)

    # Promotion refuses a version that lacks days the promoted one covers; nothing moves.
    assert promote_cot.main(["--dataset", DATASET, "--version", f"tiny-a__{PROMPT}"]) == 2
    err = capsys.readouterr().err
    assert "lacks 2 day(s)" in err and "2024-05-01 .. 2024-05-03" in err
    assert _snapshot(home, settings) == before

    # Once the version covers every day it is promoted: its collection is rebuilt from all its days
    # (the run's own held one day), then the alias and CURRENT move; the old collection stays.
    for day in (DAYS[0], DAYS[2]):
        publish_cot(home, day, model="tiny-a")
    assert promote_cot.main(["--dataset", DATASET, "--version", f"tiny-a__{PROMPT}"]) == 0
    promoted = json.loads(capsys.readouterr().out.split("LLMCF_RESULT ", 1)[1].splitlines()[0])
    assert promoted["built"] is True and promoted["alias_moved"] is True
    assert promoted["previous_collection"] == before["alias"]
    assert cot_layout.read_current(DataPaths(home, DATASET))["model_version"] == "tiny-a"
    paths = RetrievalPaths(home, DATASET, settings.embedding.embedder)
    pool_rows = sum(storage.read_manifest(paths.pool(d, CotVersion("tiny-a", PROMPT)))["rows"] for d in DAYS)
    with _store(settings) as store:
        live = store.alias_target(DATASET)
        assert live == promoted["collection"] and store.count(live) == pool_rows == promoted["points"]
        assert before["alias"] in store.collections(DATASET)  # kept for rollback
    # Promoting again is a no-op.
    assert promote_cot.main(["--dataset", DATASET, "--version", f"tiny-a__{PROMPT}"]) == 0
    again = json.loads(capsys.readouterr().out.split("LLMCF_RESULT ", 1)[1].splitlines()[0])
    assert again["alias_moved"] is False and again["current_moved"] is False and again["built"] is False


def _spec(settings, model: str):
    from llmcf_core.retrieval.spec import PoolSpec

    e = settings.embedding
    return PoolSpec(DATASET, e.embedder, e.dim, model, PROMPT)


def test_a_promotion_that_cannot_finish_moves_nothing(home, settings, capsys):
    """--no-build refuses a version with CoTs but no pool; the pointers stay."""
    load_config.cache_clear()
    for day in DAYS:
        publish_cot(home, day, model="m2")
    before = _snapshot(home, settings)
    assert promote_cot.main(["--dataset", DATASET, "--version", f"m2__{PROMPT}", "--no-build"]) == 2
    assert "no complete pool and collection (0 of 3 days embedded)" in capsys.readouterr().err
    assert promote_cot.main(["--dataset", DATASET, "--version", f"none__{PROMPT}"]) == 2
    assert "has no published partition" in capsys.readouterr().err
    assert _snapshot(home, settings) == before
