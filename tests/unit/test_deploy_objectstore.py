"""Object-store data roots (s3://, gs://) for the cluster profile: what works today, what does not yet.

Today llmcf_core builds local pathlib paths (config._resolve_home, paths.DataPaths, storage.*,
data.sources), so a deployment keeps $LLMCF_HOME on a shared POSIX volume (docs/deploy.md). fsspec's
in-memory filesystem stands in for the object store here (no network, no credentials):

- the building blocks work: pyarrow and pandas read and write Parquet through fsspec URLs, and
  universal_pathlib's UPath (installed with Airflow, whose ObjectStoragePath builds on it) keeps the
  artifact layout for URLs;
- the library does not accept URLs yet. Each ``xfail(strict=True)`` test states one required
  behaviour; it turns into a failure (XPASS) the day that behaviour works, so whoever adds
  object-store support removes the mark. docs/deploy.md ("Object stores") lists the changes.
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

from llmcf_core import storage
from llmcf_core.config import CONFIG_DIR, load_config_file
from llmcf_core.paths import DataPaths, partition_dir_name

DAY = dt.date(1998, 1, 15)
NOT_YET = "object-store data roots are not supported yet (docs/deploy.md, 'Object stores')"


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
# Required, not there yet
# --------------------------------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_cluster_home_may_be_an_object_store_url(monkeypatch) -> None:
    # Today the URL is resolved as a local path: <cwd>/s3:/llmcf-bucket/prod.
    monkeypatch.setenv("LLMCF_HOME", "s3://llmcf-bucket/prod")
    assert str(load_config_file(CONFIG_DIR / "cluster.yaml").home) == "s3://llmcf-bucket/prod"


@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_data_paths_accept_a_url() -> None:
    paths = DataPaths("memory://llmcf-bucket/llmcf", "ml-100k")  # type: ignore[arg-type]
    assert str(paths.samples(DAY)) == "memory://llmcf-bucket/llmcf/ml-100k/samples/dt=1998-01-15"


@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_publish_table_writes_to_an_object_store(bucket, table, tmp_path, monkeypatch) -> None:
    fs, name = bucket
    monkeypatch.chdir(tmp_path)  # today the URL becomes a relative local folder: keep it in tmp
    final = f"memory://{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}"
    storage.publish_table(table, final, {"partition": DAY.isoformat()})  # type: ignore[arg-type]
    assert fs.exists(f"{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}/{storage.MANIFEST}")


@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_check_tasks_read_manifests_from_an_object_store(bucket, table) -> None:
    fs, name = bucket
    folder = f"{name}/llmcf/ml-100k/samples/{partition_dir_name(DAY)}"
    pq.write_table(table, f"{folder}/{storage.PART_FILE}", filesystem=fs)
    fs.pipe(f"{folder}/{storage.MANIFEST}", json.dumps({"rows": 2, "file": storage.PART_FILE}).encode())
    assert storage.read_manifest(f"memory://{folder}") == {"rows": 2, "file": storage.PART_FILE}  # type: ignore[arg-type]
    assert storage.read_partition(f"memory://{folder}").equals(table)  # type: ignore[arg-type]


@pytest.mark.xfail(strict=True, reason=NOT_YET)
def test_ingest_job_accepts_object_store_inputs(bucket, llmcf_home) -> None:
    """`jobs.ingest --interactions s3://... --items s3://...` (today: exit 2, 'input file not found')."""
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
