"""The users dimension table: MovieLens loaders, custom users files, and what a bad one does."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pandas as pd
import pyarrow as pa
import pytest

from jobs import ingest
from llmcf_core import storage
from llmcf_core.config import DatasetConfig
from llmcf_core.data import users as users_mod
from llmcf_core.data.sources import _package_dir, load_users, resolve_source
from llmcf_core.layout import DataPaths, InvalidArgument
from llmcf_core.quality import check_users

from .conftest import DAY

ML100K_DAY = dt.date(1998, 1, 15)


def _result_line(out: str) -> dict:
    line = next(ln for ln in out.splitlines() if ln.startswith("LLMCF_RESULT "))
    return json.loads(line.removeprefix("LLMCF_RESULT "))


def _raw_ml100k_users() -> pd.DataFrame:
    path = _package_dir("recbole") / "dataset_example" / "ml-100k" / "ml-100k.user"
    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df.set_index("user_id")


def test_ml100k_ingest_publishes_users_with_bucketed_ages(llmcf_home, capsys):
    assert ingest.main(["--dataset", "ml-100k", "--partition", ML100K_DAY.isoformat()]) == 0
    result = _result_line(capsys.readouterr().out)
    assert result["users_rows"] == 943 and result["checks"]["users"] is True
    paths = DataPaths(llmcf_home, "ml-100k")
    assert paths.users == llmcf_home / "ml-100k" / "users"
    table = storage.read_partition(paths.users)
    assert table.schema == users_mod.USERS_SCHEMA
    assert table.schema.names == ["user_id", "age_group", "gender", "occupation"]
    users = table.to_pandas().set_index("user_id")
    assert len(users) == 943 and users.index.is_unique and list(users.index) == list(range(1, 944))
    assert set(users.age_group) == set(users_mod.AGE_GROUPS)
    assert set(users.gender) == {"M", "F"}

    # Known users, read from the raw file: boundary ages of each group.
    raw = _raw_ml100k_users()
    want = {
        30: ("7", "<18"),
        67: ("17", "<18"),
        52: ("18", "18-24"),
        1: ("24", "18-24"),
        22: ("25", "25-34"),
        18: ("35", "35-44"),
        14: ("45", "45-49"),
        15: ("49", "45-49"),
        60: ("50", "50-55"),
        91: ("55", "50-55"),
        173: ("56", "56+"),
        481: ("73", "56+"),
    }
    for uid, (age, group) in want.items():
        assert raw.loc[str(uid), "age"] == age, uid
        row = users.loc[uid]
        assert row.age_group == group, uid
        assert (row.gender, row.occupation) == (raw.loc[str(uid), "gender"], raw.loc[str(uid), "occupation"])

    # Every sample's user is in the table; another day's ingest rewrites it byte-identically.
    samples = storage.read_partition(paths.samples(ML100K_DAY)).to_pandas()
    assert set(samples.user_id) <= set(users.index)
    sha = storage.read_manifest(paths.users)["sha256"]
    assert ingest.main(["--dataset", "ml-100k", "--partition", "1998-01-16"]) == 0
    assert storage.read_manifest(paths.users)["sha256"] == sha


def test_ml1m_loader_decodes_age_and_occupation_codes():
    src = resolve_source(DatasetConfig(source="movielens-1m"))
    assert src.users is not None and src.users.name == "ml-1m.user"
    users = users_mod.render_users(load_users(src))
    assert len(users) == 6040 and users.user_id.is_unique and users.user_id.dtype == "int64"
    assert list(users.columns) == ["user_id", "age_group", "gender", "occupation"]
    by_id = users.set_index("user_id")
    # users.dat: 1::F::1::10, 2::M::56::16, 3::M::25::15, 4::M::45::7 (zip codes dropped).
    assert by_id.loc[1].tolist() == ["<18", "F", "K-12 student"]
    assert by_id.loc[2].tolist() == ["56+", "M", "self-employed"]
    assert by_id.loc[3].tolist() == ["25-34", "M", "scientist"]
    assert by_id.loc[4].tolist() == ["45-49", "M", "executive/managerial"]
    assert set(users.age_group) == set(users_mod.AGE_GROUPS)
    assert set(users.occupation) == set(users_mod.ML1M_OCCUPATIONS.values())
    assert check_users(users, dataset="ml-1m").success
    table = users_mod.users_to_arrow(users)
    assert table.schema == users_mod.USERS_SCHEMA and table.num_rows == 6040


def _users_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [3, 1, 2],
            "age": [17, 56, None],
            "age_group": [None, None, "25-34"],
            "gender": ["F", "M", None],
            "occupation": ["student", 7, "writer"],
            "zip_code": ["55455", "10001", "94110"],
        }
    )


def _write_users(tmp_path, users: pd.DataFrame, fmt: str = "csv") -> list[str]:
    path = tmp_path / f"users.{fmt}"
    if fmt == "csv":
        users.to_csv(path, index=False)
    else:
        users.to_parquet(path, index=False)
    return ["--users", str(path)]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_custom_dataset_with_a_users_file(fmt, custom_logs, write_logs, tmp_path, llmcf_home, capsys):
    users = _users_frame()
    if fmt == "parquet":
        users["occupation"] = users["occupation"].astype(str)  # Parquet needs one type a column
    flags = write_logs(*custom_logs, fmt=fmt) + _write_users(tmp_path, users, fmt)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 0
    assert _result_line(capsys.readouterr().out)["users_rows"] == 3
    table = storage.read_partition(DataPaths(llmcf_home, "shop").users)
    assert table.schema == users_mod.USERS_SCHEMA  # zip_code and the raw age are not published
    assert table.to_pylist() == [
        {"user_id": 1, "age_group": "56+", "gender": "M", "occupation": "7"},
        {"user_id": 2, "age_group": "25-34", "gender": None, "occupation": "writer"},
        {"user_id": 3, "age_group": "<18", "gender": "F", "occupation": "student"},
    ]


def test_custom_dataset_without_a_users_file_publishes_no_users(
    custom_logs, write_logs, tmp_path, llmcf_home, capsys
):
    paths = DataPaths(llmcf_home, "shop")
    flags = write_logs(*custom_logs)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 0
    result = _result_line(capsys.readouterr().out)
    assert result["users_rows"] is None and "users" not in result["checks"]
    assert storage.is_published(paths.samples(DAY)) and not paths.users.exists()

    # With a users file, then without: the table follows the latest ingest's inputs.
    users_flags = _write_users(tmp_path, _users_frame())
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags, *users_flags]) == 0
    assert storage.is_published(paths.users)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 0
    assert not paths.users.exists()


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_bad_users_file_fails_names_rule_and_count_and_publishes_nothing(
    custom_logs, write_logs, tmp_path, llmcf_home, capsys
):
    users = pd.DataFrame(
        {
            "user_id": [1, 2, 2, 3],
            "age": [30, 41, 42, -4],
            "gender": ["F", "M", "M", "F"],
        }
    )
    flags = write_logs(*custom_logs) + _write_users(tmp_path, users)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 3
    lines = _error_lines(capsys.readouterr().err)
    head = next(i for i, ln in enumerate(lines) if "data check failed" in ln)
    assert lines[head].startswith("ingest: data check failed: users check FAILED for shop: 2 of")
    rules = lines[head + 1 :]
    assert rules[0].startswith("  - expect_column_values_to_be_unique(user_id): 2 rows"), rules
    assert rules[1].startswith("  - expect_column_values_to_be_between(age, min=0, max=120): 1 rows"), rules
    assert f"ingest dt={DAY.isoformat()}: 3 users rows quarantined" in rules[1]

    paths = DataPaths(llmcf_home, "shop")
    for folder in (paths.users, paths.items, paths.samples(DAY)):
        assert not folder.exists(), folder
    quarantine = paths.quarantine("users", DAY)
    bad = storage.read_partition(quarantine).to_pandas()
    assert sorted(bad.user_id) == [2, 2, 3] and bad.age.tolist() == [41, 42, -4]
    assert storage.read_manifest(quarantine)["report"]["suite"] == "users"

    # Repaired: publishes, and the clean run clears the quarantine.
    users = users.drop_duplicates("user_id").assign(age=[30, 41, 44])
    flags = write_logs(*custom_logs) + _write_users(tmp_path, users)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 0
    assert storage.is_published(paths.users) and not quarantine.exists()


def test_interactions_of_users_missing_from_the_users_file_fail(
    custom_logs, write_logs, tmp_path, llmcf_home, capsys
):
    users = pd.DataFrame({"user_id": [1, 3], "gender": ["F", "M"]})  # user 2 rates on DAY
    flags = write_logs(*custom_logs) + _write_users(tmp_path, users)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 3
    err = capsys.readouterr().err
    assert "interactions check FAILED for shop dt=2024-05-02" in err
    assert "expect_column_values_to_be_in_set(user_id, known_user_ids[2]): 2 rows" in err
    paths = DataPaths(llmcf_home, "shop")
    assert not paths.users.exists() and not paths.samples(DAY).exists()
    assert set(
        storage.read_partition(paths.quarantine("interactions", DAY)).column("user_id").to_pylist()
    ) == {2}


def test_users_flag_needs_the_logs_and_a_known_format(custom_logs, write_logs, tmp_path, llmcf_home, capsys):
    users_flags = _write_users(tmp_path, _users_frame())
    assert ingest.main(["--dataset", "ml-100k", "--partition", "1998-01-15", *users_flags]) == 2
    assert "--users only comes with them" in capsys.readouterr().err
    (tmp_path / "users.json").write_text("{}")
    flags = write_logs(*custom_logs) + ["--users", str(tmp_path / "users.json")]
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 2
    assert "unsupported input format '.json'" in capsys.readouterr().err
    pd.DataFrame({"id": [1]}).to_csv(tmp_path / "users.csv", index=False)
    flags = write_logs(*custom_logs) + ["--users", str(tmp_path / "users.csv")]
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 2
    assert "lacks columns ['user_id']" in capsys.readouterr().err
    assert not any(llmcf_home.rglob("dt=*"))


def test_dataset_config_users_path_is_for_custom_datasets_only(tmp_path):
    with pytest.raises(ValueError, match="'users' is for source=custom only"):
        DatasetConfig(source="movielens-100k", users="users.csv")
    files = {}
    for name in ("interactions", "items", "users"):
        files[name] = str(tmp_path / f"{name}.csv")
        pd.DataFrame({"user_id": [1]}).to_csv(files[name], index=False)
    src = resolve_source(DatasetConfig(source="custom", **files))
    assert src.kind == "custom" and str(src.users) == files["users"]
    assert (
        resolve_source(
            DatasetConfig(source="custom", interactions=files["interactions"], items=files["items"])
        ).users
        is None
    )
    with pytest.raises(InvalidArgument, match="input file not found"):
        resolve_source(DatasetConfig(source="custom", **{**files, "users": str(tmp_path / "nope.csv")}))


def test_age_groups_bucket_raw_ages_and_leave_bad_ones_null():
    ages = pd.Series(
        [0, 17, 18, 24.0, "25", 34, 35, 44, 45, 49, 50, 55, 56, 120, 121, -1, 30.5, "x", None, True]
    )
    got = users_mod.age_groups(ages).tolist()
    assert got == [
        "<18", "<18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44", "45-49", "45-49",
        "50-55", "50-55", "56+", "56+", None, None, None, None, None, None,
    ]  # fmt: skip
    assert isinstance(
        users_mod.users_to_arrow(users_mod.render_users(pd.DataFrame({"user_id": [1]}))), pa.Table
    )
