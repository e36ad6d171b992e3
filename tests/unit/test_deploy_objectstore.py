"""Object-store data roots (s3://, gs://, any fsspec URL) for the cluster profile.

fsspec's in-memory filesystem stands in for S3/GCS here (no network, no credentials), and s3fs
itself runs against moto's S3 server on localhost (real S3 API calls: PUT, LIST, HEAD, DELETE); the
integration tests use ``lobj://`` (``llmcf_core.fsio``: a local folder with object-store semantics)
where the work crosses Ray worker processes. What is checked here:

- the building blocks: pyarrow/pandas read and write Parquet through fsspec URLs, UPath keeps the
  ``<home>/<dataset>/<artifact>/dt=YYYY-MM-DD/`` layout;
- the library: the profile's ``home`` may be a URL, DataPaths builds URLs, ``storage`` publishes
  with the manifest as the commit point (content-addressed part files, idempotent republish, old
  parts cleaned up), the check tasks read manifests, ``jobs.ingest`` reads object-store inputs,
  ``fsio``'s atomic writes / local copies / uploads, and both model registries publish on a URL.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmcf_core import fsio, storage
from llmcf_core.config import CONFIG_DIR, load_config_file
from llmcf_core.layout import DataPaths, partition_dir_name

DAY = dt.date(1998, 1, 15)


@pytest.fixture
def bucket():
    """A fresh bucket in fsspec's process-wide in-memory filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    name = f"llmcf-test-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    yield fs, name
    fs.rm(name, recursive=True)


@pytest.fixture
def table() -> pa.Table:
    return pa.table({"sample_id": ["a", "b"], "label": pa.array([1, 0], pa.int8())})


# --------------------------------------------------------------------------------------------------
# Works today
# --------------------------------------------------------------------------------------------------


def test_pyarrow_and_pandas_use_fsspec_urls(bucket, table) -> None:
    fs, name = bucket
    part = f"{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}/{storage.PART_FILE}"
    pq.write_table(table, part, filesystem=fs)
    assert pq.read_table(part, filesystem=fs).equals(table)
    # pandas (what data.sources reads user files with) resolves the URL through fsspec itself.
    assert pd.read_parquet(f"memory://{part}")["sample_id"].tolist() == ["a", "b"]


def test_upath_keeps_the_artifact_layout_for_urls(bucket, tmp_path) -> None:
    from upath import UPath

    fs, name = bucket
    local = DataPaths(tmp_path, "ml-100k").samples(DAY).relative_to(tmp_path.resolve()).as_posix()
    folder = UPath(f"memory://{name}/llmcf") / "ml-100k" / "samples" / partition_dir_name(DAY)
    assert str(folder) == f"memory://{name}/llmcf/{local}"
    (folder / storage.MANIFEST).write_text(json.dumps({"rows": 2}))
    assert json.loads(fs.cat(f"{name}/llmcf/{local}/{storage.MANIFEST}")) == {"rows": 2}
    # The cloud schemes parse the same way (no I/O, so no s3fs/gcsfs or credentials needed here).
    for scheme in ("s3", "gs"):
        assert str(UPath(f"{scheme}://bucket/llmcf") / "ml-100k") == f"{scheme}://bucket/llmcf/ml-100k"


# --------------------------------------------------------------------------------------------------
# The library on an object store
# --------------------------------------------------------------------------------------------------


def test_cluster_home_may_be_an_object_store_url(monkeypatch) -> None:
    monkeypatch.setenv("LLMCF_HOME", "s3://llmcf-bucket/prod")
    assert str(load_config_file(CONFIG_DIR / "cluster.yaml").home) == "s3://llmcf-bucket/prod"


def test_data_paths_accept_a_url() -> None:
    paths = DataPaths("memory://llmcf-bucket/llmcf", "ml-100k")  # type: ignore[arg-type]
    assert str(paths.samples(DAY)) == "memory://llmcf-bucket/llmcf/ml-100k/samples/dt=1998-01-15"


def test_publish_table_writes_to_an_object_store(bucket, table, tmp_path, monkeypatch) -> None:
    fs, name = bucket
    monkeypatch.chdir(tmp_path)  # a URL taken for a relative local folder would land here
    final = f"memory://{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}"
    storage.publish_table(table, final, {"partition": DAY.isoformat()})  # type: ignore[arg-type]
    assert fs.exists(f"{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}/{storage.MANIFEST}")


def test_check_tasks_read_manifests_from_an_object_store(bucket, table) -> None:
    fs, name = bucket
    folder = f"{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}"
    pq.write_table(table, f"{folder}/{storage.PART_FILE}", filesystem=fs)
    fs.pipe(f"{folder}/{storage.MANIFEST}", json.dumps({"rows": 2, "file": storage.PART_FILE}).encode())
    assert storage.read_manifest(f"memory://{folder}") == {"rows": 2, "file": storage.PART_FILE}  # type: ignore[arg-type]
    assert storage.read_partition(f"memory://{folder}").equals(table)  # type: ignore[arg-type]


def test_ingest_job_accepts_object_store_inputs(bucket, llmcf_home) -> None:
    """`jobs.ingest --interactions s3://... --items s3://...` reads the inputs through fsspec."""
    from jobs import ingest

    fs, name = bucket
    ts = int(dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC).timestamp())
    rows = ["user_id,item_id,rating,timestamp"]
    rows += [f"{u},{i},4.0,{ts + 60 * u + i}" for u in range(1, 4) for i in range(1, 4)]
    fs.pipe(f"{name}/in/interactions.csv", ("\n".join(rows) + "\n").encode())
    fs.pipe(f"{name}/in/items.csv", b"item_id,title,genres\n1,A,Drama\n2,B,Comedy\n3,C,Drama\n")
    rc = ingest.main(
        [
            "--dataset", "mylogs", "--partition", "2024-05-01",
            "--interactions", f"memory://{name}/in/interactions.csv",
            "--items", f"memory://{name}/in/items.csv",
        ]
    )  # fmt: skip
    assert rc == 0


def test_republishing_on_an_object_store_is_idempotent_and_keeps_one_previous_part(bucket, table) -> None:
    fs, name = bucket
    final = f"memory://{name}/llmcf/ds/samples/{partition_dir_name(DAY)}"
    first = storage.publish_table(table, final, {"partition": DAY.isoformat()})
    assert first.changed and storage.read_manifest(final)["file"] == f"part-{first.sha256[:16]}.parquet"
    assert storage.publish_table(table, final).changed is False  # same bytes: nothing written

    versions = [pa.table({"sample_id": [f"v{i}"], "label": pa.array([i % 2], pa.int8())}) for i in range(3)]
    results = [storage.publish_table(t, final) for t in versions]
    assert storage.read_partition(final).equals(versions[-1])
    parts = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{name}/llmcf/ds") if "/part-" in p)
    # The current part and the one before it (a reader holding the older manifest can finish).
    assert parts == sorted(f"part-{r.sha256[:16]}.parquet" for r in results[-2:])
    assert storage.read_manifest(final)["rows"] == 1


def test_quarantine_and_unpublished_folders_on_an_object_store(bucket, table) -> None:
    fs, name = bucket
    folder = f"memory://{name}/llmcf/ds/quarantine/samples/{partition_dir_name(DAY)}"
    storage.write_quarantine(table, folder, {"rule": "r", "failed": 2})
    assert storage.read_manifest(folder)["report"] == {"rule": "r", "failed": 2}
    with pytest.raises(FileNotFoundError, match="not a published partition"):
        storage.read_partition(f"memory://{name}/llmcf/ds/samples/{partition_dir_name(DAY)}")
    fsio.rmtree(folder)
    assert not fs.exists(f"{name}/llmcf/ds/quarantine/samples")


def test_fsio_writes_copies_and_uploads(bucket, tmp_path, monkeypatch) -> None:
    fs, name = bucket
    monkeypatch.setenv("LLMCF_CACHE", str(tmp_path / "cache"))
    pointer = f"memory://{name}/models/latest"
    assert fsio.read_json(pointer) is None
    fsio.write_json_atomic(pointer, {"version": "a"})
    assert fsio.read_json(pointer) == {"version": "a"}

    local = tmp_path / "model"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "sub" / "w.bin").write_bytes(b"123")
    (local / "metadata.json").write_text('{"v": 1}')
    fsio.upload_dir(local, f"memory://{name}/models/m1", last="metadata.json")
    assert sorted(fs.find(f"{name}/models/m1")) == [
        f"/{name}/models/m1/config.json",
        f"/{name}/models/m1/metadata.json",
        f"/{name}/models/m1/sub/w.bin",
    ]
    copy = fsio.local_copy(f"memory://{name}/models/m1", marker="metadata.json")
    assert not fsio.is_url(copy) and (copy / "sub" / "w.bin").read_bytes() == b"123"
    assert str(tmp_path / "cache") in str(copy)
    assert fsio.local_copy(f"memory://{name}/models/m1", marker="metadata.json") == copy  # cached
    fs.pipe(f"{name}/models/m1/sub/w.bin", b"456")
    fs.pipe(f"{name}/models/m1/metadata.json", b'{"v": 22}')  # a new export: the marker changed
    assert (
        fsio.local_copy(f"memory://{name}/models/m1", marker="metadata.json") / "sub" / "w.bin"
    ).read_bytes() == b"456"
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        fsio.local_copy(f"memory://{name}/models/none", marker="metadata.json")
    # lobj:// paths are deliberately not os.PathLike: no code can fall back to local file calls.
    assert not hasattr(fsio.as_path(f"lobj://{tmp_path}/x"), "__fspath__")


def test_rec_registry_publishes_on_an_object_store(bucket, tmp_path) -> None:
    from llmcf_core.rec import registry as rec_registry

    fs, name = bucket
    home = fsio.as_path(f"memory://{name}/llmcf")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "model.pt").write_bytes(b"weights")
    metrics = {"primary_metric": "auc", "valid": {"auc": 0.7}, "baseline_floor": {"name": "b", "valid": 0.6}}
    (staged / "metrics.json").write_text(json.dumps(metrics))
    final = rec_registry.version_dir(home, "DIN", "base", "ds-all-s0-abc123")
    rec_registry.commit_folder(staged, final)
    assert rec_registry.is_complete(final) and not staged.exists()
    decision = rec_registry.publish_gate(home, "ds", "DIN", "base", "ds-all-s0-abc123", tolerance=0.0)
    assert (
        decision.published and rec_registry.current_version(home, "ds", "DIN", "base") == "ds-all-s0-abc123"
    )


def test_recgen_registry_refuses_then_publishes_on_an_object_store(bucket) -> None:
    from llmcf_core.llm import registry

    fs, name = bucket
    home = fsio.as_path(f"memory://{name}/llmcf")
    cand = registry.candidate_dir(home, "v1")
    fs.pipe(f"{cand.path}/config.json", b"{}")
    fs.pipe(f"{cand.path}/model.safetensors", b"w")
    fs.pipe(f"{cand.path}/metadata.json", b"{}")
    with pytest.raises(registry.GateRefused, match="has not been evaluated"):
        registry.publish(home, "v1")
    fsio.write_json_atomic(cand / "eval" / "gate.json", {"passed": False, "reasons": ["worse"]})
    with pytest.raises(registry.GateRefused, match="worse"):
        registry.publish(home, "v1")
    assert registry.latest_version(home) is None
    fsio.write_json_atomic(cand / "eval" / "gate.json", {"passed": True})
    out = registry.publish(home, "v1")
    assert out["changed"] and registry.latest_version(home) == "v1"
    assert registry.is_model_dir(registry.version_dir(home, "v1")) and not cand.exists()
    assert fs.isfile(f"{registry.version_dir(home, 'v1').path}/eval/gate.json")
    assert registry.publish(home, "v1")["changed"] is False  # a retry is a no-op


# --------------------------------------------------------------------------------------------------
# Real S3 calls: s3fs against moto's S3 server (in this process, on a free localhost port)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_bucket():
    """An S3 endpoint (moto) and a bucket; s3fs is pointed at it through fsspec's config."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        patch.setenv(key, value)
    patch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="llmcf-test")
    try:
        yield "s3://llmcf-test"
    finally:
        patch.undo()
        fsspec.filesystem("s3").clear_instance_cache()
        server.stop()


def test_storage_and_pointers_on_s3(s3_bucket, table) -> None:
    final = f"{s3_bucket}/llmcf/ds/samples/{partition_dir_name(DAY)}"
    first = storage.publish_table(table, final, {"partition": DAY.isoformat()})
    assert first.changed and storage.read_partition(final).equals(table)
    assert storage.publish_table(table, final).changed is False
    newer = pa.table({"sample_id": ["c"], "label": pa.array([1], pa.int8())})
    assert storage.publish_table(newer, final).changed and storage.read_partition(final).equals(newer)
    root = fsio.as_path(f"{s3_bucket}/llmcf/ds/samples")
    assert root.is_dir() and [p.name for p in root.glob("dt=*")] == [partition_dir_name(DAY)]
    fsio.write_json_atomic(f"{s3_bucket}/llmcf/ds/cot/CURRENT", {"model_version": "m"})
    assert fsio.read_json(f"{s3_bucket}/llmcf/ds/cot/CURRENT") == {"model_version": "m"}
    fsio.rmtree(f"{s3_bucket}/llmcf/ds")
    assert not storage.is_published(final) and fsio.read_json(f"{s3_bucket}/llmcf/ds/cot/CURRENT") is None


def test_ingest_job_and_registry_on_an_s3_data_root(s3_bucket, tmp_path, monkeypatch) -> None:
    from jobs import ingest
    from llmcf_core.config import load_config
    from llmcf_core.rec import registry as rec_registry

    home = f"{s3_bucket}/ingest-{tmp_path.name[-8:]}"
    monkeypatch.setenv("LLMCF_HOME", home)
    monkeypatch.setenv("LLMCF_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    load_config.cache_clear()
    try:
        ts = int(dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC).timestamp())
        inter = tmp_path / "interactions.csv"
        inter.write_text("user_id,item_id,rating,timestamp\n" + "".join(
            f"{u},{i},4.0,{ts + 60 * u + i}\n" for u in range(1, 4) for i in range(1, 4)))  # fmt: skip
        items = tmp_path / "items.csv"
        items.write_text("item_id,title,genres\n1,A,Drama\n2,B,Comedy\n3,C,Drama\n")
        argv = [
            "--dataset",
            "mylogs",
            "--partition",
            "2024-05-01",
            "--interactions",
            str(inter),
            "--items",
            str(items),
        ]
        assert ingest.main(argv) == 0
        samples = DataPaths(home, "mylogs").samples(dt.date(2024, 5, 1))
        assert str(samples).startswith("s3://") and storage.read_partition(samples).num_rows == 9

        staged = tmp_path / "model"
        staged.mkdir()
        (staged / "model.pt").write_bytes(b"w")
        (staged / "metrics.json").write_text(
            json.dumps(
                {
                    "primary_metric": "auc",
                    "valid": {"auc": 0.6},
                    "baseline_floor": {"name": "b", "valid": 0.5},
                }
            )
        )
        final = rec_registry.version_dir(fsio.as_path(home), "DIN", "base", "mylogs-all-s0-abc")
        rec_registry.commit_folder(staged, final)
        decision = rec_registry.publish_gate(
            home, "mylogs", "DIN", "base", "mylogs-all-s0-abc", tolerance=0.0
        )
        assert decision.published
        copy = fsio.local_copy(final, marker="metrics.json")
        assert (copy / "model.pt").read_bytes() == b"w" and not (tmp_path / "s3:").exists()
    finally:
        load_config.cache_clear()
