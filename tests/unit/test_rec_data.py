"""Dataset assembly from hand-built artifacts (the shared schemas), and the offline metrics."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest

from llmcf_core import storage
from llmcf_core.config import CONFIG_DIR, load_config_file
from llmcf_core.layout import CotVersion, DataPaths, InvalidArgument, RetrievalPaths
from llmcf_core.rec import metrics as M
from llmcf_core.rec.dataset import load_tables, vectors
from llmcf_core.rec.synthetic import FIRST_DAY, SYNTH_COT_VERSION, write_synthetic_dataset

EMBEDDER = "synth-enc"


@pytest.fixture
def home(tmp_path):
    write_synthetic_dataset(tmp_path, "synth", n_users=10, n_items=12, days=(2, 1, 1), per_user_per_day=2)
    return tmp_path


def _settings(home):
    return load_config_file(CONFIG_DIR / "local.yaml").model_copy(update={"home": home})


def test_tables_join_samples_examples_and_cots(home):
    tables = load_tables(_settings(home), "synth", embedder=EMBEDDER)
    paths = DataPaths(home, "synth")
    samples = pa.concat_tables(
        storage.read_partition(paths.samples(FIRST_DAY + dt.timedelta(days=d))) for d in range(4)
    )
    n = samples.num_rows
    longest = max(len(h) for h in samples.column("history_item_ids").to_pylist())
    assert tables.user.shape == (n,) and tables.hist.shape == (n, longest)  # unconfigured dataset: observed
    assert tables.stats["rows"] == {"train": 40, "valid": 20, "test": 20}
    assert tables.k == 4 and tables.nb_row.shape == (n, 4)

    # Row i's history holds the item indices of its history_item_ids (newest kept, right-padded).
    i = int(np.argmax([len(h) for h in samples.column("history_item_ids").to_pylist()]))
    raw_hist = samples.column("history_item_ids")[i].as_py()
    assert tables.item_ids[tables.hist[i, : len(raw_hist)] - 1].tolist() == raw_hist
    assert (tables.hist[i, len(raw_hist) :] == 0).all()

    # Neighbours point at the rows of the sample ids the neighbours table names.
    nb = storage.read_partition(_nb(home, FIRST_DAY + dt.timedelta(days=3)))
    q = nb.column("sample_id")[5].as_py()
    row = int(np.flatnonzero(tables.sample_id == q)[0])
    ids = [s for s in nb.column("neighbor_ids")[5].as_py() if s]
    assert tables.sample_id[tables.nb_row[row][tables.nb_row[row] >= 0]].tolist() == ids
    # ...with the retrieval's similarity of each (0 on padding), for the retrieved-examples baselines
    want = np.array(nb.column("neighbor_scores")[5].as_py(), dtype=np.float32)
    np.testing.assert_allclose(tables.nb_score[row], np.where(tables.nb_row[row] >= 0, want, 0.0))

    batch = tables.batch(np.array([row]))
    assert batch["nb_hist"].shape == (1, 4, longest) and batch["nb_cot"].shape == (1, 4, 16)
    assert batch["nb_mask"][0].sum().item() == len(ids)
    # the example's CoT is the pool's cot_vec of that example
    pool = pa.concat_tables(
        storage.read_partition(
            RetrievalPaths(home, "synth", EMBEDDER).pool(
                FIRST_DAY + dt.timedelta(days=d), CotVersion.parse(SYNTH_COT_VERSION)
            )
        )
        for d in range(2)
    )
    pool_ids = pool.column("sample_id").to_pylist()
    cot, _ = vectors(pool.column("cot_vec"))
    np.testing.assert_allclose(batch["nb_cot"][0, 0].numpy(), cot[pool_ids.index(ids[0])])
    # the example's label and features are its own sample row's
    ex_row = tables.nb_row[row, 0]
    assert batch["nb_label"][0, 0].item() == tables.label[ex_row]
    assert batch["nb_item"][0, 0].item() == tables.item[ex_row]


def test_base_variant_reads_no_neighbours_and_until_limits_days(home):
    tables = load_tables(_settings(home), "synth", embedder=EMBEDDER, with_icl=False)
    assert tables.nb_row is None and "nb_user" not in tables.batch(np.arange(3))
    early = load_tables(_settings(home), "synth", embedder=EMBEDDER, until=FIRST_DAY + dt.timedelta(days=1))
    assert early.stats["days"] == 2
    # no valid day yet: the newest 10% of train rows validate instead
    assert early.valid_source.startswith("holdout") and len(early.rows("valid")) == 4
    assert early.fingerprint != tables.fingerprint


def _nb(home, day):
    """The synthetic dataset's ctr neighbours of ``day`` (under its promoted CoT version)."""
    return RetrievalPaths(home, "synth", EMBEDDER).neighbors(day, "ctr", CotVersion.parse(SYNTH_COT_VERSION))


def test_unknown_neighbour_ids_become_padding(home):
    day = FIRST_DAY + dt.timedelta(days=3)
    nb = storage.read_partition(_nb(home, day))
    ids = nb.column("neighbor_ids").to_pylist()
    ids[0] = ["no-such-sample"] + ids[0][1:]
    storage.publish_table(
        nb.set_column(1, "neighbor_ids", pa.array(ids, pa.list_(pa.string()))),
        _nb(home, day),
    )
    tables = load_tables(_settings(home), "synth", embedder=EMBEDDER)
    assert tables.stats["neighbor_ids_unknown"] == 1
    row = int(np.flatnonzero(tables.sample_id == nb.column("sample_id")[0].as_py())[0])
    assert tables.nb_row[row, 0] == -1


def test_missing_inputs_are_clear_errors(home, tmp_path_factory):
    with pytest.raises(InvalidArgument, match="no item embeddings"):
        load_tables(_settings(home), "synth", embedder="other-encoder")
    with pytest.raises(InvalidArgument, match="no published samples"):
        load_tables(_settings(home), "nothing-here", embedder=EMBEDDER)
    import shutil

    shutil.rmtree(_nb(home, FIRST_DAY).parent)
    with pytest.raises(InvalidArgument, match="no published neighbours"):
        load_tables(_settings(home), "synth", embedder=EMBEDDER)
    assert (
        load_tables(_settings(home), "synth", embedder=EMBEDDER, task="sequential").k == 4
    )  # its own artifact


def test_vectors_handle_nulls():
    col = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32(), 2))
    m, ok = vectors(col)
    assert ok.tolist() == [True, False, True]
    np.testing.assert_array_equal(m, [[1, 2], [0, 0], [3, 4]])


def test_auc_logloss_and_topk_by_hand():
    # pairs (pos, neg): (.9,.1)=1 (.9,.5)=1 (.5,.1)=1 (.5,.5)=0.5 -> 3.5 / 4
    assert M.auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.5, 0.5])) == pytest.approx(0.875)
    assert math.isnan(M.auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert M.logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    ranks = M.target_ranks(np.array([[0.1, 0.9, 0.3], [0.5, 0.5, 0.1]]), np.array([1, 0]))
    assert ranks.tolist() == [0, 1]  # ties count against the target
    out = M.topk_metrics(np.array([0, 4, 20]), ks=(1, 5))
    assert out["hit@1"] == pytest.approx(1 / 3) and out["hit@5"] == pytest.approx(2 / 3)
    assert out["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 3)
