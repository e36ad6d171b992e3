"""The CoT table schema and the block store that makes generation resumable.

While a version is generated, finished blocks of rows are committed one file each
(``block-00000.parquet``, written beside its final name and renamed into place, so a file that
exists is complete). A rerun reads every committed block, generates only the samples without a
row (or with a failed row, when ``retry_failed``), and numbers its new blocks after the last
one. Publication merges the published table (if any) and the blocks, later rows winning.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmcf_core import fsio

COT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("cot_text", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("error", pa.string()),
    ]
)
COT_COLUMNS = tuple(COT_SCHEMA.names)
_BLOCK = re.compile(r"^block-(\d{5,})\.parquet$")


def to_table(rows: pd.DataFrame) -> pa.Table:
    """Rows (any column order, extra columns dropped) as a table of :data:`COT_SCHEMA`."""
    frame = rows.loc[:, list(COT_COLUMNS)]
    return pa.Table.from_pandas(frame, schema=COT_SCHEMA, preserve_index=False)


def empty_table() -> pa.Table:
    return COT_SCHEMA.empty_table()


class BlockStore:
    """Committed blocks of one (partition, version), under ``<day>/_blocks/<version>/``."""

    def __init__(self, folder: Any) -> None:
        self.folder = fsio.as_path(folder)  # local, or a prefix on an object store

    def files(self) -> list[Any]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _BLOCK.match(p.name))]
        return [p for _, p in sorted(found)]

    def next_index(self) -> int:
        files = self.files()
        return int(_BLOCK.match(files[-1].name).group(1)) + 1 if files else 0

    def read(self) -> pa.Table:
        tables = [fsio.read_parquet(p, schema=COT_SCHEMA) for p in self.files()]
        return pa.concat_tables(tables) if tables else empty_table()

    def write(self, index: int, table: pa.Table) -> Any:
        """Commit one block atomically (local: temp file, fsync, rename; object store: one PUT)."""
        final = self.folder / f"block-{index:05d}.parquet"
        if final.exists():
            raise FileExistsError(f"{final} is already committed")
        sink = pa.BufferOutputStream()
        pq.write_table(table.cast(COT_SCHEMA), sink, compression="zstd")
        fsio.write_bytes_atomic(final, sink.getvalue().to_pybytes())
        return final

    def clear(self) -> None:
        fsio.rmtree(self.folder)
        parent = fsio.local_path(self.folder.parent)  # object stores have no empty folders
        if parent is not None and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def merge_rows(*tables: pa.Table) -> pd.DataFrame:
    """Concatenate in order (published first, then blocks by index); the last row of a sample wins."""
    frames = [t.cast(COT_SCHEMA).to_pandas() for t in tables if t.num_rows]
    if not frames:
        return empty_table().to_pandas()
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates(subset="sample_id", keep="last").reset_index(drop=True)


def group_blocks(plan: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """The rows of ``plan`` (column ``block``) as consecutive whole blocks joined into frames of at
    least ``size`` rows (the last one may be smaller): one model call per frame. A block is never
    split, so a frame's candidates complete its blocks; small blocks (a few samples of a day each,
    in a call over many days) share a call instead of each paying every decode step alone."""
    frames, pending, rows = [], [], 0
    for _, block in plan.groupby("block", sort=True):
        pending.append(block)
        rows += len(block)
        if rows >= size:
            frames.append(pd.concat(pending))
            pending, rows = [], 0
    if pending:
        frames.append(pd.concat(pending))
    return frames
