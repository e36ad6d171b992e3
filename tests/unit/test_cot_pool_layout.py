"""Pool selection, version names, the CURRENT pointer, RecGen model resolution and the DAG gate."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pyarrow as pa
import pytest

from llmcf_core import layout, storage
from llmcf_core.cot import versions as cot_versions
from llmcf_core.cot.pool import hash_unit, in_fraction, select_pool
from llmcf_core.layout import DataPaths, InvalidArgument

DAY = dt.date(1998, 1, 15)


def test_pool_is_train_only_and_a_stable_nested_fraction():
    ids = [f"{u}-{i}-{1000 + u}" for u in range(50) for i in range(40)]
    samples = pd.DataFrame({"sample_id": ids, "split": ["train"] * (len(ids) - 5) + ["valid"] * 5})
    assert len(select_pool(samples, 1.0)) == len(ids) - 5
    small, large = set(select_pool(samples, 0.1)["sample_id"]), set(select_pool(samples, 0.3)["sample_id"])
    assert small <= large  # a larger fraction contains every smaller one
    assert abs(len(small) / len(ids) - 0.1) < 0.03
    assert set(select_pool(samples.sample(frac=1.0, random_state=1), 0.1)["sample_id"]) == small  # order-free
    assert hash_unit("1-2-3") == hash_unit("1-2-3") and 0 <= hash_unit("1-2-3") < 1
    assert in_fraction(["a", "b"], 1.0).all()


def test_sanitize_version():
    assert layout.sanitize_version("RecGen:2024-05-01/run 3") == "recgen-2024-05-01-run-3"
    assert layout.sanitize_version("a__b") == "a_b"  # "__" separates model and prompt versions
    assert layout.sanitize_version("../../etc") == "etc"
    assert layout.version_name("tiny-llama", "v1-lc") == "tiny-llama__v1-lc"
    with pytest.raises(InvalidArgument):
        layout.sanitize_version("///")


def test_current_pointer_moves_atomically(tmp_path):
    paths = DataPaths(tmp_path, "ml-100k")
    assert layout.read_current(paths) is None
    assert layout.write_current(paths, "recgen-v1", "v1-lc") is True
    assert layout.write_current(paths, "recgen-v1", "v1-lc") is False  # unchanged
    assert layout.write_current(paths, "recgen-v2", "v1-lc") is True
    assert layout.read_current(paths) == {"model_version": "recgen-v2", "prompt_version": "v1-lc"}
    assert [p.name for p in (tmp_path / "ml-100k" / "cot").iterdir()] == ["CURRENT"]  # no temp files left


def test_model_current_follows_the_promoted_version(tmp_path):
    paths = DataPaths(tmp_path, "ml-100k")
    # Before any promotion `current` is the configured model; an explicit model is kept as given.
    assert cot_versions.model_for_run(paths, "current", "smollm2-135m") == "smollm2-135m"
    assert cot_versions.model_for_run(paths, "tiny-llama", "smollm2-135m") == "tiny-llama"
    layout.write_current(paths, "recgen-7", "v1-lc", "recgen:7")
    assert layout.read_current(paths) == {
        "model_version": "recgen-7",
        "prompt_version": "v1-lc",
        "model": "recgen:7",
    }
    assert cot_versions.model_for_run(paths, "current", "smollm2-135m") == "recgen:7"
    layout.write_current(paths, "old", "v1-lc")  # a pointer without the model: the configured one
    assert cot_versions.model_for_run(paths, "current", "smollm2-135m") == "smollm2-135m"


def _fake_model(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def test_resolve_recgen_models(tmp_path):
    registry = tmp_path / "models" / "recgen"
    with pytest.raises(InvalidArgument, match="no RecGen model registered"):
        cot_versions.resolve_cot_model("recgen:latest", tmp_path)
    _fake_model(registry / "20240501-1")
    _fake_model(registry / "20240601-1")
    (registry / "latest").write_text(json.dumps({"version": "20240601-1"}))
    latest = cot_versions.resolve_cot_model("recgen:latest", tmp_path)
    assert latest.path == registry / "20240601-1" and latest.model_version == "recgen-20240601-1"
    assert latest.spec == "recgen:20240601-1"  # resolved: what a promoted version's `--model current` reruns
    pinned = cot_versions.resolve_cot_model("recgen:20240501-1", tmp_path)
    assert pinned.model_version == "recgen-20240501-1"
    for bad in ("recgen:../../x", "recgen:missing"):
        with pytest.raises(InvalidArgument):
            cot_versions.resolve_cot_model(bad, tmp_path)
    folder = cot_versions.resolve_cot_model(str(registry / "20240501-1"), tmp_path)
    assert folder.model_version == "20240501-1"
    with pytest.raises(InvalidArgument, match="unknown model"):
        cot_versions.resolve_cot_model("no-such-model", tmp_path)


def test_gate_checks_the_current_version_of_the_day(tmp_path):
    paths = DataPaths(tmp_path, "ml-100k")
    with pytest.raises(InvalidArgument, match="no CoT version"):
        cot_versions.verify_cot_published(tmp_path, "ml-100k", DAY.isoformat())
    layout.write_current(paths, "m", "v1-lc")
    with pytest.raises(InvalidArgument, match="not published"):
        cot_versions.verify_cot_published(tmp_path, "ml-100k", DAY.isoformat())
    folder = layout.version_dir(paths, DAY, "m", "v1-lc")
    meta = {
        "dataset": "ml-100k",
        "partition": DAY.isoformat(),
        "model_version": "m",
        "prompt_version": "v1-lc",
    }
    storage.publish_table(pa.table({"x": [1]}), folder, {**meta, "checks": {"success": False}})
    with pytest.raises(InvalidArgument, match="check .checks. did not pass"):
        cot_versions.verify_cot_published(tmp_path, "ml-100k", DAY.isoformat())
    storage.publish_table(
        pa.table({"x": [1, 2]}), folder, {**meta, "checks": {"success": True}, "failed_rows": 0}
    )
    out = cot_versions.verify_cot_published(tmp_path, "ml-100k", DAY.isoformat())
    assert out["path"] == str(folder) and out["rows"] == 2 and out["model_version"] == "m"
    assert layout.list_versions(paths, DAY) == ["m__v1-lc"]
