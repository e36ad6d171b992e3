"""Paired statistics for the experiment tables: is variant A better than B on the same test rows?

Both models of a comparison scored the same test rows under several seeds. The statistic is the
mean over seeds of ``metric(A_s) - metric(B_s)`` (AUC for ranking, NDCG@10 for next item); its 95%
interval comes from a paired bootstrap over test rows: each resample draws the rows with
replacement once and scores every model and seed on that same resample, so the interval holds the
row sampling noise of the difference (the seed noise is averaged, and shown per seed beside it).
Beside it, ``seed_interval`` gives the seed-level view: a Student-t 95% interval over the per-seed
differences (n - 1 degrees of freedom), which holds the training noise the row interval leaves out
(a lift that two of five seeds make can sit above zero over rows and include zero over seeds).

The bootstrap uses multinomial row weights instead of materialised resamples: AUC under weights is
computed in one pass over each model's score order (tie groups share half their weight, as in
``metrics.auc``), so 1,000 resamples of 20k rows cost a few seconds, not minutes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

N_BOOT = 1000
ALPHA = 0.05
SEED = 20_240_901  # fixed: every table of a run uses the same resamples
NDCG_K = 10


@dataclass(frozen=True)
class Interval:
    diff: float  # mean over seeds of metric(a_s) - metric(b_s) on the rows
    lo: float
    hi: float
    per_seed: tuple[float, ...]
    n: int  # rows

    @property
    def verdict(self) -> str:
        return verdict(self.lo, self.hi)

    def to_dict(self) -> dict:
        seed_lo, seed_hi = seed_interval(self.per_seed)
        return {
            "diff": self.diff,
            "lo": self.lo,
            "hi": self.hi,
            "per_seed": list(self.per_seed),
            "n": self.n,
            "verdict": self.verdict,
            "seed_lo": seed_lo,
            "seed_hi": seed_hi,
            "seed_verdict": verdict(seed_lo, seed_hi),
        }


def verdict(lo: float, hi: float) -> str:
    """Where an interval lies with respect to zero."""
    if np.isnan(lo) or np.isnan(hi):
        return "n/a"
    if lo > 0:
        return "above 0"
    if hi < 0:
        return "below 0"
    return "includes 0"


def seed_interval(per_seed: list[float] | tuple[float, ...], alpha: float = ALPHA) -> tuple[float, float]:
    """Student-t (1 - alpha) interval of the mean of the per-seed differences: mean +- t(1 - alpha/2,
    n - 1) * sd / sqrt(n). NaN for fewer than two seeds (no spread to estimate)."""
    from scipy.stats import t

    d = np.asarray(per_seed, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return float("nan"), float("nan")
    half = float(t.ppf(1 - alpha / 2, len(d) - 1)) * float(d.std(ddof=1)) / np.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def ndcg_gain(ranks: np.ndarray, k: int = NDCG_K) -> np.ndarray:
    """Per-row NDCG@k of a single target at 0-based ``ranks``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of ``scores`` under each row of ``weights`` (R, n) -> (R,); ties count half.

    With all weights 1 this equals ``metrics.auc``. NaN where a weighting has no positive or no
    negative weight.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float32))
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    y = labels[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups in ascending score order
    w = weights[:, order]  # (R, n) float32: half the memory traffic of float64
    tot = np.add.reduceat(w, starts, axis=1)  # (R, G) weight per tie group
    pos = np.add.reduceat(w * y.astype(np.float32), starts, axis=1)  # (R, G) positive weight
    neg = tot - pos  # (R, G)
    neg_below = np.cumsum(neg, axis=1, dtype=np.float64) - neg  # (R, G) negative weight strictly below
    num = (pos * (neg_below + 0.5 * neg)).sum(1, dtype=np.float64)
    den = pos.sum(1, dtype=np.float64) * neg.sum(1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def metric_under_weights(
    task: str, labels: np.ndarray, values: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """The task's primary metric (AUC / NDCG@10) of ``values`` under each weighting: (R, n) -> (R,)."""
    weights = np.atleast_2d(weights)
    if task == "ranking":
        return weighted_auc(labels, values, weights)
    gain = ndcg_gain(values)
    total = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ gain / total, np.nan)


CHUNK = 100  # resamples converted to float32 at once: (CHUNK, n)


@functools.lru_cache(maxsize=2)
def _counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n), dtype=np.uint8)  # a row drawn > 255 times of n: never in practice
    for start in range(0, n_boot, CHUNK):
        r = min(CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
        counts = np.bincount(idx.ravel(), minlength=r * n).reshape(r, n)
        out[start : start + r] = np.minimum(counts, 255)
    out.flags.writeable = False
    return out


def bootstrap_weights(n: int, n_boot: int = N_BOOT, seed: int = SEED):
    """Chunks of (<= CHUNK, n) float32 row counts; each row is one resample of the n rows with
    replacement. The same (n, n_boot, seed) always gives the same resamples (cached)."""
    counts = _counts(n, n_boot, seed)
    for start in range(0, n_boot, CHUNK):
        yield counts[start : start + CHUNK].astype(np.float32)


@dataclass(frozen=True)
class Resampled:
    """One model's metric on the rows (``point``) and on each bootstrap resample (``boot``)."""

    point: float
    boot: np.ndarray  # (n_boot,)
    n: int


def resample_metric(
    task: str,
    labels: np.ndarray,
    values: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> Resampled:
    """The metric of ``values`` on the (masked) rows and on the shared resamples.

    The resamples are drawn over all rows and masked rows weigh 0, so every model and subset of
    one table sees the same resamples (what makes differences paired). Cache these per model and
    seed: a comparison is then a subtraction (``interval``).
    """
    labels = np.asarray(labels)
    keep = np.ones(len(labels), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    ones = keep.astype(np.float32)[None, :]
    point = float(metric_under_weights(task, labels, values, ones)[0]) if keep.any() else float("nan")
    boot = [
        metric_under_weights(task, labels, values, w * ones)
        for w in bootstrap_weights(len(labels), n_boot, seed)
    ]
    return Resampled(point, np.concatenate(boot) if boot else np.zeros(0), int(keep.sum()))


def interval(a: list[Resampled], b: list[Resampled], alpha: float = ALPHA) -> Interval:
    """Mean over seeds of a_s - b_s with its paired bootstrap interval; seeds pair in order and
    the shorter list sets their number."""
    pairs = min(len(a), len(b))
    n = a[0].n if a else 0
    if pairs == 0 or n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, (), n)
    per_seed = tuple(a[s].point - b[s].point for s in range(pairs))
    boot = np.mean([a[s].boot - b[s].boot for s in range(pairs)], axis=0)
    boot = boot[~np.isnan(boot)]
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if len(boot) else (np.nan, np.nan)
    return Interval(float(np.mean(per_seed)), float(lo), float(hi), per_seed, n)


def paired_interval(
    task: str,
    labels: np.ndarray,
    a: list[np.ndarray],
    b: list[np.ndarray],
    *,
    mask: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    alpha: float = ALPHA,
) -> Interval:
    """Mean over seeds of metric(a_s) - metric(b_s) with a paired bootstrap 95% interval over rows.

    ``a`` and ``b``: per-seed values aligned on the same rows (probabilities for ranking, 0-based
    target ranks for next item). ``mask`` restricts to a subset of rows (e.g. cold users).
    """
    pairs = min(len(a), len(b))

    def resampled(values: list[np.ndarray]) -> list[Resampled]:
        return [resample_metric(task, labels, v, mask=mask, n_boot=n_boot, seed=seed) for v in values[:pairs]]

    return interval(resampled(a), resampled(b), alpha)
