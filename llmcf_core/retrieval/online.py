"""Online retrieval for the recommender's scorer: one request -> K examples per candidate item.

    index = OnlineIndex.load(settings, "ml-100k")          # once per process
    res = index.retrieve(history_item_ids=[50, 172, 133], candidate_item_ids=cands)
    res.sample_ids, res.labels, res.scores, res.padded     # (C, K) each
    index.cot_vectors(res.rows)                            # (C, K, d) CoT embeddings for the ICT

Exact (same scores and leakage rules as the offline search: examples strictly earlier than
``now_ts``, label-balanced, padding flagged), but organised so that a request costs far less
than scoring C x n (history, target) pairs:

- history part: h . H_j, where H_j is the normalised mean of pool row j's history item vectors,
  equals w_j * sum_{i in hist_j} (E_i . h) with w_j = 1/||sum_j E_i||: one catalogue mat-vec
  u = E h (n_items x d) and a sparse sum over the pool's history lists (n x ~20), instead of a
  memory-bound pass over an n x d matrix;
- target part: t_c . T_j = E_c . E_{item_j} is the same for every pool row with the same target
  item, so per (label, item) group only the best ``k/2`` rows by the history part can win; the
  candidate x group item similarities come from a matrix precomputed at load (catalogue x
  pool items), so a request is a row gather plus an argmax over groups per candidate.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmcf_core import storage
from llmcf_core.config import Settings
from llmcf_core.layout import RetrievalPaths
from llmcf_core.retrieval.embed import ItemVectors, history_sums, normalise, read_item_vectors
from llmcf_core.retrieval.pool import load_pool
from llmcf_core.retrieval.search import LABELS

_NEG = np.float32(-np.inf)


@dataclass(frozen=True)
class OnlineResult:
    """Per candidate, K slots: real examples (shuffled) first, padding last."""

    rows: np.ndarray  # (C, K) int64 pool row, -1 = padding
    scores: np.ndarray  # (C, K) float32, 0 for padding
    labels: np.ndarray  # (C, K) int8, 0 for padding
    sample_ids: np.ndarray  # (C, K) object, "" for padding

    @property
    def padded(self) -> np.ndarray:
        return self.rows < 0


@dataclass(frozen=True)
class _LabelGroups:
    """Pool rows of one label grouped by target item."""

    perm: np.ndarray  # (n_l,) pool rows, ordered by (item, timestamp)
    starts: np.ndarray  # (G,) first position of each group in perm
    group_of: np.ndarray  # (n_l,) group of each position
    item_pos: np.ndarray  # (G,) catalogue row of each group's item
    sims: np.ndarray | None  # (n_catalogue, G) item similarities, if precomputed


class OnlineIndex:
    """The pool in memory, with the structures a request needs (see the module docstring)."""

    def __init__(
        self,
        *,
        catalog: ItemVectors,
        sample_ids: Sequence[str],
        timestamps: np.ndarray,
        labels: np.ndarray,
        item_ids: np.ndarray,
        history_item_ids: Sequence[Sequence[int]],
        cot: np.ndarray | None = None,
        per_label: int = 2,
        max_precomputed: int = 64_000_000,
    ) -> None:
        self.catalog = catalog
        self.per_label = per_label
        self.sample_ids = np.asarray(sample_ids, dtype=object)
        self.timestamps = np.asarray(timestamps, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int8)
        self.cot = cot
        n = len(self.sample_ids)
        item_pos = catalog.positions(item_ids)

        # History operator (CSR, n x n_catalogue): row j holds w_j at its history items' columns.
        from scipy.sparse import csr_matrix

        lengths = np.fromiter((len(h) for h in history_item_ids), dtype=np.int64, count=n)
        flat = [np.asarray(h, dtype=np.int64) for h in history_item_ids if len(h)]
        cols = catalog.positions(np.concatenate(flat)) if flat else np.zeros(0, np.int64)
        norms = np.linalg.norm(history_sums(catalog, list(history_item_ids)), axis=1)
        weight = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._history = csr_matrix(
            (np.repeat(weight, lengths).astype(np.float32), cols, np.concatenate([[0], np.cumsum(lengths)])),
            shape=(n, len(catalog.ids)),
        )

        self._row_of_vector = {v.tobytes(): i for i, v in enumerate(catalog.vectors)}
        # Catalogue x catalogue similarities give the history query's item scores without BLAS
        # (a multi-threaded mat-vec has ms-scale wake-up jitter on a busy machine).
        n_cat = len(catalog.ids)
        self._item_sims = catalog.vectors @ catalog.vectors.T if n_cat * n_cat <= max_precomputed else None

        self._groups: dict[int, _LabelGroups] = {}
        for label in LABELS:
            rows_l = np.flatnonzero(self.labels == label)
            order = np.lexsort((self.timestamps[rows_l], item_pos[rows_l]))
            perm = rows_l[order]
            items_sorted = item_pos[perm]
            new = np.r_[True, items_sorted[1:] != items_sorted[:-1]] if len(perm) else np.zeros(0, bool)
            starts = np.flatnonzero(new)
            group_items = items_sorted[starts]
            sims = None  # halved: a score is 0.5 * history part + 0.5 * target part
            if len(catalog.ids) * len(starts) <= max_precomputed:
                sims = 0.5 * (catalog.vectors @ catalog.vectors[group_items].T)  # (n_catalogue, G)
            self._groups[label] = _LabelGroups(perm, starts, np.cumsum(new) - 1, group_items, sims)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @classmethod
    def load(
        cls, settings: Settings, dataset: str, *, until: dt.date | None = None, cot_version: str | None = None
    ) -> OnlineIndex:
        """The published pool of the current spec (all days, or up to ``until``) and item vectors."""
        from llmcf_core.retrieval.upsert import current_spec

        spec = current_spec(settings, dataset, cot_version)
        paths = RetrievalPaths(settings.home, dataset, spec.embedder)
        loaded = load_pool(settings, spec, until=until or dt.date.max)
        pool = loaded.index
        item_of: dict[str, int] = {}
        hist_of: dict[str, list[int]] = {}
        for day in loaded.days:
            samples = storage.read_partition(
                paths.data.samples(dt.date.fromisoformat(day)),
                columns=["sample_id", "item_id", "history_item_ids"],
            ).to_pydict()
            item_of.update(zip(samples["sample_id"], samples["item_id"], strict=True))
            hist_of.update(zip(samples["sample_id"], samples["history_item_ids"], strict=True))
        ids = pool.sample_ids.tolist()
        return cls(
            catalog=read_item_vectors(paths, spec.dim),
            sample_ids=ids,
            timestamps=pool.timestamps,
            labels=pool.labels,
            item_ids=np.array([item_of[s] for s in ids], dtype=np.int64),
            history_item_ids=[hist_of[s] for s in ids],
            cot=pool.cot,
            per_label=settings.retrieval.k // 2,
        )

    # ---------------------------------------------------------------------------- requests

    def history_scores(self, history_item_ids: Sequence[int]) -> np.ndarray:
        """h . H_j for every pool row j (0 where either history is empty)."""
        if len(history_item_ids) == 0:
            return np.zeros(len(self), np.float32)
        pos = self.catalog.positions(history_item_ids)
        if self._item_sims is not None:  # u = E h with h = sum(E_i) / ||sum(E_i)||
            norm = math.sqrt(max(float(self._item_sims[np.ix_(pos, pos)].sum()), 0.0))
            u = (
                self._item_sims[pos].sum(axis=0) / norm
                if norm > 0
                else np.zeros(len(self.catalog.ids), np.float32)
            )
        else:
            h = normalise(self.catalog.vectors[pos].sum(axis=0, keepdims=True))[0]
            u = np.einsum("id,d->i", self.catalog.vectors, h)
        return np.asarray(self._history @ u.astype(np.float32), dtype=np.float32)

    def _group_top(self, values: np.ndarray, groups: _LabelGroups) -> tuple[np.ndarray, np.ndarray]:
        """Best ``per_label`` values per group and their pool rows: (G, p) each (-inf / -1 if none)."""
        g = len(groups.starts)
        vals = values[groups.perm]
        top_v = np.full((g, self.per_label), _NEG, np.float32)
        top_r = np.full((g, self.per_label), -1, np.int64)
        for r in range(self.per_label):
            best = np.maximum.reduceat(vals, groups.starts)
            at_max = np.flatnonzero(vals == best[groups.group_of])
            grp = groups.group_of[at_max]
            first = at_max[np.r_[True, grp[1:] != grp[:-1]]]  # first position per group
            found = np.isfinite(best)
            top_v[:, r] = best
            top_r[:, r] = np.where(found, groups.perm[first], -1)
            vals[first] = _NEG
        return top_v, top_r

    def retrieve(
        self,
        history_item_ids: Sequence[int],
        candidate_item_ids: Sequence[int],
        *,
        now_ts: int | None = None,
        task: str = "ctr",
        request_key: str = "",
    ) -> OnlineResult:
        """K = 2 * per_label examples per candidate (positives and negatives, best by score)."""
        hs = self.history_scores(history_item_ids)
        cand = self.catalog.positions(candidate_item_ids)
        return self._search(hs, cand, None, now_ts=now_ts, task=task, request_key=request_key)

    def retrieve_vectors(
        self,
        history_vec: np.ndarray,
        target_vecs: np.ndarray | None,
        *,
        now_ts: int | None = None,
        request_key: str = "",
    ) -> OnlineResult:
        """The same for callers holding vectors instead of ids; ``target_vecs=None``: next_item.

        ``history_vec`` is the request's normalised mean history vector, ``target_vecs`` (C, d)
        the candidates' item vectors. Candidate vectors equal (bit for bit) to a catalogue vector,
        e.g. read from the items cache, use the precomputed similarities.
        """
        u = np.einsum("id,d->i", self.catalog.vectors, np.asarray(history_vec, dtype=np.float32))
        hs = np.asarray(self._history @ u, dtype=np.float32)
        if target_vecs is None:
            return self._search(
                hs, np.zeros(1, np.int64), None, now_ts=now_ts, task="next_item", request_key=request_key
            )
        target_vecs = np.ascontiguousarray(target_vecs, dtype=np.float32)
        cand = np.array([self._row_of_vector.get(v.tobytes(), -1) for v in target_vecs], dtype=np.int64)
        unknown = target_vecs if (cand < 0).any() else None
        return self._search(hs, cand, unknown, now_ts=now_ts, task="ctr", request_key=request_key)

    def as_retriever(self):
        """``llmcf_core.rec.scoring``'s Retriever: a RetrievalQuery -> K example ids per query."""

        def retrieve(query) -> list[list[str]]:
            if query.k != 2 * self.per_label:
                raise ValueError(f"the index serves k={2 * self.per_label}, the query asks k={query.k}")
            res = self.retrieve_vectors(
                query.history_vec, query.target_vecs, now_ts=query.timestamp, request_key=str(query.user_id)
            )
            return res.sample_ids.tolist()

        return retrieve

    def _search(
        self,
        hs: np.ndarray,
        cand: np.ndarray,
        cand_vectors: np.ndarray | None,
        *,
        now_ts: int | None,
        task: str,
        request_key: str,
    ) -> OnlineResult:
        """Per candidate (catalogue row ``cand``, or a row of ``cand_vectors``), the best examples."""
        p = self.per_label
        c = len(cand)
        if now_ts is not None:
            hs[self.timestamps >= now_ts] = _NEG
        rows = np.full((c, 2 * p), -1, np.int64)
        scores = np.full((c, 2 * p), _NEG, np.float32)
        for slot0, label in zip((0, p), LABELS, strict=True):
            groups = self._groups[label]
            if len(groups.starts) == 0:
                continue
            if task == "next_item":
                rows[:, slot0 : slot0 + p], scores[:, slot0 : slot0 + p] = self._top_by_history(hs, groups)
                continue
            top_v, top_r = self._group_top(hs, groups)
            top_v *= 0.5
            if groups.sims is not None and cand_vectors is None:
                sims = groups.sims[cand]  # (C, G), already halved
            else:
                vecs = cand_vectors if cand_vectors is not None else self.catalog.vectors[cand]
                sims = 0.5 * (vecs @ self.catalog.vectors[groups.item_pos].T)
            best = sims + top_v[:, 0][None, :]  # (C, G): the score of each group's best row
            chosen = np.empty((c, p), np.int64)
            usable = np.empty((c, p), bool)
            ar = np.arange(c)
            for r in range(p):  # the top p entries come from at most p groups
                chosen[:, r] = np.argmax(best, axis=1)
                usable[:, r] = np.isfinite(best[ar, chosen[:, r]])  # not a group picked before
                best[ar, chosen[:, r]] = _NEG
            # (C, p groups x p ranks) finalists; keep the best p
            fin_v = np.take_along_axis(sims, chosen, axis=1)[:, :, None] + top_v[chosen]
            fin_v[~usable] = _NEG
            fin_r = top_r[chosen]
            fin_v, fin_r = fin_v.reshape(c, -1), fin_r.reshape(c, -1)
            order = np.argsort(-fin_v, axis=1, kind="stable")[:, :p]
            rows[:, slot0 : slot0 + p] = np.take_along_axis(fin_r, order, axis=1)
            scores[:, slot0 : slot0 + p] = np.take_along_axis(fin_v, order, axis=1)
        rows[~np.isfinite(scores)] = -1
        # Real examples in a random order (seeded by the request key), padding last: the layout
        # the ICT module was trained on.
        rand = np.random.default_rng(zlib.crc32(request_key.encode())).random(rows.shape)
        order = np.argsort(np.where(rows < 0, 2.0, rand), axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        pad = rows < 0
        safe = np.where(pad, 0, rows)
        return OnlineResult(
            rows=rows,
            scores=np.where(pad, 0, scores).astype(np.float32),
            labels=np.where(pad, 0, self.labels[safe] if len(self) else 0).astype(np.int8),
            sample_ids=np.where(pad, "", self.sample_ids[safe] if len(self) else "").astype(object),
        )

    def _top_by_history(self, hs: np.ndarray, groups: _LabelGroups) -> tuple[np.ndarray, np.ndarray]:
        """next_item: the same best rows of the label for every candidate, by history alone."""
        p = self.per_label
        vals = hs[groups.perm]
        take = min(p, len(vals))
        part = np.argpartition(-vals, take - 1)[:take]
        part = part[np.argsort(-vals[part], kind="stable")]
        r = np.full(p, -1, np.int64)
        s = np.full(p, _NEG, np.float32)
        r[:take], s[:take] = groups.perm[part], vals[part]
        return r, s

    def cot_vectors(self, rows: np.ndarray) -> np.ndarray:
        """CoT embeddings of result rows: (..., d), zeros for padding."""
        if self.cot is None:
            raise ValueError("this index was built without CoT vectors")
        out = self.cot[np.where(rows < 0, 0, rows)]
        out[rows < 0] = 0
        return out
