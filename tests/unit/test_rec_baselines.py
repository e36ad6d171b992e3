"""Counting baselines on hand-built tables (values checked by hand), the history feedback the tables
carry, and the baseline floor recorded with every trained version."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from llmcf_core.rec import baselines
from llmcf_core.rec.dataset import SPLITS


def _tables(item, user, label, hist, hist_fb, split, timestamp=None):
    split = np.array([SPLITS.index(s) for s in split], dtype=np.int8)
    n_items = int(max(item.max(), hist.max()))
    return SimpleNamespace(
        item=np.asarray(item),
        user=np.asarray(user),
        label=np.asarray(label, dtype=np.int8),
        hist=np.asarray(hist),
        hist_fb=np.asarray(hist_fb),
        split=split,
        timestamp=np.asarray(timestamp if timestamp is not None else np.arange(len(item)) * 86_400),
        item_ids=np.arange(1, n_items + 1),
        user_ids=np.arange(1, int(max(user)) + 1),
        rows=lambda name: np.flatnonzero(split == SPLITS.index(name)),
    )


def test_ranking_baselines_by_hand():
    # train: item 1 liked 3 of 3 times, item 2 liked 0 of 3; valid rows: one of each item.
    item = np.array([1, 1, 1, 2, 2, 2, 1, 2])
    label = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    hist = np.zeros((8, 2), dtype=np.int64)
    hist[6:] = [[1, 2], [1, 2]]
    fb = np.zeros((8, 2), dtype=np.int64)
    fb[6:] = [[2, 2], [1, 1]]  # the valid sample of item 1 liked its history, the other did not
    tables = _tables(item, np.ones(8, int), label, hist, fb, ["train"] * 6 + ["valid"] * 2)
    scores = baselines.ranking_scores(tables, tables.rows("valid"))
    w = baselines.PRIOR_WEIGHT
    assert scores["item_rate"] == pytest.approx([(3 + w * 0.5) / (3 + w), (0 + w * 0.5) / (3 + w)])
    assert scores["history_rate"] == pytest.approx([(2 + w * 0.5) / (2 + w), (0 + w * 0.5) / (2 + w)])
    assert scores["popularity"].tolist() == [3, 3]
    result = baselines.ranking_baselines(tables)
    assert result["valid"]["item_plus_history"]["auc"] == 1.0 and "test" not in result
    assert np.isnan(result["valid"]["popularity"]["logloss"])
    assert baselines.floor(result, "ranking") == ("item_plus_history", 1.0)


def test_item_transitions_rank_the_usual_next_item_first():
    # train: after item 1 the next item is always 3; item 2 is the most popular overall.
    item = np.array([3, 3, 2, 2, 2, 2, 3])
    hist = np.array([[1, 0], [1, 0], [4, 0], [4, 0], [4, 0], [4, 0], [1, 0]])
    fb = np.where(hist > 0, 2, 0)
    tables = _tables(item, np.arange(1, 8), np.ones(7, int), hist, fb, ["train"] * 6 + ["test"])
    result = baselines.sequential_baselines(tables)["test"]
    assert result["item_transitions"]["hit@1"] == 1.0  # 1 -> 3 seen twice
    assert result["popularity"]["hit@1"] == 0.0  # item 2 is more popular than 3
    name, value = baselines.floor({"valid": result}, "sequential")
    assert name == "item_transitions" and value == pytest.approx(1.0)


def test_retrieval_baselines_count_what_the_examples_know():
    # train rows 0-3 (two liked, two not); valid rows 4-7 and test rows 8-9, each with one liked and
    # one disliked example (the retrieval is label-balanced). A liked sample's liked example is the
    # nearer one: the vote (similarity of the liked minus the disliked) ranks them right.
    n = 10
    item = np.array([1, 1, 2, 2, 1, 2, 1, 2, 1, 2])
    label = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 0])
    hist = np.zeros((n, 2), dtype=np.int64)
    fb = np.zeros((n, 2), dtype=np.int64)
    tables = _tables(item, np.ones(n, int), label, hist, fb, ["train"] * 4 + ["valid"] * 4 + ["test"] * 2)
    tables.nb_row = np.full((n, 2), -1)
    tables.nb_row[4:] = [0, 2]  # example 0 is liked, example 2 is not
    tables.nb_score = np.zeros((n, 2), dtype=np.float32)
    tables.nb_score[4:] = [[0.9, 0.2], [0.1, 0.8], [0.7, 0.5], [0.3, 0.6], [0.8, 0.1], [0.2, 0.9]]
    result = baselines.retrieval_baselines(tables, "ranking")
    assert result["test"]["examples_vote"]["auc"] == 1.0 and np.isnan(
        result["test"]["examples_vote"]["logloss"]
    )
    assert result["valid"]["item_history_examples"]["auc"] == 1.0
    # Votes that point the wrong way rank them wrong: the rows are not a relabelled counting baseline.
    tables.nb_score[8:] = tables.nb_score[8:, ::-1]
    assert baselines.retrieval_baselines(tables, "ranking")["test"]["examples_vote"]["auc"] == 0.0
    tables.nb_score = None
    with pytest.raises(ValueError, match="similarity"):
        baselines.retrieval_baselines(tables, "ranking")
    # Next item: the examples' targets, counted; item 2 (popular) loses to what the examples chose.
    fb, hist = np.zeros((5, 2), dtype=np.int64), np.zeros((5, 2), dtype=np.int64)
    seq = _tables(
        np.array([3, 2, 2, 2, 3]),
        np.arange(1, 6),
        np.ones(5, int),
        hist[:5],
        fb[:5],
        ["train"] * 4 + ["test"],
    )
    seq.nb_row = np.full((5, 2), -1)
    seq.nb_row[4] = [0, -1]  # one example, whose target was item 3
    assert baselines.retrieval_baselines(seq, "sequential")["test"]["example_targets"]["hit@1"] == 1.0
    seq.nb_row[4] = [-1, -1]  # no examples: popularity decides, and item 2 is the most popular
    assert baselines.retrieval_baselines(seq, "sequential")["test"]["example_targets"]["hit@1"] == 0.0
    with pytest.raises(ValueError, match="neighbours"):
        seq.nb_row = None
        baselines.retrieval_baselines(seq, "sequential")


def test_tables_carry_history_feedback_and_training_records_the_floor(llmcf_home):
    from llmcf_core import storage
    from llmcf_core.config import load_config
    from llmcf_core.layout import DataPaths
    from llmcf_core.rec.dataset import load_tables
    from llmcf_core.rec.synthetic import write_synthetic_dataset
    from llmcf_core.rec.train import train

    write_synthetic_dataset(llmcf_home, "synth", n_users=12, n_items=15, days=(3, 1, 1))
    settings = load_config("local")
    model = settings.rec.model.model_copy(update={"mlp_dims": (16, 8)})
    rec = settings.rec.model_copy(update={"embedder": "synth-enc", "model": model})
    settings = settings.model_copy(update={"rec": rec})
    tables = load_tables(settings, "synth", with_icl=False)
    paths = DataPaths(llmcf_home, "synth")
    day = sorted(p for p in paths.artifact("samples").iterdir() if p.name.startswith("dt="))[-1]
    raw = storage.read_partition(day, ["sample_id", "history_item_ids", "history_labels"]).to_pylist()
    row_of = {sid: i for i, sid in enumerate(tables.sample_id)}
    L = tables.hist.shape[1]
    for rec_row in raw:
        i = row_of[rec_row["sample_id"]]
        want = [lab + 1 for lab in rec_row["history_labels"][-L:]]
        assert tables.hist_fb[i][: len(want)].tolist() == want  # 1 = not liked, 2 = liked, newest kept
        assert (tables.hist_fb[i][len(want) :] == 0).all()
    assert {1, 2} <= set(np.unique(tables.hist_fb))

    result = train(settings, "synth", "DIN", "base", workers=0, max_epochs=1)
    floor = result.metrics["baseline_floor"]
    counted = result.metrics["baselines"]["valid"]
    assert floor["name"] == "item_plus_history" and floor["valid"] == counted["item_plus_history"]["auc"]
    assert {"item_rate", "user_rate", "history_rate", "popularity"} <= set(counted)
