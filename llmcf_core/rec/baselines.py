"""Counting baselines on the recommender's own tables, split and metrics: what a model must beat.

No learning: every statistic is counted on the train rows of the same ``RecTables`` the model
trains on, and scored on the same valid/test rows with the same metric functions.

Ranking (CTR), scores per sample:
- ``item_rate``: the target item's smoothed positive rate (pseudo-count ``PRIOR_WEIGHT`` of the
  global train rate);
- ``user_rate``: the user's smoothed positive rate on train rows (the global rate for users
  without train rows);
- ``history_rate``: the smoothed share of liked items in the sample's own history (the history
  feedback the models read: cold users have one too);
- ``item_plus_history``: ``logit(item_rate) + logit(history_rate) - logit(global rate)``, the
  naive-Bayes combination of the two; the publish gate's floor for ranking models;
- ``popularity``: the target item's train count (AUC only).

Next item (full-catalogue ranking, ties counted against the target as for the models):
- ``popularity``: train counts; ``recent_popularity``: counts over the last ``RECENT_DAYS`` days of
  train rows;
- ``item_transitions``: first-order transition counts (each train row's last ``TRANSITION_ORDER``
  history items -> its target item), summed over the sample's last ``TRANSITION_ORDER`` history
  items, ties broken by popularity. The publish floor for next-item models is the best of the three.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmcf_core.rec import metrics as M

PRIOR_WEIGHT = 10.0
RECENT_DAYS = 30
TRANSITION_ORDER = 3
RANKING_FLOOR = "item_plus_history"
SEQUENTIAL_FLOORS = ("popularity", "recent_popularity", "item_transitions")
EVAL_SPLITS = ("valid", "test")


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _rate(pos: np.ndarray, n: np.ndarray, prior: float) -> np.ndarray:
    return (pos + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)


def ranking_scores(tables: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each CTR baseline's scores (probabilities, except ``popularity``) for ``rows``."""
    train = tables.rows("train")
    labels = tables.label[train].astype(np.float64)
    prior = float(labels.mean()) if len(train) else 0.5
    n_items, n_users = len(tables.item_ids) + 1, len(tables.user_ids) + 1
    item_n = np.bincount(tables.item[train], minlength=n_items).astype(np.float64)
    item_pos = np.bincount(tables.item[train], weights=labels, minlength=n_items)
    user_n = np.bincount(tables.user[train], minlength=n_users).astype(np.float64)
    user_pos = np.bincount(tables.user[train], weights=labels, minlength=n_users)

    fb = tables.hist_fb[rows]
    item_rate = _rate(item_pos, item_n, prior)[tables.item[rows]]
    history_rate = _rate((fb == 2).sum(1), (fb > 0).sum(1), prior)
    combined = _logit(item_rate) + _logit(history_rate) - _logit(prior)
    return {
        "item_rate": item_rate,
        "user_rate": _rate(user_pos, user_n, prior)[tables.user[rows]],
        "history_rate": history_rate,
        RANKING_FLOOR: 1.0 / (1.0 + np.exp(-combined)),
        "popularity": item_n[tables.item[rows]],
    }


def ranking_baselines(tables: Any) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {baseline: {auc, logloss, n}}} on the valid and test rows."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in EVAL_SPLITS:
        rows = tables.rows(split)
        if len(rows) == 0:
            continue
        labels = tables.label[rows]
        out[split] = {}
        for name, scores in ranking_scores(tables, rows).items():
            result = M.ranking_metrics(labels, scores)
            if name == "popularity":
                result["logloss"] = float("nan")  # a count, not a probability
            out[split][name] = result
    return out


def _transition_matrix(tables: Any, train: np.ndarray, n_cols: int) -> np.ndarray:
    """(I + 1, I) counts: row = a history item index, column = the next target item index - 1."""
    hist = tables.hist[train]
    lens = (hist > 0).sum(1)
    counts = np.zeros((n_cols + 1, n_cols), dtype=np.float32)
    for back in range(1, TRANSITION_ORDER + 1):
        ok = lens >= back
        src = hist[np.flatnonzero(ok), lens[ok] - back]
        np.add.at(counts, (src, tables.item[train][ok] - 1), 1.0)
    counts[0] = 0.0  # padding
    return counts


def _popularity(tables: Any, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train counts per item (column = index - 1) and the tie-break they give: < 1, so it orders
    equal counts by popularity and never reorders counts."""
    pop = np.bincount(tables.item[train] - 1, minlength=len(tables.item_ids)).astype(np.float64)
    return pop, pop / (pop.max() + 1.0)


def sequential_baselines(tables: Any, batch_size: int = 2048) -> dict[str, dict[str, dict[str, float]]]:
    """{split: {baseline: {hit@k, ndcg@k, n}}} over the full catalogue on the valid and test rows."""
    train = tables.rows("train")
    n_items = len(tables.item_ids)
    pop, tie_break = _popularity(tables, train)
    recent_from = tables.timestamp[train].max() - RECENT_DAYS * 86_400 if len(train) else 0
    recent_rows = train[tables.timestamp[train] >= recent_from]
    recent = np.bincount(tables.item[recent_rows] - 1, minlength=n_items).astype(np.float64)
    transitions = _transition_matrix(tables, train, n_items)

    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in EVAL_SPLITS:
        rows = tables.rows(split)
        if len(rows) == 0:
            continue
        targets = tables.item[rows] - 1
        ranks: dict[str, list[np.ndarray]] = {name: [] for name in SEQUENTIAL_FLOORS}
        for i in range(0, len(rows), batch_size):
            chunk, target = rows[i : i + batch_size], targets[i : i + batch_size]
            b = len(chunk)
            ranks["popularity"].append(M.target_ranks(np.broadcast_to(pop, (b, n_items)), target))
            ranks["recent_popularity"].append(
                M.target_ranks(np.broadcast_to(recent + tie_break, (b, n_items)), target)
            )
            hist = tables.hist[chunk]
            lens = (hist > 0).sum(1)
            scores = np.zeros((b, n_items), dtype=np.float64)
            for back in range(1, TRANSITION_ORDER + 1):
                src = np.where(lens >= back, hist[np.arange(b), np.maximum(lens - back, 0)], 0)
                scores += transitions[src]
            ranks["item_transitions"].append(M.target_ranks(scores + tie_break, target))
        out[split] = {name: M.topk_metrics(np.concatenate(r)) for name, r in ranks.items()}
    return out


def _examples_vote(tables: Any, rows: np.ndarray) -> np.ndarray:
    """Per row: mean similarity of its retrieved positive examples minus that of its negatives (0
    for a side without examples). The retrieval is label-balanced (K/2 of each label), so the
    examples' label rate says nothing; which label's nearest examples are nearer does."""
    nb, score = tables.nb_row[rows], tables.nb_score[rows]
    real = nb >= 0
    lab = np.where(real, tables.label[np.maximum(nb, 0)], -1)

    def side(label: int) -> np.ndarray:
        mine = lab == label
        return np.where(mine, score, 0.0).sum(1) / np.maximum(mine.sum(1), 1)

    return side(1) - side(0)


def _logistic_fit(x: np.ndarray, y: np.ndarray, iters: int = 25, ridge: float = 1e-3) -> np.ndarray:
    """Weights of a logistic regression of ``y`` on ``x`` (with an intercept) by Newton steps."""
    xb = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))  # clipped: separable rows stay finite
        hess = xb.T @ (xb * (p * (1 - p))[:, None]) + ridge * np.eye(len(w))
        w -= np.linalg.solve(hess, xb.T @ (p - y))
    return w


def retrieval_baselines(tables: Any, task: str) -> dict[str, dict[str, dict[str, float]]]:
    """What the retrieved in-context examples know: {split: {name: metrics}} on the valid and test
    rows of ``tables`` loaded with neighbours (the llmcf variants' inputs). Not a floor for the base
    (it reads the pool); it says how much signal retrieval brings at all, so a null ICT lift can be
    told apart from examples that carry nothing a model could use.

    Ranking: ``examples_vote``, the mean retrieval similarity of the sample's positive examples
    minus its negatives' (AUC only: a difference of cosines, not a probability);
    ``item_history_examples``, a logistic regression on [logit(item_plus_history), examples_vote]
    fitted on the valid rows (three numbers, chosen on validation as a model's settings are), so its
    test AUC over ``item_plus_history``'s is what the examples add to counting. Next item:
    ``example_targets``, the examples' target items counted, ties broken by popularity (a
    k-nearest-histories recommender)."""
    if tables.nb_row is None:
        raise ValueError("retrieval baselines need the tables loaded with neighbours")
    train = tables.rows("train")
    out: dict[str, dict[str, dict[str, float]]] = {}
    if task == "ranking":
        if tables.nb_score is None:
            raise ValueError("retrieval baselines need the neighbours' similarity scores")
        feats, labels = {}, {}
        for split in EVAL_SPLITS:
            rows = tables.rows(split)
            if len(rows):
                counted = _logit(ranking_scores(tables, rows)[RANKING_FLOOR])
                feats[split] = np.column_stack([counted, _examples_vote(tables, rows)])
                labels[split] = tables.label[rows].astype(np.float64)
        w = _logistic_fit(feats["valid"], labels["valid"]) if "valid" in feats else None
        for split, x in feats.items():
            vote = M.ranking_metrics(labels[split], x[:, 1])
            vote["logloss"] = float("nan")
            out[split] = {"examples_vote": vote}
            if w is not None:
                prob = 1.0 / (1.0 + np.exp(-np.clip(w[0] + x @ w[1:], -30, 30)))
                out[split]["item_history_examples"] = M.ranking_metrics(labels[split], prob)
        return out
    n_items = len(tables.item_ids)
    _, tie_break = _popularity(tables, train)
    for split in EVAL_SPLITS:
        rows = tables.rows(split)
        if len(rows) == 0:
            continue
        ranks = []
        for i in range(0, len(rows), 2048):
            chunk = rows[i : i + 2048]
            nb = tables.nb_row[chunk]
            scores = np.broadcast_to(tie_break, (len(chunk), n_items)).copy()
            r, c = np.nonzero(nb >= 0)
            np.add.at(scores, (r, tables.item[nb[r, c]] - 1), 1.0)
            ranks.append(M.target_ranks(scores, tables.item[chunk] - 1))
        out[split] = {"example_targets": M.topk_metrics(np.concatenate(ranks))}
    return out


def baselines_for(tables: Any, task: str) -> dict[str, dict[str, dict[str, float]]]:
    return ranking_baselines(tables) if task == "ranking" else sequential_baselines(tables)


def floor(baselines: dict[str, Any], task: str, split: str = "valid") -> tuple[str, float] | None:
    """The baseline a model of ``task`` must beat on ``split``: (name, primary metric value)."""
    results = baselines.get(split) or {}
    metric = M.PRIMARY_METRIC[task]
    names = (RANKING_FLOOR,) if task == "ranking" else SEQUENTIAL_FLOORS
    found = [(name, float(results[name][metric])) for name in names if name in results]
    found = [(name, value) for name, value in found if not np.isnan(value)]
    return max(found, key=lambda nv: nv[1]) if found else None
