"""jobs.replay: every refresh stage over a range of days in one process, resumable and idempotent.

Real stages on the tiny three-day dataset: ingest + GX checks, CoT generation with tiny-llama (in
process, below cot.ray_min_prompts), MiniLM embeddings into embedded Qdrant, exact retrieval for
both tasks. No Ray: everything here is small enough for the in-process paths.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs import replay
from llmcf_core import storage
from llmcf_core.cot import pipeline
from llmcf_core.layout import CotVersion, DataPaths
from llmcf_core.retrieval.spec import PoolSpec
from llmcf_core.retrieval.store import QdrantStore
from tests.integration.retrieval_timeline import DATASET, DAYS, write_logs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from llmcf_core.llm.models import resolve_model

    return str(resolve_model("tiny-llama", tmp_path_factory.getbasetemp() / "cot-models"))


def _argv(logs: list[str], tiny_dir: str, *extra: str) -> list[str]:
    small = {
        "cot.model": tiny_dir,
        "cot.backend": "transformers",
        "cot.pool_fraction": 1,
        "cot.ray_min_prompts": 1000,
        "cot.decoding.max_new_tokens": 8,
        "cot.decoding.min_new_tokens": 4,
        "cot.min_cot_chars": 1,
        "cot.decoding.num_candidates": 1,
        "qdrant.verify_queries": 2,
    }
    sets = [a for key, value in small.items() for a in ("--set", f"{key}={value}")]
    span = ["--from", DAYS[0].isoformat(), "--to", DAYS[-1].isoformat()]
    return ["--dataset", DATASET, *span, *logs, "--tasks", "ctr,next_item", *sets, *extra]


def _result(capsys) -> dict:
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("LLMCF_RESULT ")]
    return json.loads(lines[-1].removeprefix("LLMCF_RESULT "))


def _version(tiny_dir: str) -> CotVersion:
    """The CoT version the replay's CoT stage writes with the tiny model folder."""
    return CotVersion(Path(tiny_dir).name, "v1-lc")


def _manifests(paths: DataPaths, version: CotVersion) -> dict[str, dict]:
    """{folder relative to the dataset root: manifest} of the samples and both neighbour tasks."""
    out = {}
    for artifact in ("samples", f"neighbors/{version.folder}", f"neighbors_next_item/{version.folder}"):
        for day in DAYS:
            manifest = storage.read_manifest(paths.partition(artifact, day))
            assert manifest is not None, f"{artifact} dt={day} is not published"
            out[f"{artifact}/dt={day}"] = manifest
    return out


def test_replay_runs_every_stage_for_every_day_and_reruns_change_nothing(
    llmcf_home, settings, tiny_dir, tmp_path, capsys
):
    logs = write_logs(tmp_path / "logs")
    assert replay.main(_argv(logs, tiny_dir, "--promote")) == 0
    first = _result(capsys)
    paths = DataPaths(llmcf_home, DATASET)
    version = _version(tiny_dir)
    manifests = _manifests(paths, version)
    samples = sum(m["rows"] for k, m in manifests.items() if k.startswith("samples/"))
    assert first["days"] == 3 and first["samples_rows"] == samples == 30
    assert first["cot_generated"] == first["pool_rows"] == 30  # pool_fraction=1, every sample is train
    assert set(first["stage_seconds"]) == {"samples_s", "cot_s", "embed_s", "neighbors_s"}
    # --promote: the replay's version is promoted at the end (cot/CURRENT and the alias).
    assert first["cot_version"] == version.folder and first["promoted"]["alias_moved"] is True
    from llmcf_core.layout import read_current

    assert read_current(paths)["model_version"] == version.model_version
    with QdrantStore.open(settings.qdrant, llmcf_home, owner="test") as store:
        live = store.live(DATASET)
        assert live is not None and store.count(live[0]) == 30 and live[1].cot == version

    # A rerun (what resuming after a failure does) generates nothing and republishes nothing.
    assert replay.main(_argv(logs, tiny_dir, "--promote")) == 0
    again = _result(capsys)
    assert again["cot_generated"] == 0 and again["pool_rows"] == 30
    assert again["promoted"]["alias_moved"] is False and again["promoted"]["current_moved"] is False
    assert _manifests(paths, version) == manifests
    with QdrantStore.open(settings.qdrant, llmcf_home, owner="test") as store:
        assert store.count(store.live(DATASET)[0]) == 30


def test_replay_on_an_object_store_root_publishes_the_same_data(
    llmcf_home, tiny_dir, tmp_path, monkeypatch, capsys
):
    """The same replay with ``LLMCF_HOME=memory://...`` (fsspec's in-memory filesystem standing in
    for S3/GCS): every partition has the same content hash as on a local root, is committed by its
    manifest naming a content-addressed part file, and nothing lands in a local folder."""
    import fsspec

    from llmcf_core.config import load_config

    logs = write_logs(tmp_path / "logs")
    assert replay.main(_argv(logs, tiny_dir)) == 0
    local = _manifests(DataPaths(llmcf_home, DATASET), _version(tiny_dir))

    bucket = f"llmcf-replay-{tmp_path.name[-12:]}"
    monkeypatch.setenv("LLMCF_HOME", f"memory://{bucket}/llmcf")
    monkeypatch.setenv("LLMCF_CACHE", str(tmp_path / "cache"))  # embedded Qdrant stays local
    monkeypatch.chdir(tmp_path)
    load_config.cache_clear()
    fs = fsspec.filesystem("memory")
    try:
        assert replay.main(_argv(logs, tiny_dir, "--promote")) == 0
        result = _result(capsys)
        remote = _manifests(DataPaths(f"memory://{bucket}/llmcf", DATASET), _version(tiny_dir))
        assert result["samples_rows"] == 30 and result["cot_generated"] == 30
        assert {k: m["sha256"] for k, m in remote.items()} == {k: m["sha256"] for k, m in local.items()}
        for key, manifest in remote.items():
            assert manifest["file"] == f"part-{manifest['sha256'][:16]}.parquet"
            assert fs.isfile(f"/{bucket}/llmcf/{DATASET}/{key}/{manifest['file']}")
        assert fs.cat(f"/{bucket}/llmcf/{DATASET}/cot/CURRENT")  # the CoT pointer, one object
        assert not list(fs.glob(f"/{bucket}/llmcf/{DATASET}/cot/*/_blocks/*"))  # blocks cleaned up
        assert not (tmp_path / "memory:").exists()
        assert (tmp_path / "cache" / "qdrant").is_dir()
    finally:
        fs.rm(f"/{bucket}", recursive=True)
        load_config.cache_clear()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stages", "samples,train"], "--stages must be"),
        (["--tasks", "ctr,clicks"], "--tasks must be"),
        (["--set", "cot.pool_fraction=7"], "invalid override"),
        (["--set", "nosuch.field=1"], "SECTION.FIELD=VALUE"),
    ],
)
def test_bad_arguments_exit_2(extra, message, llmcf_home, tmp_path, capsys):
    argv = ["--dataset", DATASET, "--from", "2024-05-01", "--to", "2024-05-03", *extra]
    assert replay.main(argv) == 2
    assert message in capsys.readouterr().err


def test_reversed_range_and_missing_inputs_are_bad_arguments(llmcf_home, capsys):
    assert replay.main(["--dataset", DATASET, "--from", "2024-05-03", "--to", "2024-05-01"]) == 2
    assert "is before --from" in capsys.readouterr().err
    # No logs for a dataset the config does not know: the first day's ingest refuses, naming the day.
    assert replay.main(["--dataset", DATASET, "--from", "2024-05-01", "--to", "2024-05-01"]) == 2
    err = capsys.readouterr().err
    assert "replay stopped at tiny dt=2024-05-01 stage samples" in err


def test_embed_skips_days_without_cot_only_when_asked(llmcf_home, settings, tiny_dir, tmp_path, capsys):
    """A pool generated for part of the days (a GPU lease that ran out): without the flag the embed
    stage stops at the first day with no CoT partition, naming it; with it those days add nothing
    to the pool, are listed in the result, and every day's samples still get neighbours."""
    logs = write_logs(tmp_path / "logs")
    first = ["--from", DAYS[0].isoformat(), "--to", DAYS[0].isoformat()]
    assert replay.main(_argv(logs, tiny_dir, "--stages", "samples")) == 0
    assert replay.main(_argv(logs, tiny_dir, "--stages", "cot", *first)) == 0
    capsys.readouterr()

    version = _version(tiny_dir)
    # Without the cot stage the replay reads the promoted version: there is none yet.
    assert replay.main(_argv(logs, tiny_dir, "--stages", "embed,neighbors")) == 2
    assert "no current CoT version" in capsys.readouterr().err
    stages = ["--stages", "embed,neighbors", "--cot-version", version.folder]
    assert replay.main(_argv(logs, tiny_dir, *stages)) == 2
    err = capsys.readouterr().err
    assert f"no published CoT partition for {DAYS[1]}" in err
    assert f"replay stopped at {DATASET} dt={DAYS[1]} stage embed" in err

    assert replay.main(_argv(logs, tiny_dir, *stages, "--skip-days-without-cot")) == 0
    result = _result(capsys)
    assert result["embed_skipped_days"] == [DAYS[1].isoformat(), DAYS[2].isoformat()]
    assert result["pool_rows"] == 10  # day 0's samples only
    paths = DataPaths(llmcf_home, DATASET)
    for day in DAYS:
        assert storage.is_published(paths.partition(f"neighbors/{version.folder}", day)), day
        assert storage.is_published(paths.partition(f"neighbors_next_item/{version.folder}", day)), day
    e = settings.embedding
    with QdrantStore.open(settings.qdrant, llmcf_home, owner="test") as store:
        assert store.live(DATASET) is None  # nothing promoted: no alias
        name = store.collection_of(PoolSpec(DATASET, e.embedder, e.dim, version.model_version, "v1-lc"))
        assert store.count(name) == 10


def test_the_cot_stage_over_several_days_shares_model_calls_and_publishes_what_day_by_day_does(
    llmcf_home, tiny_dir, tmp_path, monkeypatch, capsys
):
    """--cot-days: the three days' 30 prompts go through one batched generate() call instead of one
    call per day (a day's few prompts otherwise pay every decode step alone), and every day's CoT
    partition is published on its own with the same rows as a day-by-day replay (--cot-days 1)."""
    from llmcf_core.config import load_config
    from llmcf_core.cot.engine_hf import TransformersGenerator

    calls: list[int] = []
    real_call = TransformersGenerator.__call__

    def counting(self, batch):
        calls.append(len(batch))
        return real_call(self, batch)

    monkeypatch.setattr(TransformersGenerator, "__call__", counting)
    timed: list[tuple[float, list]] = []  # (wall seconds, results) of each several-day CoT call
    real_partitions = pipeline.generate_cot_partitions

    def timing(*args, **kwargs):
        started = time.perf_counter()
        results = real_partitions(*args, **kwargs)
        timed.append((time.perf_counter() - started, results))
        return results

    monkeypatch.setattr(pipeline, "generate_cot_partitions", timing)
    logs = write_logs(tmp_path / "logs")
    version = _version(tiny_dir)
    wide = ["--stages", "samples,cot", "--set", "cot.batch_size=32"]
    published = {}
    for days_per_call, home in (("1", llmcf_home), ("30", tmp_path / "home-30")):
        monkeypatch.setenv("LLMCF_HOME", str(home))
        load_config.cache_clear()
        calls.clear()
        timed.clear()
        assert replay.main(_argv(logs, tiny_dir, *wide, "--cot-days", days_per_call)) == 0
        result = _result(capsys)
        assert result["cot_generated"] == 30 and result["stage_seconds"]["cot_s"] > 0
        assert calls == ([10, 10, 10] if days_per_call == "1" else [30])
        if days_per_call == "30":  # the call's seconds are shared out once: the days sum to the call
            [(wall, results)] = timed
            assert all(r.day_s > 0 for r in results)
            assert sum(r.day_s for r in results) == pytest.approx(wall, rel=0.05, abs=0.05)
            assert result["stage_seconds"]["cot_s"] == pytest.approx(sum(r.day_s for r in results), abs=0.05)
        paths = DataPaths(home, DATASET)
        published[days_per_call] = {
            day: storage.read_partition(paths.cot_partition(day, version)).to_pandas() for day in DAYS
        }
        for day in DAYS:  # each day's partition holds that day's pool, nothing of the others'
            samples = storage.read_partition(paths.samples(day)).to_pandas()
            rows = published[days_per_call][day]
            assert sorted(rows["sample_id"]) == sorted(samples["sample_id"])
            assert rows["error"].isna().all()
    for day in DAYS:
        one, many = (published[k][day].sort_values("sample_id", ignore_index=True) for k in ("1", "30"))
        assert list(one["sample_id"]) == list(many["sample_id"])
        assert list(one["label"]) == list(many["label"])
    load_config.cache_clear()
    assert replay.main(_argv(logs, tiny_dir, "--cot-days", "0")) == 2
    assert "--cot-days must be >= 1" in capsys.readouterr().err
