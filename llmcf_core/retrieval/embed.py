"""Text embeddings: the configured sentence encoder, in-process or on a Ray Data actor pool.

- :func:`embed_texts` embeds a list of texts (L2-normalised float32). At least
  ``embedding.ray_min_texts`` texts go through Ray Data (``map_batches`` on an
  ``ActorPoolStrategy`` of ``embedding.actors`` actors with fractional CPUs); fewer are embedded
  in-process, where starting Ray would cost more than the work.
- :func:`ensure_item_vectors` embeds every item text once per embedder and caches the result as
  ``<ds>/embeddings/<embedder>/items/``; later calls embed only new items (all of them again only
  when an existing item's text changed).
- :func:`sample_vectors`: a sample is the normalised mean of its history items' vectors (the zero
  vector for an empty history) and its target item's vector.

The encoder folder is read by path (``package:<pkg>/<folder>`` resolves inside an installed
package without importing it); nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from llmcf_core import fsio, storage
from llmcf_core.config import EmbeddingConfig, Settings
from llmcf_core.layout import InvalidArgument, RetrievalPaths

log = logging.getLogger(__name__)


def _package_dir(package: str) -> Path:
    """An installed package's folder, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgument(f"package {package!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_encoder_folder(cfg: EmbeddingConfig, home: Path) -> Path:
    """The sentence-transformers folder named by ``embedding.model``."""
    if cfg.model.startswith("package:"):
        package, _, sub = cfg.model.removeprefix("package:").partition("/")
        folder = _package_dir(package) / sub
    elif fsio.is_url(cfg.model) or fsio.is_url(home):
        # On an object store (an absolute URL, or relative to a URL data root): a local copy.
        url = cfg.model if fsio.is_url(cfg.model) else fsio.as_path(home) / cfg.model
        try:
            folder = fsio.local_copy(url)
        except FileNotFoundError as exc:
            raise InvalidArgument(f"embedding model {cfg.model!r}: {exc}") from None
    else:
        path = Path(cfg.model).expanduser()
        folder = path if path.is_absolute() else Path(home) / path
    if not (folder / "config.json").is_file():
        raise InvalidArgument(
            f"embedding model {cfg.model!r}: {folder} is not a model folder (no config.json)"
        )
    return folder


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class TextEncoder:
    """A sentence-transformers model on one device; ``encode`` returns unit float32 rows."""

    def __init__(
        self, folder: str, *, device: str = "cpu", max_seq_length: int = 256, batch_size: int = 64
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model = SentenceTransformer(folder, device=device, local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        return normalise(out)


@functools.cache
def _local_encoder(folder: str, device: str, max_seq_length: int, batch_size: int) -> TextEncoder:
    return TextEncoder(folder, device=device, max_seq_length=max_seq_length, batch_size=batch_size)


class _EncodeBatch:
    """Ray Data callable class: one encoder per actor, loaded once."""

    def __init__(self, folder: str, device: str, max_seq_length: int, batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.encoder = TextEncoder(
            folder, device=device, max_seq_length=max_seq_length, batch_size=batch_size
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode([str(t) for t in batch["text"]])
        return {"row": batch["row"], "vector": vectors}


def _embed_on_ray(texts: Sequence[str], folder: Path, cfg: EmbeddingConfig) -> np.ndarray:
    import ray
    from ray.data import ActorPoolStrategy

    from llmcf_core.raycompute import ensure_ray

    ensure_ray()
    n = len(texts)
    # Enough blocks for every actor to get work (one block would go to a single actor).
    blocks = max(1, min(cfg.actors * 4, math.ceil(n / cfg.batch_size)))
    ds = ray.data.from_items([{"row": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=blocks)
    out = ds.map_batches(
        _EncodeBatch,
        fn_constructor_kwargs={
            "folder": str(folder),
            "device": cfg.device,
            "max_seq_length": cfg.max_seq_length,
            "batch_size": cfg.batch_size,
            "threads": max(1, round(cfg.actor_num_cpus)),
        },
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.actor_num_cpus,
        num_gpus=cfg.actor_num_gpus or None,
    )
    vectors = np.zeros((n, cfg.dim), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        rows = np.asarray(batch["row"], dtype=np.int64)
        vectors[rows] = np.asarray(batch["vector"], dtype=np.float32)
        seen[rows] = True
    if not seen.all():
        raise RuntimeError(f"Ray Data returned {int(seen.sum())} of {n} embeddings")
    return vectors


def embed_texts(
    texts: Sequence[str], cfg: EmbeddingConfig, home: Path, *, backend: str | None = None
) -> np.ndarray:
    """Unit-norm float32 embeddings of ``texts`` (n, dim), in input order."""
    folder = resolve_encoder_folder(cfg, home)
    if not texts:
        return np.zeros((0, cfg.dim), dtype=np.float32)
    backend = backend or cfg.backend
    if backend == "ray" and len(texts) >= cfg.ray_min_texts:
        log.info("embedding %d texts on Ray Data (%d actors)", len(texts), cfg.actors)
        vectors = _embed_on_ray(texts, folder, cfg)
    else:
        log.info("embedding %d texts in-process", len(texts))
        vectors = _local_encoder(str(folder), cfg.device, cfg.max_seq_length, cfg.batch_size).encode(texts)
    if vectors.shape[1] != cfg.dim:
        raise InvalidArgument(
            f"embedder {cfg.embedder!r} ({cfg.model}) returns {vectors.shape[1]}-d vectors, "
            f"but embedding.dim is {cfg.dim}"
        )
    return vectors


# --------------------------------------------------------------------------------------------
# Item vectors (cached per embedder) and sample vectors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemVectors:
    """Unit vectors of item texts, rows sorted by item id."""

    ids: np.ndarray  # (n,) int64, sorted, unique
    vectors: np.ndarray  # (n, d) float32

    def positions(self, item_ids: Any) -> np.ndarray:
        """Row of each item id; raises KeyError naming unknown ids."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, len(self.ids) - 1) if len(self.ids) else pos
        bad = (pos >= len(self.ids)) | (self.ids[pos] != ids) if len(self.ids) else np.ones(len(ids), bool)
        if bad.any():
            raise KeyError(f"items without an embedding: {sorted(set(ids[bad].tolist()))[:10]}")
        return pos

    def lookup(self, item_ids: Any) -> np.ndarray:
        return self.vectors[self.positions(item_ids)]


def _texts_sha256(ids: np.ndarray, texts: dict[int, str]) -> str:
    h = hashlib.sha256()
    for i in ids.tolist():
        h.update(f"{i}\t{texts[i]}\n".encode())
    return h.hexdigest()


def vectors_to_arrow(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32(), dim))
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(column), dim)


def read_item_vectors(paths: RetrievalPaths, dim: int) -> ItemVectors:
    table = storage.read_partition(paths.items)
    return ItemVectors(
        table.column("item_id").to_numpy().astype(np.int64), arrow_to_vectors(table.column("vector"), dim)
    )


def ensure_item_vectors(settings: Settings, dataset: str) -> ItemVectors:
    """Item vectors for every item of the dataset's items table, embedding only what is missing."""
    from llmcf_core.retrieval import checks

    cfg = settings.embedding
    paths = RetrievalPaths(settings.home, dataset, cfg.embedder)
    if not storage.is_published(paths.data.items):
        raise InvalidArgument(f"no items table for {dataset!r} at {paths.data.items}: run jobs.ingest first")
    items = storage.read_partition(paths.data.items, columns=["item_id", "text"]).to_pandas()
    texts = dict(
        zip(items["item_id"].astype("int64").tolist(), items["text"].astype(str).tolist(), strict=True)
    )
    all_ids = np.array(sorted(texts), dtype=np.int64)
    model_key = {"embedder": cfg.embedder, "model": cfg.model, "dim": cfg.dim}

    cached_ids = np.zeros(0, np.int64)
    cached_vecs = np.zeros((0, cfg.dim), np.float32)
    manifest = storage.read_manifest(paths.items)
    if manifest is not None and all(manifest.get(k) == v for k, v in model_key.items()):
        cached = read_item_vectors(paths, cfg.dim)
        if np.isin(cached.ids, all_ids).all() and manifest.get("texts_sha256") == _texts_sha256(
            cached.ids, texts
        ):
            cached_ids, cached_vecs = cached.ids, cached.vectors
        else:
            log.info("item texts changed since the cache was built: re-embedding every item")
    missing = np.setdiff1d(all_ids, cached_ids)
    if len(missing) == 0:
        return ItemVectors(cached_ids, cached_vecs)

    new_vecs = embed_texts([texts[i] for i in missing.tolist()], cfg, settings.home)
    ids = np.concatenate([cached_ids, missing])
    vecs = np.concatenate([cached_vecs, new_vecs])
    order = np.argsort(ids, kind="stable")
    result = ItemVectors(ids[order], vecs[order])
    report = checks.check_item_vectors(result, dataset=dataset, dim=cfg.dim)
    report.raise_if_failed()
    table = pa.table(
        {"item_id": pa.array(result.ids, pa.int64()), "vector": vectors_to_arrow(result.vectors)}
    )
    storage.publish_table(
        table,
        paths.items,
        {
            **model_key,
            "dataset": dataset,
            "texts_sha256": _texts_sha256(result.ids, texts),
            "checks": report.to_dict(),
        },
    )
    log.info("embedded %d new items (%d cached)", len(missing), len(cached_ids))
    return result


def history_sums(items: ItemVectors, history_item_ids: Sequence[Any]) -> np.ndarray:
    """Per sample, the sum of its history items' vectors: (n, d) float32, zero for empty histories.

    One sparse (samples x items) product, so whole-dataset inputs stay fast and small.
    """
    from scipy.sparse import csr_matrix

    n = len(history_item_ids)
    lengths = np.fromiter((len(h) for h in history_item_ids), dtype=np.int64, count=n)
    flat = [np.asarray(h, dtype=np.int64) for h in history_item_ids if len(h)]
    cols = items.positions(np.concatenate(flat)) if flat else np.zeros(0, np.int64)
    counts = csr_matrix(
        (np.ones(len(cols), np.float32), cols, np.concatenate([[0], np.cumsum(lengths)])),
        shape=(n, len(items.ids)),
    )
    return np.asarray(counts @ items.vectors, dtype=np.float32)


def sample_vectors(
    items: ItemVectors, item_ids: Any, history_item_ids: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(history, target) unit vectors per sample: (n, d) each; empty histories give zero rows.

    The history vector is the normalised mean of the history items' vectors (the sum has the
    mean's direction).
    """
    return normalise(history_sums(items, list(history_item_ids))), items.lookup(item_ids)
