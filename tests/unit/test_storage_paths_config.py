"""Atomic publication, path validation and configuration loading."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pytest

from llmcf_core import storage
from llmcf_core.config import CONFIG_DIR, DecodingConfig, load_config_file, with_overrides
from llmcf_core.layout import DataPaths, InvalidArgument, check_dataset_name, parse_partition


def test_publish_is_atomic_and_idempotent(tmp_path):
    final = tmp_path / "samples" / "dt=2024-05-02"
    t1 = pa.table({"a": [1, 2, 3]})
    r1 = storage.publish_table(t1, final, {"partition": "2024-05-02"})
    assert r1.changed and r1.rows == 3
    mtime = os.stat(final / storage.PART_FILE).st_mtime_ns
    r2 = storage.publish_table(t1, final, {"partition": "2024-05-02"})
    assert not r2.changed and r2.sha256 == r1.sha256
    assert os.stat(final / storage.PART_FILE).st_mtime_ns == mtime  # untouched
    r3 = storage.publish_table(pa.table({"a": [9]}), final)
    assert r3.changed
    assert storage.read_partition(final).column("a").to_pylist() == [9]
    # no staging or trash folders left behind
    assert sorted(p.name for p in final.parent.iterdir()) == ["dt=2024-05-02"]


def test_failed_write_leaves_previous_version(tmp_path):
    final = tmp_path / "dt=2024-05-02"
    storage.publish_table(pa.table({"a": [1]}), final)

    with pytest.raises(Exception):  # noqa: B017 - any writer error
        storage.publish_table("not a table", final)  # type: ignore[arg-type]
    assert storage.read_partition(final).column("a").to_pylist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["dt=2024-05-02"]


def test_unpublished_folder_is_refused(tmp_path):
    (tmp_path / "dt=x").mkdir()
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        storage.read_partition(tmp_path / "dt=x")


@pytest.mark.parametrize("bad", ["1998-1-15", "1998-02-30", "19980115", "../../etc", "1998-01-15T00:00", ""])
def test_malformed_partitions_are_refused(bad):
    with pytest.raises(InvalidArgument, match="malformed partition"):
        parse_partition(bad)


@pytest.mark.parametrize("bad", ["../x", "a/b", "ML-100K", "", ".hidden", "a" * 70])
def test_dataset_names_cannot_escape_the_data_root(bad, tmp_path):
    with pytest.raises(InvalidArgument):
        check_dataset_name(bad)
        DataPaths(tmp_path, bad)


def test_paths_layout(tmp_path):
    p = DataPaths(tmp_path, "ml-100k")
    assert p.samples(dt.date(1998, 1, 15)) == tmp_path.resolve() / "ml-100k" / "samples" / "dt=1998-01-15"
    assert p.quarantine("samples", dt.date(1998, 1, 15)).parts[-3:] == (
        "quarantine",
        "samples",
        "dt=1998-01-15",
    )


@pytest.mark.parametrize("profile", ["local", "cluster"])
def test_profiles_load(profile, llmcf_home):
    s = load_config_file(CONFIG_DIR / f"{profile}.yaml")
    assert s.home == llmcf_home.resolve()
    assert {"ml-100k", "ml-1m"} <= set(s.datasets)


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {}\nray: {adress: x}\n")
    with pytest.raises(Exception, match="adress"):
        load_config_file(bad)


def test_overrides_reach_nested_sections(llmcf_home):
    base = load_config_file(CONFIG_DIR / "local.yaml")
    s = with_overrides(
        base, ["cot.decoding.max_new_tokens=128", "cot.decoding.do_sample=false", "cot.block_size=8"]
    )
    assert s.cot.decoding.max_new_tokens == 128 and s.cot.block_size == 8
    assert s.cot.decoding.candidates == 1  # greedy: one candidate whatever num_candidates says
    assert s.cot.decoding.num_candidates == base.cot.decoding.num_candidates  # the rest is kept
    assert base.cot.decoding.max_new_tokens != 128  # the loaded settings are not changed
    mapping = with_overrides(base, ["cot.vllm_engine_kwargs={tensor_parallel_size: 2}"])
    assert mapping.cot.vllm_engine_kwargs == {"tensor_parallel_size": 2}  # a dict field is set whole
    deep = with_overrides(base, ["cot.vllm_engine_kwargs.enforce_eager=false"])
    assert deep.cot.vllm_engine_kwargs == {**base.cot.vllm_engine_kwargs, "enforce_eager": False}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("cot.decoding.nosuch=1", "nosuch"),  # unknown field of a nested section
        ("cot.decoding.max_new_tokens=0", "max_new_tokens"),  # a bad value
        ("cot.nosuch.max_new_tokens=1", "SECTION.FIELD=VALUE"),  # unknown nested section
        ("cot.model.x=1", "SECTION.FIELD=VALUE"),  # a plain field is no section
        ("nosuch.field=1", "SECTION.FIELD=VALUE"),
        ("max_new_tokens=1", "SECTION.FIELD=VALUE"),
        ("cot..max_new_tokens=1", "SECTION.FIELD=VALUE"),
        ("cot.decoding.=1", "SECTION.FIELD=VALUE"),
        ("cot.max_new_tokens=128", "cot.decoding.max_new_tokens"),  # the old flat key points to the new one
    ],
)
def test_bad_overrides_are_refused_clearly(llmcf_home, pair, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        with_overrides(load_config_file(CONFIG_DIR / "local.yaml"), [pair])


def test_decoding_is_recorded_with_the_same_keys_as_before():
    """CoT manifests record ``cot.decoding.model_dump()``: the keys and order of the former dataclass."""
    assert list(DecodingConfig().model_dump()) == [
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "num_candidates",
        "max_new_tokens",
        "min_new_tokens",
        "seed",
    ]
    assert DecodingConfig(do_sample=False, num_candidates=3).candidates == 1


def test_rec_model_section_per_backbone_lr_and_moved_keys(llmcf_home, tmp_path):
    s = with_overrides(load_config_file(CONFIG_DIR / "local.yaml"), ["rec.model.lr=2e-3"])
    assert s.rec.model.lr == 2e-3 and s.rec.model_for("DIN").lr == 2e-3  # no lr override for DIN
    sasrec = s.rec.model_for("SASRec")  # lr_overrides replace model.lr, nothing else
    assert sasrec.lr == s.rec.lr_overrides["SASRec"] != s.rec.model.lr
    assert sasrec.model_dump(exclude={"lr"}) == s.rec.model.model_dump(exclude={"lr"})
    din = s.rec.model_for("DIN")  # user_dropout_overrides replace model.user_dropout, nothing else
    assert din.user_dropout == s.rec.user_dropout_overrides["DIN"] != s.rec.model.user_dropout
    assert din.model_dump(exclude={"user_dropout"}) == s.rec.model.model_dump(exclude={"user_dropout"})
    assert "SASRec" not in s.rec.user_dropout_overrides  # next-item versions keep model.user_dropout
    assert with_overrides(s, ["rec.user_dropout_overrides={}"]).rec.model_for("DIN") == s.rec.model
    old = tmp_path / "old.yaml"
    old.write_text("datasets: {}\nrec: {lr: 0.001, batch_size: 64}\n")
    with pytest.raises(Exception, match=r"rec\.lr is now rec\.model\.lr"):
        load_config_file(old)


def test_a_single_core_to_bind_vllm_to_is_a_core_list(llmcf_home):
    """``--set cot.vllm_cpu_threads_bind=0`` parses as the number 0; the field is a core list."""
    s = load_config_file(CONFIG_DIR / "local.yaml")
    assert with_overrides(s, ["cot.vllm_cpu_threads_bind=0"]).cot.vllm_cpu_threads_bind == "0"
    assert with_overrides(s, ["cot.vllm_cpu_threads_bind=0-3"]).cot.vllm_cpu_threads_bind == "0-3"


def test_a_number_given_for_any_text_field_is_its_text(llmcf_home, tmp_path):
    """YAML reads ``123`` and ``1.5`` as numbers; a text field takes them as text, in ``--set`` and in
    a profile file alike, while numeric fields keep their numbers and still refuse text."""
    s = load_config_file(CONFIG_DIR / "local.yaml")
    got = with_overrides(s, ["embedding.embedder=123", "cot.prompt_version=1.5", "cot.block_size=7"])
    assert (got.embedding.embedder, got.cot.prompt_version, got.cot.block_size) == ("123", "1.5", 7)
    with pytest.raises(ValueError, match="block_size"):
        with_overrides(s, ["cot.block_size=seven"])
    profile = tmp_path / "p.yaml"
    profile.write_text((CONFIG_DIR / "local.yaml").read_text() + "\nembedding: {embedder: 42}\n")
    assert load_config_file(profile).embedding.embedder == "42"
