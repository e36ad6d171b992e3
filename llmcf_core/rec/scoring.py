"""Online scoring: a request (user, history, candidate items) -> one score per candidate.

    scorer = Scorer.load(settings, "ml-100k", "DIN", "llmcf")          # the published version
    scores = scorer.score(ScoreRequest(user_id=1, history_item_ids=[...], candidate_item_ids=[...]))

Path of a request (METHOD.md: the LLM never runs online):
1. ids -> indices with the model's vocabularies (unknown user -> 0, unknown item -> padding);
2. retrieval (llmcf* variants): one query per candidate for ranking models (0.5 history + 0.5
   target similarity), one per request for next-item models (history only). The retriever is a
   plain function ``RetrievalQuery -> list[list[str]]`` (K sample ids per query, "" = padding), so
   a Qdrant-backed retriever can replace the default ``ExactRetriever`` (numpy brute force over
   the pool embeddings);
3. the examples' ICT tokens are looked up in an ``ExampleStore`` that computed them once per pool
   example at load time (they do not depend on the request), so online work is the backbone, the
   current sample's feature token and the 13-token decoder;
4. the backbone + ICT forward pass under ``torch.inference_mode``.

CLI: ``python -m jobs.score`` (jobs/score.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmcf_core.rec import registry
from llmcf_core.rec.backbones import RecModel, SequentialModel
from llmcf_core.rec.modelio import LoadedModel, load_version


@dataclass
class ScoreRequest:
    user_id: int
    history_item_ids: list[int]  # oldest first
    candidate_item_ids: list[int]
    timestamp: int | None = None  # examples must be older than this; None = any
    history_labels: list[int] | None = None  # 1 liked / 0 not, per history item; None = not known
    # user side features by name (e.g. {"age_group": "25-34", "gender": "F", "occupation": "writer"});
    # None = the published users table's row of user_id, if any; unknown names/values are ignored
    user_features: dict[str, str] | None = None


@dataclass
class RetrievalQuery:
    user_id: int
    timestamp: int | None
    history_vec: np.ndarray  # (d,) L2-normalised mean of the history's item text embeddings
    target_vecs: np.ndarray | None  # (Q, d) candidates' item text embeddings; None = next item
    k: int


Retriever = Callable[[RetrievalQuery], list[list[str]]]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ExactRetriever:
    """Label-balanced exact K-NN over the pool (k/2 best positives + k/2 best negatives among
    examples strictly older than the request), then shuffled with a fixed seed per user."""

    def __init__(
        self,
        sample_ids: np.ndarray,
        timestamps: np.ndarray,
        labels: np.ndarray,
        history_vecs: np.ndarray,
        target_vecs: np.ndarray,
    ) -> None:
        order = np.argsort(timestamps, kind="stable")  # older-than filter = a prefix
        self.sample_ids = np.asarray(sample_ids).astype(str)[order]
        self.timestamps = np.asarray(timestamps, dtype=np.int64)[order]
        self.labels = np.asarray(labels, dtype=np.int8)[order]
        self.history = np.ascontiguousarray(history_vecs[order], dtype=np.float32)
        self.target = np.ascontiguousarray(target_vecs[order], dtype=np.float32)

    @classmethod
    def from_pool(
        cls, settings: Any, dataset: str, embedder: str, until: str | None, cot_version: str | None = None
    ) -> ExactRetriever:
        from llmcf_core.rec.dataset import read_pool

        pool = read_pool(settings, dataset, embedder, until, cot_version)
        return cls(
            pool["sample_id"], pool["timestamp"], pool["label"], pool["history_vec"], pool["target_vec"]
        )

    def __call__(self, query: RetrievalQuery) -> list[list[str]]:
        end = len(self.timestamps)
        if query.timestamp is not None:
            end = int(np.searchsorted(self.timestamps, query.timestamp, side="left"))
        scores = self.history[:end] @ query.history_vec  # (P,)
        if query.target_vecs is None:
            scores = scores[None, :]  # (1, P)
        else:
            scores = 0.5 * scores[None, :] + 0.5 * (query.target_vecs @ self.target[:end].T)  # (Q, P)
        per_label = query.k // 2
        picked = []
        for lab in (1, 0):
            cols = np.flatnonzero(self.labels[:end] == lab)
            take = min(per_label, len(cols))
            if take == 0:
                continue
            sub = scores[:, cols]  # (Q, n_lab)
            top = (
                np.argpartition(-sub, take - 1, axis=1)[:, :take] if take < len(cols) else np.argsort(-sub, 1)
            )
            picked.append(cols[top[:, :take]])
        rng = np.random.default_rng(abs(int(query.user_id)))
        out = []
        for q in range(scores.shape[0]):
            ids = [str(self.sample_ids[j]) for part in picked for j in part[q]]
            rng.shuffle(ids)
            out.append(ids + [""] * (query.k - len(ids)))
        return out


class ExampleStore:
    """ICT tokens of every pool example, computed once with the model: sample_id -> (P, C)."""

    def __init__(self, sample_ids: np.ndarray, tokens: torch.Tensor) -> None:
        self.ids = [str(s) for s in sample_ids]
        self.row = {sid: i for i, sid in enumerate(self.ids)}
        # one zero row at the end stands in for padding / unknown ids
        self.tokens = torch.cat((tokens, tokens.new_zeros((1, *tokens.shape[1:]))))  # (E + 1, P, C)

    @classmethod
    def build(cls, model: RecModel, tables: Any, batch_size: int = 4096) -> ExampleStore:
        rows = tables.pool_rows
        parts = []
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                part = rows[i : i + batch_size]
                batch = {
                    "nb_user": torch.from_numpy(tables.user[part])[:, None],
                    "nb_item": torch.from_numpy(tables.item[part])[:, None],
                    "nb_hist": torch.from_numpy(tables.hist[part])[:, None],
                    "nb_hist_fb": torch.from_numpy(tables.hist_fb[part])[:, None],
                    "nb_label": torch.from_numpy(tables.label[part].astype(np.int64))[:, None],
                    "nb_cot": torch.from_numpy(tables.cot[tables.cot_row[part]])[:, None],
                }
                if tables.user_feat is not None:
                    batch["nb_user_feat"] = torch.from_numpy(tables.user_feat[part])[:, None]
                parts.append(model.example_tokens(batch)[:, 0])  # (b, P, C)
        return cls(tables.sample_id[rows], torch.cat(parts))

    def lookup(self, ids: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, K) ids -> tokens (Q, K, P, C) and mask (Q, K)."""
        pad = len(self.ids)  # the zero row: padding "" or an id not in the store
        at = torch.tensor([[self.row.get(s, pad) for s in row] for row in ids], dtype=torch.long)  # (Q, K)
        return self.tokens[at], at != pad


class Scorer:
    def __init__(
        self,
        loaded: LoadedModel,
        store: ExampleStore | None = None,
        retriever: Retriever | None = None,
        *,
        compile: bool = False,
        users: dict[int, dict[str, str]] | None = None,
    ) -> None:
        """``compile``: run the forward pass through ``torch.compile`` (inductor; needs a C++
        compiler; about a minute per model and request shape on first use, then ~2x faster on CPU)."""
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.store = store
        self.retriever = retriever
        self.k = int(loaded.meta["spec"]["k"])
        self.history_len = int(loaded.meta["spec"]["history_len"])
        self.item_text = (
            self.model.fields.item_text.numpy() if hasattr(self.model.fields, "item_text") else None
        )
        feats = loaded.meta.get("user_features") or {}
        self.user_feature_index = [
            {v: i + 1 for i, v in enumerate(vocab)} for vocab in feats.get("vocab", [])
        ]
        self.user_feature_names = list(feats.get("names", []))
        self.users = users or {}  # raw user id -> {feature name: value}, from the users table
        if self.model.ict is not None and (store is None or retriever is None):
            raise ValueError("an llmcf* model needs an example store and a retriever")
        self._forward = torch.compile(self._scores, dynamic=False) if compile else self._scores

    @classmethod
    def load(
        cls,
        settings: Any,
        dataset: str,
        model: str,
        variant: str,
        *,
        version: str | None = None,
        retriever: Retriever | None = None,
        compile: bool = False,
    ) -> Scorer:
        """The published (or the given) version; the pool it was trained with feeds the examples."""
        version = version or registry.current_version(settings.home, dataset, model, variant)
        if version is None:
            raise FileNotFoundError(f"no published {model}-{variant} model for {dataset!r}")
        loaded = load_version(registry.version_dir(settings.home, model, variant, version))
        users = (
            _read_users(settings, dataset) if (loaded.meta.get("user_features") or {}).get("names") else None
        )
        if loaded.model.ict is None:
            return cls(loaded, compile=compile, users=users)
        import datetime as dt

        from llmcf_core.rec.dataset import load_tables

        meta = loaded.meta
        until = dt.date.fromisoformat(meta["until"]) if meta.get("until") else None
        # The pool the model was trained with (models before versioned pools: the promoted one).
        cot_version = meta.get("cot_version")
        tables = load_tables(
            settings,
            dataset,
            until=until,
            embedder=meta["embedder"],
            task=meta["task"],
            cot_version=cot_version,
        )
        store = ExampleStore.build(loaded.model, tables)
        retriever = retriever or ExactRetriever.from_pool(
            settings, dataset, meta["embedder"], meta.get("until"), cot_version
        )
        return cls(loaded, store, retriever, compile=compile, users=users)

    def _user_features(self, req: ScoreRequest) -> np.ndarray:
        """(U,) indices of the request's user side features (0 = unknown)."""
        given = req.user_features if req.user_features is not None else self.users.get(int(req.user_id), {})
        return np.array(
            [
                index.get(str(given[name]), 0) if given.get(name) is not None else 0
                for name, index in zip(self.user_feature_names, self.user_feature_index, strict=True)
            ],
            dtype=np.int64,
        )

    # -- request -> tensors ----------------------------------------------------------------

    def _history(
        self, history_item_ids: list[int], labels: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(L,) item indices of the newest known history items, left-aligned, and their feedback
        codes (1 negative, 2 positive; 0 padding or not known)."""
        if labels is not None and len(labels) != len(history_item_ids):
            raise ValueError(
                f"history_labels has {len(labels)} values for {len(history_item_ids)} history items"
            )
        idx = self.loaded.item_index(np.asarray(history_item_ids[-self.history_len :], dtype=np.int64))
        fb = np.zeros(len(idx), dtype=np.int64)
        if labels is not None:
            fb = np.clip(np.asarray(labels[-self.history_len :], dtype=np.int64), 0, 1) + 1
        known = idx > 0
        out, out_fb = np.zeros(self.history_len, dtype=np.int64), np.zeros(self.history_len, dtype=np.int64)
        out[: known.sum()], out_fb[: known.sum()] = idx[known], fb[known]
        return out, out_fb

    def retrieval_query(self, req: ScoreRequest) -> RetrievalQuery:
        """What the retriever is asked (for a Qdrant retriever, or to time retrieval apart)."""
        assert self.item_text is not None
        hist, _ = self._history(req.history_item_ids)
        hv = self.item_text[hist[hist > 0]].mean(0) if (hist > 0).any() else np.zeros(self.item_text.shape[1])
        targets = None
        if not isinstance(self.model, SequentialModel):
            targets = self.item_text[
                self.loaded.item_index(np.asarray(req.candidate_item_ids, dtype=np.int64))
            ]
        return RetrievalQuery(req.user_id, req.timestamp, _unit(hv).astype(np.float32), targets, self.k)

    def score(self, req: ScoreRequest) -> np.ndarray:
        """Scores of ``req.candidate_item_ids`` (probabilities for ranking models)."""
        ids = self.retriever(self.retrieval_query(req)) if self.model.ict is not None else None
        return self.score_with_examples(req, ids)

    def score_with_examples(self, req: ScoreRequest, example_ids: list[list[str]] | None) -> np.ndarray:
        """Scores given already retrieved examples ((C, K) ids for ranking, (1, K) for next item)."""
        items = torch.from_numpy(self.loaded.item_index(np.asarray(req.candidate_item_ids, dtype=np.int64)))
        hist_np, fb_np = self._history(req.history_item_ids, req.history_labels)
        hist, hist_fb = torch.from_numpy(hist_np), torch.from_numpy(fb_np)
        user = int(self.loaded.user_index(np.array([req.user_id]))[0])
        sequential = isinstance(self.model, SequentialModel)
        n = 1 if sequential else len(items)
        batch = {
            "user": torch.full((n,), user, dtype=torch.long),
            "item": items[:n],
            "hist": hist.expand(n, -1),
            "hist_fb": hist_fb.expand(n, -1),
        }
        if self.user_feature_names:
            batch["user_feat"] = torch.from_numpy(self._user_features(req)).expand(n, -1)
        if self.model.ict is not None:
            assert self.store is not None and example_ids is not None
            batch["nb_tokens"], batch["nb_mask"] = self.store.lookup(example_ids)
        with torch.inference_mode():
            scores = self._forward(batch, items).numpy()
        scores[items.numpy() == 0] = np.nan  # unknown candidate items get no score
        return scores

    def _scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, SequentialModel):  # one user vector, dotted with every candidate
            u, _ = self.model.user_vector(batch)  # (1, H)
            return self.model.item_emb(items) @ u[0]  # (C,)
        return self.model.predict(batch)  # (C,)


def _read_users(settings: Any, dataset: str) -> dict[int, dict[str, str]]:
    """The published users table as {user_id: {feature: value}} (empty when there is none)."""
    from llmcf_core import storage
    from llmcf_core.layout import DataPaths

    folder = DataPaths(settings.home, dataset).users
    if not storage.is_published(folder):
        return {}
    rows = storage.read_partition(folder).to_pylist()
    return {int(r["user_id"]): {k: v for k, v in r.items() if k != "user_id" and v is not None} for r in rows}
