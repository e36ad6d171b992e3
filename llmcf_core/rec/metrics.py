"""Offline metrics: AUC and LogLoss (ranking), Hit@k and NDCG@k over the full catalogue (next item)."""

from __future__ import annotations

import numpy as np

TOP_KS = (1, 5, 10)
EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties sharing their average rank; NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average 1-based rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def ranking_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs), "n": int(len(labels))}


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target among all columns: (B, n_items), (B,) column indices.

    Ties count against the target (pessimistic), so a constant model never looks good.
    """
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= target_scores).sum(1) - 1


def topk_metrics(ranks: np.ndarray, ks: tuple[int, ...] = TOP_KS) -> dict[str, float]:
    ranks = np.asarray(ranks)
    out: dict[str, float] = {"n": int(len(ranks))}
    for k in ks:
        hit = ranks < k
        out[f"hit@{k}"] = float(hit.mean()) if len(ranks) else float("nan")
        out[f"ndcg@{k}"] = (
            float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else float("nan")
        )
    return out


PRIMARY_METRIC = {"ranking": "auc", "sequential": "ndcg@10"}
