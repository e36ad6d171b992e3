"""The CoT quality report (``llmcf_core.cot.report``) and its job, on hand-built CoT partitions."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from llmcf_core import layout, storage
from llmcf_core.cot import report
from llmcf_core.cot.blocks import to_table
from llmcf_core.data.items import items_to_arrow, render_items
from llmcf_core.data.samples import SAMPLES_SCHEMA
from llmcf_core.layout import DataPaths, InvalidArgument, RetrievalPaths
from llmcf_core.retrieval.embed import vectors_to_arrow
from llmcf_core.retrieval.pool import pool_schema
from llmcf_core.retrieval.spec import PoolSpec

REPO = Path(__file__).resolve().parents[2]
DS = "ml-100k"
DAY1, DAY2 = dt.date(1998, 1, 15), dt.date(1998, 1, 16)
MV, PV = "smollm2-135m", "v1-nolabel"
VERSION = f"{MV}__{PV}"

LIKE = (
    "1. The user's history shows a steady taste for animated comedies and light family films. "
    "2. Toy Story is an animated comedy. 3. This fits the profile well. 4. It extends a familiar genre. "
    "The user is likely to like the target item."
)
DISLIKE = (
    "1. The user mostly watched thrillers and crime dramas with dark themes. 2. The target is a "
    "heist comedy set in one hotel. 3. Poor match for this profile. 4. It is far from their usual "
    "choices. The user is unlikely to enjoy it."
)
WRONG = (
    "1. The user watches many action films and spy stories. 2. GoldenEye is a spy action film. "
    "3. A close match. 4. It repeats their usual choice. The user will probably love it."
)
TRUNCATED = (
    "1. The user rates science fiction highly and enjoys space adventures of the seventies. "
    "2. Star Wars is the archetype of the genre, with"
)
SHORT = "Likely yes."
REPETITIVE = "The user likes comedies. " * 12
# The v1 template's instructions, verbatim: every 8-gram is in the prompt.
ECHO = (
    "Write your reasoning as four numbered points: 1. The user's profile: what the history shows "
    "about their tastes. 2. The target item's features. 3. How well the target item matches the "
    "user's profile."
)

# sample_id -> (day, label, text, n_tokens, finish_reason); None text = a failed row
ROWS = {
    "1-1-100": (DAY1, 1, LIKE, 40, "stop"),
    "2-3-101": (DAY1, 0, DISLIKE, 44, "stop"),
    "3-4-102": (DAY1, 1, TRUNCATED, 64, "length"),
    "4-1-103": (DAY1, 1, SHORT, 3, "stop"),
    "5-2-104": (DAY1, 0, None, 0, "error"),
    "6-1-200": (DAY2, 0, REPETITIVE, 60, "stop"),
    "7-2-201": (DAY2, 1, ECHO, 45, "stop"),
    "8-2-202": (DAY2, 0, WRONG, 38, "stop"),
}


def _publish_items(paths: DataPaths) -> None:
    items = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "title": ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Star Wars (1977)"],
            "year": [1995, 1995, 1995, 1977],
            "genres": [["Animation", "Comedy"], ["Action", "Thriller"], ["Comedy"], ["Sci-Fi", "War"]],
        }
    )
    storage.publish_table(items_to_arrow(render_items(items)), paths.items, {"dataset": DS})


def _publish_samples(paths: DataPaths, day: dt.date) -> None:
    rows = []
    for sid, (d, label, *_rest) in ROWS.items():
        if d != day:
            continue
        user, item, ts = (int(x) for x in sid.split("-"))
        rows.append(
            {
                "sample_id": sid,
                "user_id": user,
                "item_id": item,
                "timestamp": ts,
                "rating": 4.0 if label else 2.0,
                "label": label,
                "history_item_ids": [3, 4],
                "history_timestamps": [1, 2],
                "history_labels": [1, 0],
                "split": "train",
                "dt": day.isoformat(),
            }
        )
    table = pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)
    storage.publish_table(table, paths.samples(day), {"dataset": DS, "partition": day.isoformat()})


def _publish_cot(paths: DataPaths, day: dt.date, rows: dict, mv: str = MV, pv: str = PV) -> None:
    frame = pd.DataFrame(
        [
            {
                "sample_id": sid,
                "label": label,
                "cot_text": text,
                "model_version": mv,
                "prompt_version": pv,
                "n_tokens": n_tokens,
                "finish_reason": finish,
                "score": None,
                "error": None if text is not None else "candidate 0: empty generation",
            }
            for sid, (d, label, text, n_tokens, finish) in rows.items()
            if d == day
        ]
    )
    meta = {"dataset": DS, "partition": day.isoformat(), "model_version": mv, "prompt_version": pv}
    storage.publish_table(to_table(frame), layout.version_dir(paths, day, mv, pv), meta)


def _publish_pool(settings, day: dt.date, labels, vectors, pv: str = PV) -> None:
    rpaths = RetrievalPaths(settings.home, DS, settings.embedding.embedder)
    vectors = np.asarray(vectors, np.float32)
    n, dim = vectors.shape
    table = pa.table(
        {
            "sample_id": pa.array([f"p-{i}" for i in range(n)], pa.string()),
            "user_id": pa.array(range(n), pa.int64()),
            "timestamp": pa.array(range(n), pa.int64()),
            "label": pa.array(labels, pa.int8()),
            "history_vec": vectors_to_arrow(vectors),
            "target_vec": vectors_to_arrow(vectors),
            "cot_vec": vectors_to_arrow(vectors),
        },
        schema=pool_schema(dim),
    )
    spec = PoolSpec(DS, settings.embedding.embedder, dim, MV, pv)
    storage.publish_table(table, rpaths.pool(day, spec.cot), {"spec": spec.to_dict()})


E = np.eye(4, dtype=np.float32)
SAME = (E[0] + E[1]) / math.sqrt(2)


@pytest.fixture
def fixture_home(settings):
    """Two days of version smollm2-135m__v1-nolabel (CURRENT), samples, items and one pool day."""
    paths = DataPaths(settings.home, DS)
    _publish_items(paths)
    for day in (DAY1, DAY2):
        _publish_samples(paths, day)
        _publish_cot(paths, day, ROWS)
    layout.write_current(paths, MV, PV)
    # label 0: three identical vectors; label 1: three orthogonal ones
    _publish_pool(settings, DAY1, [0, 0, 0, 1, 1, 1], [SAME, SAME, SAME, E[1], E[2], E[3]])
    # a pool day built from another CoT version is not used
    _publish_pool(settings, DAY2, [0, 1], [E[0], E[0]], pv="v1-lc")
    return settings


def test_text_rules():
    assert report.repeated_ngram_share(report.words(REPETITIVE)) > report.REPEAT_MAX_SHARE
    assert report.repeated_ngram_share(report.words(LIKE)) < 0.1
    assert report.repeated_ngram_share(["a", "b"]) == 0.0
    prompt = report.words("one two three four five six seven eight nine")
    assert report.echo_share(report.words("one two three four five six seven eight"), prompt) == 1.0
    assert report.echo_share(report.words("two three four five six seven eight nine ten"), prompt) == 0.5
    assert report.echo_share(["too", "short"], prompt) == 0.0
    assert report.stated_verdict("1. x. The user is likely to like it.") == 1
    assert report.stated_verdict("1. x. The user is not very likely to enjoy it.") == 0
    assert report.stated_verdict("They are unlikely to like it.") == 0
    assert report.stated_verdict("The user won't watch it.") == 0
    assert report.stated_verdict("1. The profile.\n2. The item.") is None


def test_mean_pairwise_cosine():
    assert report.mean_pairwise_cosine(np.tile(SAME, (5, 1))) == pytest.approx(1.0)
    assert report.mean_pairwise_cosine(E) == pytest.approx(0.0)
    assert report.mean_pairwise_cosine(E[:1]) is None
    assert report.mean_pairwise_cosine(np.zeros((3, 4))) is None  # zero rows are left out


def test_counts_lengths_and_flags(fixture_home):
    out = report.cot_quality(fixture_home, DS)  # the version CURRENT names
    assert out["version"] == VERSION
    assert out["days"] == {"count": 2, "first": "1998-01-15", "last": "1998-01-16"}
    assert (out["rows"], out["failed"], out["texts"]) == (8, 1, 7)
    tokens = [40, 44, 64, 3, 60, 45, 38]
    assert out["tokens"]["mean"] == pytest.approx(np.mean(tokens), abs=0.01)
    assert out["tokens"]["p50"] == pytest.approx(np.percentile(tokens, 50))
    assert out["words"]["p10"] is not None and out["words"]["p90"] >= out["words"]["p50"]
    assert out["truncated"]["count"] == 1 and out["truncated"]["share"] == pytest.approx(1 / 7, abs=1e-4)
    deg = out["degenerate"]
    assert (deg["short"]["count"], deg["short"]["examples"]) == (1, ["4-1-103"])
    assert (deg["repetitive"]["count"], deg["repetitive"]["examples"]) == (1, ["6-1-200"])
    assert (deg["echo"]["count"], deg["echo"]["examples"]) == (1, ["7-2-201"])
    assert deg["echo"]["checked"] == 7 and deg["echo"]["note"] is None
    assert deg["any"]["count"] == 3 and deg["any"]["share"] == pytest.approx(3 / 7, abs=1e-4)
    # -nolabel: verdicts of the last sentence (the truncated text has none): LIKE, DISLIKE and
    # SHORT agree; REPETITIVE ("likes") and WRONG ("love") contradict a label 0.
    agreement = out["label_agreement"]
    assert agreement["measured"] is True
    assert (agreement["stated"], agreement["agreement"]) == (5, 0.6)
    assert out["label_1_share"] == pytest.approx(4 / 7, abs=1e-4)


def test_within_label_diversity(fixture_home, monkeypatch):
    div = report.cot_quality(fixture_home, DS, VERSION)["diversity"]
    assert div["days"] == 1 and div["reason"] is None  # the v1-lc pool day is left out
    assert div["label_0"] == {"rows": 3, "sampled": 3, "mean_cosine": 1.0}
    assert div["label_1"] == {"rows": 3, "sampled": 3, "mean_cosine": 0.0}
    assert div["centroid_cosine"] == pytest.approx(1 / math.sqrt(6), abs=1e-4)
    monkeypatch.setattr(report, "DIVERSITY_MAX_PER_LABEL", 2)
    capped = report.cot_quality(fixture_home, DS, VERSION)["diversity"]
    assert capped["label_1"] == {"rows": 3, "sampled": 2, "mean_cosine": 0.0}
    assert capped == report.cot_quality(fixture_home, DS, VERSION)["diversity"]  # fixed seed


def test_missing_embeddings_give_null_diversity(fixture_home):
    out = report.cot_quality(fixture_home, DS, VERSION, embedder="other-embedder")
    div = out["diversity"]
    assert div["days"] == 0 and div["centroid_cosine"] is None and "other-embedder" in div["reason"]
    assert div["label_0"]["mean_cosine"] is None and div["label_1"]["mean_cosine"] is None
    assert "n/a" in report.render_markdown(out)


def test_label_conditioned_version_skips_agreement_and_echo_without_samples(fixture_home):
    paths = DataPaths(fixture_home.home, DS)
    day = dt.date(1998, 1, 20)  # no samples partition that day
    _publish_cot(paths, day, {"9-1-300": (day, 1, LIKE, 40, "stop")}, pv="v1-lc")
    out = report.cot_quality(fixture_home, DS, f"{MV}__v1-lc")
    assert out["label_agreement"]["measured"] is False and out["label_agreement"]["agreement"] is None
    assert out["degenerate"]["echo"]["checked"] == 0 and out["degenerate"]["echo"]["share"] is None
    assert "1998-01-20" in out["degenerate"]["echo"]["note"]


def test_unknown_version_and_no_current(fixture_home, tmp_path):
    with pytest.raises(InvalidArgument, match=f"published versions: {VERSION}"):
        report.cot_quality(fixture_home, DS, "nope__v1-lc")
    with pytest.raises(InvalidArgument, match="malformed CoT version"):
        report.cot_quality(fixture_home, DS, "nope")
    with pytest.raises(InvalidArgument, match="no current CoT version"):
        report.cot_quality(fixture_home, "ml-1m")


def test_write_report_and_markdown(fixture_home):
    out = report.cot_quality(fixture_home, DS)
    path = report.write_report(fixture_home, DS, out)
    folder = Path(fixture_home.home) / DS / "cot" / "_reports" / VERSION
    assert path == folder / "quality.json"
    assert json.loads(path.read_text())["degenerate"]["echo"]["count"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["quality.json", "quality.md"]  # no temp files
    table = report.render_markdown(out)
    assert table.startswith("| metric | value |") and "| truncated (finish reason length) | 14.3% |" in table
    assert table in (folder / "quality.md").read_text()
    # the report folder is not a version or a day for the readers of the CoT layout
    assert report.published_versions(DataPaths(fixture_home.home, DS)) == [VERSION]


def _job(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMCF_PROFILE", "LLMCF_CONFIG_FILE")}
    env["LLMCF_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "jobs.cot_report", "--dataset", DS, "--profile", "local", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_job_cli(fixture_home):
    home = Path(fixture_home.home)
    done = _job(home)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("LLMCF_RESULT ")
    result = json.loads(last.removeprefix("LLMCF_RESULT "))
    assert result["job"] == "cot_report" and result["version"] == VERSION and result["texts"] == 7
    assert Path(result["path"]) == home / DS / "cot" / "_reports" / VERSION / "quality.json"
    assert json.loads(Path(result["path"]).read_text())["rows"] == 8

    bad = _job(home, "--version", "nope__v1-lc")
    assert bad.returncode == 2
    assert "LLMCF_RESULT" not in bad.stdout
    lines = bad.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("cot_report: invalid argument:") and "nope__v1-lc" in lines[0]
    )
