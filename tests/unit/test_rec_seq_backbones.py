"""The SR-GNN and YouTube DNN next-item backbones: shapes, edge-case histories, SR-GNN's session
graph, order (in)sensitivity, and that each learns a tiny deterministic next-item task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcf_core.config import RecModelConfig
from llmcf_core.rec.backbones import MODELS, SequentialModel, build_model
from llmcf_core.rec.backbones.srgnn import session_graph
from llmcf_core.rec.spec import DataSpec

NEW = ("SRGNN", "YoutubeDNN")
N_ITEMS = 20
L = 6
K = 3
TEXT_DIM = 8
HP = RecModelConfig(seq_hidden=32, ict_width_sequential=32, n_negatives=8, lr=0.01, seq_loss="sampled")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


def _spec(n_items: int = N_ITEMS, history_len: int = L) -> DataSpec:
    rng = np.random.default_rng(0)
    text = rng.standard_normal((n_items + 1, TEXT_DIM)).astype(np.float32)
    text[0] = 0.0
    return DataSpec(
        n_users=4,
        n_items=n_items,
        n_genres=1,
        history_len=history_len,
        k=K,
        item_text=text,
        item_genres=np.zeros((n_items + 1, 1), dtype=np.int64),
    )


def _hist(rows: list[list[int]], length: int = L) -> torch.Tensor:
    return torch.tensor([r + [0] * (length - len(r)) for r in rows], dtype=torch.long)


def _batch(hist: torch.Tensor, *, with_ict: bool) -> dict[str, torch.Tensor]:
    """A batch in ``RecTables.batch``'s layout, with K retrieved examples when ``with_ict``."""
    g = torch.Generator().manual_seed(1)
    B, length = hist.shape
    batch = {
        "user": torch.ones(B, dtype=torch.long),
        "item": torch.randint(1, N_ITEMS + 1, (B,), generator=g),
        "hist": hist,
        "hist_fb": (hist > 0).long() * 2,
        "label": torch.ones(B),
    }
    if with_ict:
        nb_hist = torch.randint(1, N_ITEMS + 1, (B, K, length), generator=g)
        nb_hist[..., length // 2 :] = 0  # right padding
        nb_mask = torch.ones(B, K, dtype=torch.bool)
        nb_mask[0, -1] = False  # one padded example
        batch |= {
            "nb_user": torch.ones(B, K, dtype=torch.long),
            "nb_item": torch.randint(1, N_ITEMS + 1, (B, K), generator=g),
            "nb_hist": nb_hist,
            "nb_hist_fb": (nb_hist > 0).long() * 2,
            "nb_label": torch.randint(0, 2, (B, K), generator=g),
            "nb_mask": nb_mask,
            "nb_cot": torch.randn(B, K, TEXT_DIM, generator=g),
            "nb_cot_mask": torch.ones(B, K, dtype=torch.bool),
        }
    return batch


def test_both_are_registered_sequential_backbones():
    for name in NEW:
        assert issubclass(MODELS[name], SequentialModel)
        assert MODELS[name].task == "sequential"


@pytest.mark.parametrize("variant", ["base", "llmcf"])
@pytest.mark.parametrize("name", NEW)
def test_shapes_and_a_training_step(name, variant):
    torch.manual_seed(0)
    model = build_model(name, _spec(), HP, variant)
    assert (model.ict is None) == (variant == "base")
    hist = _hist([[3, 5, 3, 7], [1], [], [2, 4, 6, 8, 10, 12]])
    batch = _batch(hist, with_ict=variant != "base")

    model.train()
    terms = model.calculate_loss(batch)
    assert torch.isfinite(terms.total)
    assert (terms.recon.item() > 0) == (variant == "llmcf")
    terms.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        u = model.encode(hist)
        full = model.full_sort_predict(batch)
        scores = model.predict(batch)
    assert u.shape == (4, HP.seq_hidden)
    assert full.shape == (4, N_ITEMS)
    assert scores.shape == (4,)
    torch.testing.assert_close(full[torch.arange(4), batch["item"] - 1], scores)


@pytest.mark.parametrize("name", [*NEW, "GRU4Rec", "SASRec"])
def test_empty_and_length_one_histories_give_finite_vectors(name):
    torch.manual_seed(0)
    model = build_model(name, _spec(), HP, "base")
    hist = _hist([[], [], [9], [4]])
    for mode in (True, False):
        model.train(mode)
        u = model.encode(hist)
        assert u.shape == (4, HP.seq_hidden)
        assert torch.isfinite(u).all()
        u.sum().backward()
    model.eval()
    with torch.no_grad():
        u = model.encode(hist)
    torch.testing.assert_close(u[0], u[1])  # the same empty history, the same vector
    assert not torch.allclose(u[2], u[3])  # a single item is read


def test_session_graph_of_a_hand_built_history():
    g = session_graph(_hist([[3, 5, 3, 7]]))
    # Nodes: 3, 5, 7 in ascending order, then the padding node.
    assert g.alias[0].tolist() == [0, 1, 0, 2, 3, 3]
    assert g.items[0].tolist() == [3, 5, 7, 0, 0, 0]
    # Edges 3->5, 5->3, 3->7: out-degrees 2, 1, 0; in-degrees 1, 1, 1.
    a_out = torch.zeros(L, L)
    a_out[0, 1] = a_out[0, 2] = 0.5  # 3 -> {5, 7}, each 1/2
    a_out[1, 0] = 1.0  # 5 -> 3
    a_in = torch.zeros(L, L)
    a_in[0, 1] = 1.0  # 3 <- 5
    a_in[1, 0] = 1.0  # 5 <- 3
    a_in[2, 0] = 1.0  # 7 <- 3
    torch.testing.assert_close(g.a_out[0], a_out)
    torch.testing.assert_close(g.a_in[0], a_in)


def test_session_graph_of_empty_and_single_item_histories():
    g = session_graph(_hist([[], [4]]))
    assert g.alias.tolist() == [[0] * L, [0] + [1] * (L - 1)]
    assert g.items.tolist() == [[0] * L, [4] + [0] * (L - 1)]
    assert g.a_in.abs().sum() == 0 and g.a_out.abs().sum() == 0


def _reference_graph(row: list[int], length: int) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """RecBole's per-sample loop (``SRGNN._get_slice``), with padding ordered after the items."""
    real = [i for i in row if i > 0]
    nodes = sorted(set(real)) + ([0] if len(real) < length else [])
    index = {item: n for n, item in enumerate(nodes)}
    adj = np.zeros((length, length))
    for u, v in zip(real, real[1:], strict=False):
        adj[index[u], index[v]] = 1.0
    in_deg = np.maximum(adj.sum(0), 1.0)
    out_deg = np.maximum(adj.sum(1), 1.0)
    items = nodes + [0] * (length - len(nodes))
    return [index[i] for i in row], items, adj.T / in_deg[:, None], adj / out_deg[:, None]


def test_session_graph_matches_the_per_sample_loop():
    rng = np.random.default_rng(3)
    length = 8
    rows = []
    for _ in range(64):
        n = int(rng.integers(0, length + 1))
        rows.append(rng.integers(1, 6, size=n).tolist())  # few distinct items: many repeats and loops
    g = session_graph(_hist(rows, length))
    for b, row in enumerate(rows):
        alias, items, a_in, a_out = _reference_graph(row + [0] * (length - len(row)), length)
        assert g.alias[b].tolist() == alias, row
        assert g.items[b].tolist() == items, row
        np.testing.assert_allclose(g.a_in[b].numpy(), a_in, err_msg=str(row))
        np.testing.assert_allclose(g.a_out[b].numpy(), a_out, err_msg=str(row))


@pytest.mark.parametrize(
    ("name", "order_matters"), [("SRGNN", True), ("GRU4Rec", True), ("YoutubeDNN", False)]
)
def test_order_of_the_history(name, order_matters):
    torch.manual_seed(0)
    model = build_model(name, _spec(), HP, "base").eval()
    seqs = [[3, 5, 3, 7], [1, 2, 4, 8, 16], [11, 12]]
    hist = _hist(seqs)
    reverse = _hist([s[::-1] for s in seqs])
    with torch.no_grad():
        u, v = model.encode(hist), model.encode(reverse)
    if order_matters:
        for b in range(len(seqs)):
            assert not torch.allclose(u[b], v[b], atol=1e-5), b
    else:
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("name", NEW)
def test_learns_a_deterministic_next_item(name):
    """Item i is always followed by i + 1 (cyclically): a few hundred full-batch steps fit it."""
    n_items, length = 12, 4
    rows, target = [], []
    for start in range(1, n_items + 1):
        for n in range(1, length + 1):
            rows.append([(start - 1 + j) % n_items + 1 for j in range(n)])
            target.append((start - 1 + n) % n_items + 1)
    hist = _hist(rows, length)
    batch = {"hist": hist, "item": torch.tensor(target)}
    hp = HP.model_copy(update={"seq_loss": "full"})
    torch.manual_seed(0)
    model = build_model(name, _spec(n_items, length), hp, "base")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(200):
        loss = model.calculate_loss(batch).task
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        eval_loss = model.calculate_loss(batch).task.item()
        hit1 = (model.full_sort_predict(batch).argmax(1) + 1 == batch["item"]).float().mean().item()
    assert loss.item() < 0.5 * math.log(n_items), loss.item()
    assert eval_loss < 0.5 * math.log(n_items), eval_loss
    # YouTube DNN sees only the set of items, which (with wrap-around) still fixes the next item
    # here; chance is 1 / n_items.
    assert hit1 > 0.8, hit1
