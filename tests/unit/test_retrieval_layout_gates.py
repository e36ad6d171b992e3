"""Names, config profiles, the Airflow connection -> job env mapping, and the manifest gates."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pyarrow as pa
import pytest

from llmcf_airflow.qdrant_conn import _url
from llmcf_core import storage
from llmcf_core.config import load_config
from llmcf_core.layout import CotVersion, InvalidArgument, RetrievalPaths, read_current_cot
from llmcf_core.retrieval import gates
from llmcf_core.retrieval.spec import PoolSpec, alias_name, collection_name, generation_of

SPEC = PoolSpec("ml-100k", "minilm-l6-v2", 384, "recgen-2024-05-01", "v1-lc")


def test_collection_names_aliases_and_generations():
    name = collection_name(SPEC, 3)
    assert name == "llmcf_ml-100k__minilm-l6-v2__recgen-2024-05-01__v1-lc__g3"
    assert alias_name("ml-100k") == "llmcf_ml-100k"
    assert generation_of(name, SPEC) == 3
    assert generation_of(name, PoolSpec("ml-100k", "bge", 768, "x", "y")) is None
    assert PoolSpec.from_dict(SPEC.to_dict()) == SPEC and PoolSpec.from_dict({"dataset": "x"}) is None


def test_cot_version_pointer_and_parsing(tmp_path):
    paths = RetrievalPaths(tmp_path, "ml-100k", "minilm-l6-v2")
    with pytest.raises(InvalidArgument, match="no current CoT version"):
        read_current_cot(paths)
    paths.cot_root.mkdir(parents=True)
    paths.cot_pointer.write_text(json.dumps({"model_version": "m1", "prompt_version": "p1"}))
    assert read_current_cot(paths) == CotVersion("m1", "p1")
    paths.cot_pointer.write_text(json.dumps({"model_version": "../etc", "prompt_version": "p1"}))
    with pytest.raises(InvalidArgument, match="invalid CoT model_version"):
        read_current_cot(paths)
    assert CotVersion.parse("m1__p1") == CotVersion("m1", "p1")
    with pytest.raises(InvalidArgument):
        CotVersion.parse("no-separator")
    v1 = CotVersion("m1", "p1")
    folder = paths.neighbors(dt.date(2024, 1, 1), "next_item", v1)
    assert (folder.parent.parent.name, folder.parent.name) == ("neighbors_next_item", "m1__p1")
    assert paths.pool(dt.date(2024, 1, 1), v1).parent.name == "m1__p1"  # artifacts live under their version
    with pytest.raises(InvalidArgument, match="unknown task"):
        paths.neighbors(dt.date(2024, 1, 1), "rank", v1)


def test_both_profiles_configure_embedding_qdrant_and_retrieval():
    local, cluster = load_config("local"), load_config("cluster")
    assert (local.embedding.embedder, local.embedding.dim, local.qdrant.mode) == (
        "minilm-l6-v2",
        384,
        "local",
    )
    assert (cluster.embedding.dim, cluster.qdrant.mode, cluster.qdrant.url) == (768, "server", None)
    assert local.retrieval.k == cluster.retrieval.k == 4


def test_airflow_connection_becomes_a_url():
    def conn(**kw):
        base = {"host": None, "port": None, "extra_dejson": {}}
        return SimpleNamespace(**(base | kw))

    assert _url(conn(host="qdrant.svc")) == "http://qdrant.svc:6333"
    assert _url(conn(host="qdrant.svc", port=443, extra_dejson={"https": True})) == "https://qdrant.svc:443"
    assert _url(conn(extra_dejson={"url": "https://x.cloud.qdrant.io"})) == "https://x.cloud.qdrant.io"
    assert _url(conn()) is None


def _publish(folder, checks_ok=True, **meta):
    report = {"success": checks_ok, "failures": [] if checks_ok else [{"rule": "r"}]}
    storage.publish_table(pa.table({"x": [1]}), folder, {"checks": report, **meta})


def test_gates_read_manifests_only(settings, llmcf_home):
    paths = RetrievalPaths(llmcf_home, "ml-100k", settings.embedding.embedder)
    day = dt.date(1998, 1, 15)
    with pytest.raises(InvalidArgument, match="not published"):
        gates.verify_pool_published(settings, "ml-100k", "1998-01-15", "m1__v1")
    with pytest.raises(InvalidArgument, match="no current CoT version"):  # no version, none promoted
        gates.verify_pool_published(settings, "ml-100k", "1998-01-15")
    v1 = CotVersion("m1", "v1")
    spec = {
        "embedder": settings.embedding.embedder,
        "dim": settings.embedding.dim,
        "cot_model_version": "m1",
        "cot_prompt_version": "v1",
    }
    _publish(paths.pool(day, v1), partition="1998-01-15", qdrant={"success": True}, spec=spec, collection="c")
    assert gates.verify_pool_published(settings, "ml-100k", "1998-01-15", "m1__v1")["collection"] == "c"
    paths.cot_root.mkdir(parents=True)
    paths.cot_pointer.write_text(json.dumps({"model_version": "m1", "prompt_version": "v1"}))
    assert gates.verify_pool_published(settings, "ml-100k", "1998-01-15")["cot_version"] == "m1__v1"
    # Another version's pool lives in its own folder: a run that wrote m2__v1 finds nothing of m1's.
    with pytest.raises(InvalidArgument, match="not published"):
        gates.verify_pool_published(settings, "ml-100k", "1998-01-15", "m2__v1")
    # A partition whose manifest names another version than its folder is refused.
    _publish(
        paths.pool(day, CotVersion("m2", "v1")), partition="1998-01-15", qdrant={"success": True}, spec=spec
    )
    with pytest.raises(InvalidArgument, match="built from CoT version m1__v1, not this run's m2__v1"):
        gates.verify_pool_published(settings, "ml-100k", "1998-01-15", "m2__v1")
    _publish(
        paths.neighbors(day, "ctr", v1),
        partition="1998-01-15",
        agreement={"success": False, "failures": []},
        k=4,
    )
    with pytest.raises(InvalidArgument, match="'agreement' did not pass"):
        gates.verify_neighbors_published(settings, "ml-100k", "1998-01-15")
    meta = {"checks": {"success": True}, "agreement": {"success": True}, "k": settings.retrieval.k}
    storage.publish_table(
        pa.table({"x": [2]}),
        paths.neighbors(day, "ctr", v1),
        {**meta, "partition": "1998-01-15", "spec": spec},
    )
    assert gates.verify_neighbors_published(settings, "ml-100k", "1998-01-15", "ctr", "m1__v1")["rows"] == 1
    with pytest.raises(InvalidArgument, match="not published"):
        gates.verify_neighbors_published(settings, "ml-100k", "1998-01-15", "ctr", "m2__v1")
