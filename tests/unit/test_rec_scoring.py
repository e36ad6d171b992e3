"""Online scoring: the scorer equals the offline model on the same examples, the exact retriever
obeys the label balance and the time filter, a custom retriever plugs in, and the CLI runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jobs import score
from llmcf_core import storage
from llmcf_core.config import load_config
from llmcf_core.layout import CotVersion, RetrievalPaths
from llmcf_core.rec import registry
from llmcf_core.rec.dataset import load_tables
from llmcf_core.rec.scoring import ExactRetriever, RetrievalQuery, Scorer, ScoreRequest
from llmcf_core.rec.synthetic import SYNTH_COT_VERSION, write_synthetic_dataset
from llmcf_core.rec.train import train

EMBEDDER = "synth-enc"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


@pytest.fixture
def rec_settings(llmcf_home):
    write_synthetic_dataset(llmcf_home, "synth", n_users=12, n_items=15, days=(3, 1, 1))
    settings = load_config("local")
    model = settings.rec.model.model_copy(update={"mlp_dims": (16, 8)})
    rec = settings.rec.model_copy(update={"embedder": EMBEDDER, "model": model})
    return settings.model_copy(update={"rec": rec})


def _published(settings, model: str, variant: str) -> None:
    """Train one epoch and point ``latest`` at it (the publish gate has its own tests: a one-epoch
    model on this tiny set need not beat the counting baseline)."""
    result = train(settings, "synth", model, variant, workers=0, max_epochs=1)
    registry.set_pointer(settings.home, "synth", model, variant, result.version)


def _request_for(tables, row: int, n_candidates: int = 5) -> ScoreRequest:
    known = tables.hist[row] > 0
    raw_hist = tables.item_ids[tables.hist[row][known] - 1].tolist()
    labels = (tables.hist_fb[row][known] - 1).tolist()  # feedback codes 1/2 -> labels 0/1
    target = int(tables.item_ids[tables.item[row] - 1])
    others = [int(i) for i in tables.item_ids if i != target][: n_candidates - 1]
    return ScoreRequest(
        int(tables.user_ids[tables.user[row] - 1]),
        raw_hist,
        [target, *others],
        int(tables.timestamp[row]),
        labels,
    )


def test_online_scores_equal_offline_predictions(rec_settings):
    _published(rec_settings, "DIN", "llmcf")
    scorer = Scorer.load(rec_settings, "synth", "DIN", "llmcf")
    tables = load_tables(rec_settings, "synth", embedder=EMBEDDER)
    row = int(tables.rows("test")[3])
    req = _request_for(tables, row)
    examples = [[tables.sample_id[r] if r >= 0 else "" for r in tables.nb_row[row]]]
    one = ScoreRequest(
        req.user_id, req.history_item_ids, req.candidate_item_ids[:1], None, req.history_labels
    )
    online = scorer.score_with_examples(one, examples)
    with torch.no_grad():
        offline = scorer.model.predict(tables.batch(np.array([row]))).numpy()
    np.testing.assert_allclose(online, offline, rtol=1e-5)
    assert set(req.history_labels) == {0, 1}  # the row's history has both kinds of feedback
    # The feedback reaches the model: flipping it changes the score.
    flipped = ScoreRequest(
        one.user_id, one.history_item_ids, one.candidate_item_ids, None, [1 - x for x in one.history_labels]
    )
    assert not np.allclose(scorer.score_with_examples(flipped, examples), online)

    scores = scorer.score(req)  # with the exact retriever
    assert scores.shape == (5,) and np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    unknown = scorer.score(ScoreRequest(req.user_id, req.history_item_ids, [9999, req.candidate_item_ids[0]]))
    assert np.isnan(unknown[0]) and np.isfinite(unknown[1])


def test_exact_retriever_is_label_balanced_and_time_filtered():
    rng = np.random.default_rng(0)
    hv, tv = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32)
    ids = np.array([f"s{i}" for i in range(10)])
    labels = np.array([1, 0] * 5)
    ts = np.arange(10) * 100
    retriever = ExactRetriever(ids, ts, labels, hv, tv)
    query = RetrievalQuery(1, None, hv[0], tv[:3], k=4)
    out = retriever(query)
    assert len(out) == 3 and all(len(row) == 4 for row in out)
    for q, row in enumerate(out):
        got = [int(s[1:]) for s in row]
        assert sorted(labels[got]) == [0, 0, 1, 1]
        score = 0.5 * hv @ hv[0] + 0.5 * tv @ tv[q]
        for lab in (0, 1):
            best = sorted(np.flatnonzero(labels == lab), key=lambda j: -score[j])[:2]
            assert sorted(j for j in got if labels[j] == lab) == sorted(best)
    early = retriever(RetrievalQuery(1, 250, hv[0], None, k=4))  # only s0, s1, s2 are older
    assert sorted(s for s in early[0] if s) == ["s0", "s1", "s2"] and early[0].count("") == 1


def test_custom_retriever_plugs_in(rec_settings):
    _published(rec_settings, "SASRec", "llmcf")
    asked = []

    def retriever(query: RetrievalQuery) -> list[list[str]]:
        asked.append(query)
        return [["", "", "", ""]]

    scorer = Scorer.load(rec_settings, "synth", "SASRec", "llmcf", retriever=retriever)
    scores = scorer.score(ScoreRequest(1, [1, 2, 3], [4, 5, 6]))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert asked[0].target_vecs is None  # next item: history-only retrieval
    assert asked[0].history_vec.shape == (16,)
    assert np.linalg.norm(asked[0].history_vec) == pytest.approx(1.0, abs=1e-5)


def test_base_model_needs_no_retrieval_and_cli_prints_scores(rec_settings, capsys):
    _published(rec_settings, "DeepFM", "base")
    scorer = Scorer.load(rec_settings, "synth", "DeepFM", "base")
    assert scorer.retriever is None and scorer.score(ScoreRequest(3, [], [1, 2])).shape == (2,)
    _published(rec_settings, "DIN", "llmcf")
    args = ["--dataset", "synth", "--model", "DIN", "--variant", "llmcf", "--user", "2"]
    assert score.main([*args, "--history", "1,2,3", "--candidates", "4,5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["scores"]) == {"4", "5"} and out["latency_ms"] > 0


def test_example_store_covers_the_pool(rec_settings):
    _published(rec_settings, "DIN", "llmcf")
    scorer = Scorer.load(rec_settings, "synth", "DIN", "llmcf")
    pool_root = RetrievalPaths(rec_settings.home, "synth", EMBEDDER).pool_root(
        CotVersion.parse(SYNTH_COT_VERSION)
    )
    n_pool = sum(storage.read_partition(p).num_rows for p in sorted(pool_root.glob("dt=*")))
    assert len(scorer.store.ids) == n_pool
    tokens, mask = scorer.store.lookup([["", scorer.store.ids[0], "missing", ""]])
    assert tokens.shape == (1, 4, 3, 32) and mask.tolist() == [[False, True, False, False]]
    assert torch.count_nonzero(tokens[0, 0]) == 0
