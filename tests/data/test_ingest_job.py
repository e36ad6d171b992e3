"""`python -m jobs.ingest`: real ML-100K partitions, argument errors, and corrupted inputs."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pandas as pd
import pytest

from jobs import ingest
from llmcf_core import storage
from llmcf_core.data.sources import _package_dir
from llmcf_core.layout import DataPaths, day_bounds

from .conftest import DAY


def _result_line(out: str) -> dict:
    line = next(ln for ln in out.splitlines() if ln.startswith("LLMCF_RESULT "))
    return json.loads(line.removeprefix("LLMCF_RESULT "))


def _raw_ml100k() -> pd.DataFrame:
    path = _package_dir("recbole") / "dataset_example" / "ml-100k" / "ml-100k.inter"
    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df.astype({"timestamp": "int64"})


def test_ml100k_partition_has_exactly_that_days_ratings_and_correct_histories(llmcf_home, capsys):
    assert ingest.main(["--dataset", "ml-100k", "--partition", "1998-01-15"]) == 0
    result = _result_line(capsys.readouterr().out)
    folder = DataPaths(llmcf_home, "ml-100k").samples(dt.date(1998, 1, 15))
    got = storage.read_partition(folder).to_pandas()

    raw = _raw_ml100k()
    start, end = day_bounds(dt.date(1998, 1, 15))
    want = raw[(raw.timestamp >= start) & (raw.timestamp < end)]
    assert result["rows"] == len(got) == len(want) == 298
    assert set(zip(got.user_id, got.item_id, got.timestamp, strict=True)) == set(
        zip(want.user_id, want.item_id, want.timestamp, strict=True)
    )
    assert (got.label == (got.rating >= 4).astype("int8")).all()
    assert set(got.split) == {"train"} and set(got.dt) == {"1998-01-15"}

    # Histories recomputed independently, the slow obvious way.
    for row in got.sample(25, random_state=0).itertuples():
        mine = raw[raw.user_id == row.user_id].sort_values(["timestamp", "item_id"])
        before = mine[
            (mine.timestamp < row.timestamp)
            | ((mine.timestamp == row.timestamp) & (mine.item_id < row.item_id))
        ]
        assert list(row.history_item_ids) == before.item_id.tolist()[-20:]
        assert list(row.history_labels) == (before.rating >= 4).astype(int).tolist()[-20:]

    # A rerun gives byte-identical output and does not touch the published folder.
    sha = storage.read_manifest(folder)["sha256"]
    assert ingest.main(["--dataset", "ml-100k", "--partition", "1998-01-15"]) == 0
    rerun = _result_line(capsys.readouterr().out)
    assert rerun["changed"] is False and storage.read_manifest(folder)["sha256"] == sha


def test_items_table_is_published_with_text(llmcf_home):
    assert ingest.main(["--dataset", "ml-100k", "--partition", "1998-03-10"]) == 0
    items = storage.read_partition(DataPaths(llmcf_home, "ml-100k").items).to_pandas()
    assert len(items) == 1682
    toy = items[items.item_id == 1].iloc[0]
    assert toy.text == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"
    samples = storage.read_partition(DataPaths(llmcf_home, "ml-100k").samples(dt.date(1998, 3, 10)))
    assert set(samples.column("split").to_pylist()) == {"valid"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "ml-100k", "--partition", "1999-01-01"], "outside dataset 'ml-100k'"),
        (["--dataset", "ml-100k", "--partition", "1998-13-01"], "malformed partition"),
        (["--dataset", "ml-100k", "--partition", "15/01/1998"], "malformed partition"),
        (["--dataset", "nope", "--partition", "1998-01-15"], "unknown dataset 'nope'"),
        (["--dataset", "../etc", "--partition", "1998-01-15"], "invalid dataset name"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, llmcf_home, capsys):
    assert ingest.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(llmcf_home.rglob("dt=*"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_custom_dataset_goes_through_the_same_code(fmt, custom_logs, write_logs, llmcf_home, capsys):
    flags = write_logs(*custom_logs, fmt=fmt)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 0
    got = storage.read_partition(DataPaths(llmcf_home, "shop").samples(DAY)).to_pylist()
    assert [(r["user_id"], r["item_id"]) for r in got] == [(2, 1), (2, 4), (3, 5), (1, 3)]
    assert got[3]["history_item_ids"] == [1, 2]
    items = storage.read_partition(DataPaths(llmcf_home, "shop").items).to_pylist()
    assert items[1]["text"] == "title: Beta; year: 1991; genres: Comedy, Drama"


def _corrupt(kind: str, inter: pd.DataFrame, items: pd.DataFrame):
    inter = inter.copy()
    d1, _ = day_bounds(DAY)
    if kind == "nulls":
        inter["user_id"] = inter["user_id"].astype("Int64")
        inter.loc[3, "user_id"] = pd.NA
    elif kind == "duplicates":
        inter = pd.concat([inter, inter.iloc[[2]]], ignore_index=True)
    elif kind == "unknown_items":
        inter.loc[4, "item_id"] = 999
    elif kind == "wrong_types":
        inter["rating"] = inter["rating"].astype(object)
        inter.loc[5, "rating"] = "five"
    elif kind == "fractional_timestamp":
        inter["timestamp"] = inter["timestamp"].astype(float)
        inter.loc[2, "timestamp"] = d1 + 100.5
    elif kind == "bad_rating":
        inter.loc[2, "rating"] = 9
    return inter, items


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("nulls", "user_id"),
        ("duplicates", "duplicate"),
        ("unknown_items", "item_id"),
        ("wrong_types", "rating"),
        ("fractional_timestamp", "timestamp"),
        ("bad_rating", "rating"),
    ],
)
def test_corrupted_input_fails_names_rule_and_publishes_nothing(
    kind, rule, custom_logs, write_logs, llmcf_home, capsys
):
    flags = write_logs(*_corrupt(kind, *custom_logs))
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 3
    err = capsys.readouterr().err
    assert "data check failed" in err and DAY.isoformat() in err and rule in err, err
    paths = DataPaths(llmcf_home, "shop")
    assert not paths.samples(DAY).exists()
    quarantined = list((paths.artifact("quarantine")).glob(f"*/dt={DAY.isoformat()}"))
    assert quarantined, "failing rows must be quarantined"
    manifest = storage.read_manifest(quarantined[0])
    assert manifest["rows"] >= 1 and manifest["report"]["failures"]


def test_empty_partition_fails_when_the_dataset_requires_rows(custom_logs, write_logs, llmcf_home, capsys):
    inter, items = custom_logs
    d1, d2 = day_bounds(DAY)
    flags = write_logs(inter[(inter.timestamp < d1) | (inter.timestamp >= d2)], items)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 3
    err = capsys.readouterr().err
    assert "row_count" in err and "0" in err
    assert not DataPaths(llmcf_home, "shop").samples(DAY).exists()


def test_repaired_input_publishes_and_clears_quarantine(custom_logs, write_logs, llmcf_home, capsys):
    flags = write_logs(*_corrupt("unknown_items", *custom_logs))
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 3
    flags = write_logs(*custom_logs)
    assert ingest.main(["--dataset", "shop", "--partition", DAY.isoformat(), *flags]) == 0
    paths = DataPaths(llmcf_home, "shop")
    assert storage.is_published(paths.samples(DAY))
    assert not list(paths.artifact("quarantine").glob(f"*/dt={DAY.isoformat()}"))


def test_unreadable_user_files_end_in_one_line_naming_file_offset_and_rule(
    custom_logs, write_logs, llmcf_home, tmp_path
):
    """A Latin-1 items file (a common export) or a broken Parquet file: exit 2, one stderr line
    with the file, the byte offset and the rule, from a shell as a user meets it."""
    import subprocess
    import sys

    from llmcf_core.config import REPO_ROOT

    flags = write_logs(*custom_logs, fmt="csv")
    items_path = flags[3]
    with open(items_path, encoding="utf-8") as fh:
        text = fh.read().replace("Beta", "Bêta")
    with open(items_path, "wb") as fh:
        fh.write(text.encode("latin-1"))
    offset = text.encode("latin-1").index("ê".encode("latin-1"))

    def run(*argv: str) -> subprocess.CompletedProcess:
        env = {**__import__("os").environ, "LLMCF_HOME": str(llmcf_home)}
        cmd = [
            sys.executable,
            "-m",
            "jobs.ingest",
            "--dataset",
            "shop",
            "--partition",
            DAY.isoformat(),
            *argv,
        ]
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)

    done = run(*flags)
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert items_path in lines[0] and f"byte offset {offset} (0xea)" in lines[0] and "UTF-8" in lines[0]
    assert not any(llmcf_home.rglob("dt=*"))

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    done = run(flags[0], flags[1], "--items", str(broken))
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and str(broken) in lines[0], done.stderr
