"""Dataset assembly: the one module that knows where the recommender's inputs live.

Reads (all published partitions with ``dt <= until``)::

    <ds>/samples/dt=D/                       sample rows with history and split
    <ds>/items/                              item_id, genres
    <ds>/users/                              user_id, age_group, gender, occupation (optional)
    <ds>/embeddings/<embedder>/items/        item_id, vector            (item text embeddings)
    <ds>/embeddings/<embedder>/pool/<cot version>/dt=D/    sample_id, cot_vec, ...    (llmcf*)
    <ds>/<neighbors artifact>/<cot version>/dt=D/          sample_id, neighbor_ids, ... (llmcf*)

(the CoT version: ``cot_version`` as given, else the dataset's promoted one, ``cot/CURRENT``)

and joins them into ``RecTables``: plain numpy arrays indexed by sample row, whose ``batch(rows)``
gathers the tensors a model reads (the sample, its K retrieved examples' own features, labels
and CoT embeddings). Examples are samples too (pool rows are training samples), so an example's
features are its own row's user, item and history.

Missing inputs are explicit: a variant that needs neighbours or CoTs fails with InvalidArgument
when none are published; a day without a neighbours partition, or a neighbour id not among the
loaded samples, counts as padding and is reported in ``stats``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from llmcf_core import storage
from llmcf_core.layout import (
    DataPaths,
    InvalidArgument,
    RetrievalPaths,
    check_dataset_name,
    partition_dir_name,
    published_days,
    resolve_cot_version,
)
from llmcf_core.rec.spec import DataSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SAMPLE_COLUMNS = [
    "sample_id",
    "user_id",
    "item_id",
    "timestamp",
    "label",
    "history_item_ids",
    "history_labels",
    "split",
]
# Categorical user side features read from the users table when the dataset has one.
USER_FEATURES = ("age_group", "gender", "occupation")
# When the valid split is empty (days before valid_start), the latest share of the train rows
# (by timestamp) validates instead; metrics.json says which ("valid_source").
HOLDOUT_SHARE = 0.1


@dataclass
class RecTables:
    dataset: str
    embedder: str
    until: str | None
    user_ids: np.ndarray  # (U,) raw ids of the users with train rows, sorted; index u + 1 (0: unknown)
    item_ids: np.ndarray  # (I,) raw ids, sorted; index i + 1
    genres: list[str]  # genre names; index g + 1
    item_text: np.ndarray  # (I + 1, D) float32
    item_genres: np.ndarray  # (I + 1, G) int64
    sample_id: np.ndarray  # (N,) str
    user: np.ndarray  # (N,) int64 user index
    item: np.ndarray  # (N,) int64 item index
    hist: np.ndarray  # (N, L) int64 item indices, oldest first, right-padded with 0
    hist_fb: np.ndarray  # (N, L) int64 feedback on each history item: 0 padding, 1 negative, 2 positive
    label: np.ndarray  # (N,) int8
    timestamp: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) int8: index into SPLITS
    nb_row: np.ndarray | None  # (N, K) int64 example rows, -1 = padding; None for `base`
    cot: np.ndarray | None  # (P + 1, D) float32, row 0 = no CoT
    cot_row: np.ndarray | None  # (N,) int64 row in `cot` (0 = none)
    pool_rows: np.ndarray | None  # sample rows that are in the in-context pool
    k: int
    fingerprint: str  # hash of every input partition's content
    valid_source: str = "split"
    stats: dict[str, Any] = field(default_factory=dict)
    # user side features: (N, U) int64 indices, 0 = unknown; names and vocabularies (index v + 1)
    user_feat: np.ndarray | None = None
    user_feature_names: list[str] = field(default_factory=list)
    user_feature_vocab: list[list[str]] = field(default_factory=list)
    control: str | None = None  # llmcf_random / llmcf_shufcot: how the examples were altered
    cot_version: str | None = None  # MODEL__PROMPT of the pool and neighbours read (None: none read)
    nb_score: np.ndarray | None = None  # (N, K) float32 retrieval similarity of each example (0 = padding)

    @property
    def has_neighbors(self) -> bool:
        return self.nb_row is not None

    def spec(self) -> DataSpec:
        return DataSpec(
            n_users=len(self.user_ids),
            n_items=len(self.item_ids),
            n_genres=len(self.genres),
            history_len=self.hist.shape[1],
            k=self.k,
            item_text=self.item_text,
            item_genres=self.item_genres,
            user_feature_sizes=tuple(len(v) for v in self.user_feature_vocab),
        )

    def cold_users(self, rows: np.ndarray) -> np.ndarray:
        """(n,) bool: the sample's user has no train rows (the unknown user 0)."""
        return self.user[np.asarray(rows, dtype=np.int64)] == 0

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors of the samples at ``rows`` and of their retrieved examples (see backbones.base)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = {
            "user": torch.from_numpy(self.user[rows]),
            "item": torch.from_numpy(self.item[rows]),
            "hist": torch.from_numpy(self.hist[rows]),
            "hist_fb": torch.from_numpy(self.hist_fb[rows]),
            "label": torch.from_numpy(self.label[rows].astype(np.float32)),
        }
        if self.user_feat is not None:
            out["user_feat"] = torch.from_numpy(self.user_feat[rows])
        if self.nb_row is None:
            return out
        nb = self.nb_row[rows]  # (B, K)
        mask = nb >= 0
        ex = np.where(mask, nb, 0)
        out |= {
            "nb_user": torch.from_numpy(self.user[ex]),
            "nb_item": torch.from_numpy(self.item[ex]),
            "nb_hist": torch.from_numpy(self.hist[ex]),  # (B, K, L)
            "nb_hist_fb": torch.from_numpy(self.hist_fb[ex]),  # (B, K, L)
            "nb_label": torch.from_numpy(self.label[ex].astype(np.int64)),
            "nb_mask": torch.from_numpy(mask),
        }
        if self.user_feat is not None:
            out["nb_user_feat"] = torch.from_numpy(self.user_feat[ex])  # (B, K, U)
        if self.cot is not None and self.cot_row is not None:
            c = np.where(mask, self.cot_row[ex], 0)  # (B, K)
            out["nb_cot"] = torch.from_numpy(self.cot[c])  # (B, K, D)
            out["nb_cot_mask"] = torch.from_numpy(c > 0)
        return out


# --------------------------------------------------------------------------------------------
# Reading artifacts
# --------------------------------------------------------------------------------------------


class _Reader:
    """Reads published partitions and remembers their content hashes for the fingerprint."""

    def __init__(self) -> None:
        self.hashes: list[str] = []

    def read(self, folder: Path, columns: list[str] | None = None) -> pa.Table:
        manifest = storage.read_manifest(folder) or {}
        self.hashes.append(f"{folder.parent.name}/{folder.name}:{manifest.get('sha256', '')}")
        return storage.read_partition(folder, columns=columns)

    def read_days(self, root: Path, days: list[dt.date], columns: list[str] | None = None) -> pa.Table | None:
        tables = [self.read(root / partition_dir_name(d), columns) for d in days]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.hashes).encode()).hexdigest()


def vectors(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A (fixed-size) list<float> column -> (rows, d) float32 matrix (zeros at nulls), valid mask."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    present = arr.filter(pa.array(valid))
    flat = np.asarray(present.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    d = flat.size // max(1, len(present)) if len(present) else 0
    out = np.zeros((len(arr), d), dtype=np.float32)
    if len(present):
        out[valid] = flat.reshape(len(present), d)
    return out, valid


def _index_of(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based index of each value in ``sorted_ids``; 0 where absent."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, values), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == values, pos + 1, 0).astype(np.int64)


def _newest_matrix(lists: pa.ChunkedArray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """list<int> column (oldest first) -> (N, length) values keeping the newest, left-aligned and
    right-padded, and the (N, length) mask of filled slots."""
    arr = lists.combine_chunks()
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    n = len(arr)
    starts, ends = offsets[:-1], offsets[1:]
    starts = np.maximum(starts, ends - length)  # keep the newest `length`
    lens = ends - starts
    out = np.zeros((n, length), dtype=np.int64)
    filled = np.zeros((n, length), dtype=bool)
    row = np.repeat(np.arange(n), lens)
    col = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    src = np.repeat(starts - offsets[0], lens) + col
    out[row, col] = flat[src]
    filled[row, col] = True
    return out, filled


def _history_matrix(lists: pa.ChunkedArray, item_ids: np.ndarray, length: int) -> np.ndarray:
    """list<int64> histories (oldest first) -> (N, length) item indices, keeping the newest."""
    raw, filled = _newest_matrix(lists, length)
    return np.where(filled, _index_of(item_ids, raw.ravel()).reshape(raw.shape), 0)


def _feedback_matrix(labels: pa.ChunkedArray, hist: np.ndarray) -> np.ndarray:
    """History labels (0/1, aligned with the item lists) -> feedback codes 1 negative, 2 positive,
    0 where the history slot is padding or an unknown item."""
    raw, filled = _newest_matrix(labels, hist.shape[1])
    return np.where(filled & (hist > 0), np.clip(raw, 0, 1) + 1, 0)


def resolve_embedder(settings: Any, explicit: str | None) -> str:
    name = explicit or settings.rec.embedder
    if not name:
        embedding = getattr(settings, "embedding", None)
        name = getattr(embedding, "embedder", None)
    if not name:
        raise InvalidArgument("no embedder configured: set rec.embedder or pass --embedder")
    return str(name)


def load_tables(
    settings: Any,
    dataset: str,
    *,
    until: dt.date | None = None,
    embedder: str | None = None,
    task: str = "ranking",
    with_icl: bool = True,
    cot_version: str | None = None,
) -> RecTables:
    """Join the published artifacts of ``dataset`` up to ``until`` into ``RecTables``.

    ``task`` picks the neighbours (ranking: task ``ctr``'s, history + target similarity;
    sequential: task ``next_item``'s, history only); ``with_icl=False`` (variant ``base``) reads no neighbours,
    pool or CoTs. ``cot_version`` (MODEL__PROMPT) picks the pool and neighbours; None: the
    dataset's promoted version.
    """
    paths = DataPaths(settings.home, check_dataset_name(dataset))
    embedder = resolve_embedder(settings, embedder)
    reader = _Reader()

    days = paths.sample_days(until)
    if not days:
        raise InvalidArgument(f"no published samples for {dataset!r} up to {until or 'now'}")
    samples = reader.read_days(paths.samples_root, days, SAMPLE_COLUMNS)
    assert samples is not None
    if not storage.is_published(paths.items):
        raise InvalidArgument(f"no published items table for {dataset!r} at {paths.items}")
    items = reader.read(paths.items, ["item_id", "genres"])
    vec_dir = paths.item_vectors(embedder)
    if not storage.is_published(vec_dir):
        raise InvalidArgument(f"no item embeddings at {vec_dir} (run the embedding stage)")
    item_vecs = reader.read(vec_dir, ["item_id", "vector"])

    # Items: vocabulary, genres, text embeddings.
    item_ids = np.unique(np.asarray(items.column("item_id").to_numpy(), dtype=np.int64))
    genre_lists = items.column("genres").to_pylist()
    genres = sorted({g for gs in genre_lists if gs for g in gs})
    genre_index = {g: i + 1 for i, g in enumerate(genres)}
    max_genres = max([len(gs or []) for gs in genre_lists] + [1])
    item_genres = np.zeros((len(item_ids) + 1, max_genres), dtype=np.int64)
    for raw_id, gs in zip(items.column("item_id").to_pylist(), genre_lists, strict=True):
        idx = _index_of(item_ids, np.array([raw_id], dtype=np.int64))[0]
        for j, g in enumerate(gs or []):
            item_genres[idx, j] = genre_index[g]
    vec, vec_ok = vectors(item_vecs.column("vector"))
    item_text = np.zeros((len(item_ids) + 1, vec.shape[1]), dtype=np.float32)
    at = _index_of(item_ids, np.asarray(item_vecs.column("item_id").to_numpy(), dtype=np.int64))
    keep = vec_ok & (at > 0)
    item_text[at[keep]] = vec[keep]
    items_without_text = int(len(item_ids) - keep.sum())

    use_users = getattr(settings.rec, "user_features", True) and storage.is_published(paths.users)
    users = reader.read(paths.users) if use_users else None

    # Samples.
    history_len = _history_len(settings, dataset, samples)
    sample_id = np.asarray(samples.column("sample_id").to_numpy(zero_copy_only=False)).astype(str)
    user_raw = np.asarray(samples.column("user_id").to_numpy(), dtype=np.int64)
    split_names = np.asarray(samples.column("split").to_numpy(zero_copy_only=False)).astype(str)
    split = np.full(len(split_names), -1, dtype=np.int8)
    for i, name in enumerate(SPLITS):
        split[split_names == name] = i
    if (split < 0).any():
        raise InvalidArgument(f"unknown split values in samples: {sorted(set(split_names) - set(SPLITS))}")
    timestamp = np.asarray(samples.column("timestamp").to_numpy(), dtype=np.int64)
    split, valid_source = _ensure_valid_split(split, timestamp)
    # The user vocabulary is the users with train rows: a user seen only in valid/test (most test
    # users of a time split) is the unknown user 0, whose embedding is trained by user-id dropout
    # (``rec.model.user_dropout``), never an untrained row.
    user_ids = np.unique(user_raw[split == SPLITS.index("train")])

    tables = RecTables(
        dataset=dataset,
        embedder=embedder,
        until=until.isoformat() if until else None,
        user_ids=user_ids,
        item_ids=item_ids,
        genres=genres,
        item_text=item_text,
        item_genres=item_genres,
        sample_id=sample_id,
        user=_index_of(user_ids, user_raw),
        item=_index_of(item_ids, np.asarray(samples.column("item_id").to_numpy(), dtype=np.int64)),
        hist=(hist := _history_matrix(samples.column("history_item_ids"), item_ids, history_len)),
        hist_fb=_feedback_matrix(samples.column("history_labels"), hist),
        label=np.asarray(samples.column("label").to_numpy(), dtype=np.int8),
        timestamp=timestamp,
        split=split,
        nb_row=None,
        cot=None,
        cot_row=None,
        pool_rows=None,
        k=0,
        fingerprint="",
        valid_source=valid_source,
        stats={
            "days": len(days),
            "rows": {s: int((split == i).sum()) for i, s in enumerate(SPLITS)},
            "rows_of_unknown_users": {
                s: int(((split == i) & ~np.isin(user_raw, user_ids)).sum()) for i, s in enumerate(SPLITS)
            },
            "items_without_text": items_without_text,
        },
    )
    if users is not None:
        _attach_user_features(tables, users, user_raw)
    if with_icl:
        rpaths = RetrievalPaths(settings.home, dataset, embedder)
        version = resolve_cot_version(rpaths, cot_version)
        nb_root = rpaths.neighbors_root("ctr" if task == "ranking" else "next_item", version)
        _attach_icl(tables, reader, rpaths.pool_root(version), nb_root, days, until)
        tables.cot_version = version.folder
    tables.fingerprint = reader.fingerprint()
    return tables


def _attach_user_features(tables: RecTables, users: pa.Table, user_raw: np.ndarray) -> None:
    """Categorical user features per sample row; users missing from the table, nulls and values
    first seen outside the train rows are 0 (unknown)."""
    names = [c for c in USER_FEATURES if c in users.column_names]
    if not names:
        return
    frame = users.select(["user_id", *names]).to_pandas().drop_duplicates("user_id").set_index("user_id")
    at = frame.index.get_indexer(user_raw)  # -1: not in the users table
    train = tables.split == SPLITS.index("train")
    feat = np.zeros((len(user_raw), len(names)), dtype=np.int64)
    vocab = []
    for j, name in enumerate(names):
        values = frame[name].astype("string").to_numpy(dtype=object, na_value=None)
        per_row = np.where(at >= 0, values[np.maximum(at, 0)], None)
        known = sorted({v for v in per_row[train] if v is not None})
        index = {v: i + 1 for i, v in enumerate(known)}
        feat[:, j] = [index.get(v, 0) if v is not None else 0 for v in per_row]
        vocab.append(known)
    tables.user_feat, tables.user_feature_names, tables.user_feature_vocab = feat, names, vocab
    tables.stats["user_features"] = {
        "names": names,
        "rows_without_user_features": int((at < 0).sum()),
    }


def _history_len(settings: Any, dataset: str, samples: pa.Table) -> int:
    if dataset in settings.datasets:
        return int(settings.datasets[dataset].history_len)
    lengths = pc.list_value_length(samples.column("history_item_ids"))
    return max(1, int(pc.max(lengths).as_py() or 1))


def _ensure_valid_split(split: np.ndarray, timestamp: np.ndarray) -> tuple[np.ndarray, str]:
    """Use the valid split if it has rows; else hold out the newest train rows."""
    valid, train = SPLITS.index("valid"), SPLITS.index("train")
    if (split == valid).any():
        return split, "split"
    train_rows = np.flatnonzero(split == train)
    if len(train_rows) < 2:
        raise InvalidArgument("not enough train samples to hold out a validation set")
    n_hold = max(1, int(len(train_rows) * HOLDOUT_SHARE))
    newest = train_rows[np.argsort(timestamp[train_rows], kind="stable")[-n_hold:]]
    split = split.copy()
    split[newest] = valid
    return split, f"holdout_newest_{HOLDOUT_SHARE:g}_of_train"


def _attach_icl(
    tables: RecTables,
    reader: _Reader,
    pool_root: Path,
    nb_root: Path,
    days: list[dt.date],
    until: dt.date | None,
) -> None:
    """Neighbour rows (N, K) and CoT embeddings for the llmcf* variants."""
    pool = reader.read_days(pool_root, published_days(pool_root, until), ["sample_id", "cot_vec"])
    if pool is None or pool.num_rows == 0:
        raise InvalidArgument(f"no published in-context pool at {pool_root} (run the embedding stage)")
    nb_days = [d for d in days if storage.is_published(nb_root / partition_dir_name(d))]
    neighbors = reader.read_days(
        nb_root, nb_days, ["sample_id", "neighbor_ids", "neighbor_padded", "neighbor_scores"]
    )
    if neighbors is None or neighbors.num_rows == 0:
        raise InvalidArgument(f"no published neighbours at {nb_root} (run the retrieval stage)")

    row_of = pd.Index(tables.sample_id)
    # CoT matrix: row 0 = none; pool rows with a CoT vector follow.
    cot_vec, has_cot = vectors(pool.column("cot_vec"))
    pool_ids = np.asarray(pool.column("sample_id").to_numpy(zero_copy_only=False)).astype(str)
    cot = np.concatenate([np.zeros((1, cot_vec.shape[1]), np.float32), cot_vec[has_cot]])
    cot_row = np.zeros(len(tables.sample_id), dtype=np.int64)
    at = row_of.get_indexer(pool_ids[has_cot])
    cot_row[at[at >= 0]] = np.arange(1, has_cot.sum() + 1)[at >= 0]

    ids = neighbors.column("neighbor_ids").combine_chunks()
    k = int(pc.max(pc.list_value_length(ids)).as_py() or 0)
    flat_ids = np.asarray(ids.flatten().to_numpy(zero_copy_only=False)).astype(str)
    padded = np.asarray(
        neighbors.column("neighbor_padded").combine_chunks().flatten().to_numpy(zero_copy_only=False), bool
    )
    if len(flat_ids) != neighbors.num_rows * k:
        raise InvalidArgument(f"neighbour lists at {nb_root} are not all of length {k}")
    ex_rows = row_of.get_indexer(flat_ids)  # -1 for "" padding and unknown ids
    ex_rows[padded] = -1
    nb_row = np.full((len(tables.sample_id), k), -1, dtype=np.int64)
    query_rows = row_of.get_indexer(
        np.asarray(neighbors.column("sample_id").to_numpy(zero_copy_only=False)).astype(str)
    )
    ok = query_rows >= 0
    nb_row[query_rows[ok]] = ex_rows.reshape(-1, k)[ok]
    scores = np.asarray(
        neighbors.column("neighbor_scores").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        np.float32,
    )
    nb_score = np.zeros((len(tables.sample_id), k), dtype=np.float32)
    nb_score[query_rows[ok]] = np.where(ex_rows < 0, 0.0, scores).reshape(-1, k)[ok]

    pool_rows = row_of.get_indexer(pool_ids)
    tables.nb_row, tables.cot, tables.cot_row, tables.k = nb_row, cot, cot_row, k
    tables.nb_score = nb_score
    tables.pool_rows = np.unique(pool_rows[pool_rows >= 0])
    tables.stats |= {
        "k": k,
        "pool_rows": int(pool.num_rows),
        "pool_rows_with_cot": int(has_cot.sum()),
        "neighbor_days_missing": len(days) - len(nb_days),
        "samples_without_neighbors_row": int(len(tables.sample_id) - ok.sum()),
        "neighbor_slots_padded": int(padded.sum()),
        "neighbor_ids_unknown": int(((ex_rows < 0) & ~padded).sum()),
        "example_share_with_cot": float((cot_row[nb_row[nb_row >= 0]] > 0).mean())
        if (nb_row >= 0).any()
        else 0.0,
    }
    if tables.stats["neighbor_ids_unknown"]:
        log.warning(
            "%d neighbour ids are not among the loaded samples: treated as padding",
            tables.stats["neighbor_ids_unknown"],
        )


def apply_control(tables: RecTables, variant: str, seed: int) -> RecTables:
    """Alter the retrieved examples as a control variant says (in place; returns ``tables``).

    - ``llmcf_random``: every real example slot gets a random pool row with the same label among
      the pool rows strictly earlier than the sample (the retrieval's leakage rule), instead of
      the nearest one: the same number of examples and the same label balance, no similarity.
    - ``llmcf_shufcot``: the CoT vectors are permuted among the pool rows of the same label: each
      example keeps its features and label but carries another example's CoT.
    Other variants are returned unchanged. Deterministic in ``seed``.
    """
    if variant not in ("llmcf_random", "llmcf_shufcot"):
        return tables
    if tables.nb_row is None or tables.pool_rows is None or tables.cot_row is None:
        raise InvalidArgument(f"{variant} needs the retrieved examples (load the tables with neighbours)")
    rng = np.random.default_rng([seed, 7_919])
    if variant == "llmcf_random":
        nb = tables.nb_row
        real = nb >= 0
        slot_label = np.where(real, tables.label[np.maximum(nb, 0)], -1)  # (N, K)
        out = np.full_like(nb, -1)
        for lab in (0, 1):
            pool = tables.pool_rows[tables.label[tables.pool_rows] == lab]
            pool = pool[np.argsort(tables.timestamp[pool], kind="stable")]
            earlier = np.searchsorted(tables.timestamp[pool], tables.timestamp, side="left")  # (N,)
            rows, cols = np.nonzero(slot_label == lab)
            n = earlier[rows]
            ok = n > 0
            pick = np.floor(rng.random(len(rows)) * np.maximum(n, 1)).astype(np.int64)
            out[rows[ok], cols[ok]] = pool[pick[ok]]
        tables.stats["control_slots_without_earlier_example"] = int((real & (out < 0)).sum())
        tables.nb_row = out
        tables.nb_score = None  # the random examples were not retrieved: no similarity
    else:
        with_cot = np.flatnonzero(tables.cot_row > 0)
        cot_row = tables.cot_row.copy()
        for lab in (0, 1):
            group = with_cot[tables.label[with_cot] == lab]
            cot_row[group] = rng.permutation(cot_row[group])
        tables.cot_row = cot_row
    tables.control = variant
    return tables


def read_pool(
    settings: Any, dataset: str, embedder: str, until: str | None, cot_version: str | None = None
) -> dict[str, np.ndarray]:
    """The in-context pool's retrieval columns (for ``scoring.ExactRetriever``) of CoT version
    ``cot_version`` (None: the promoted one)."""
    rpaths = RetrievalPaths(settings.home, check_dataset_name(dataset), embedder)
    root = rpaths.pool_root(resolve_cot_version(rpaths, cot_version))
    day = dt.date.fromisoformat(until) if until else None
    columns = ["sample_id", "timestamp", "label", "history_vec", "target_vec"]
    pool = _Reader().read_days(root, published_days(root, day), columns)
    if pool is None:
        raise InvalidArgument(f"no published in-context pool at {root}")
    return {
        "sample_id": np.asarray(pool.column("sample_id").to_numpy(zero_copy_only=False)).astype(str),
        "timestamp": np.asarray(pool.column("timestamp").to_numpy(), dtype=np.int64),
        "label": np.asarray(pool.column("label").to_numpy(), dtype=np.int8),
        "history_vec": vectors(pool.column("history_vec"))[0],
        "target_vec": vectors(pool.column("target_vec"))[0],
    }
