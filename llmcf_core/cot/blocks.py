"""The CoT table schema and the block store that makes generation resumable.

While a version is generated, finished blocks of rows are committed one file each
(``block-00000.parquet``, written beside its final name and renamed into place, so a file that
exists is complete). A rerun reads every committed block, generates only the samples without a
row (or with a failed row, when ``retry_failed``), and numbers its new blocks after the last
one. Publication merges the published table (if any) and the blocks, later rows winning.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _BLOCK.match(p.name))]
        return [p for _, p in sorted(found)]

    def next_index(self) -> int:
        files = self.files()
        return int(_BLOCK.match(files[-1].name).group(1)) + 1 if files else 0

    def read(self) -> pa.Table:
        tables = [pq.read_table(p, schema=COT_SCHEMA) for p in self.files()]
        return pa.concat_tables(tables) if tables else empty_table()

    def write(self, index: int, table: pa.Table) -> Path:
        """Commit one block: write a hidden temp file, fsync, rename into place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"block-{index:05d}.parquet"
        if final.exists():
            raise FileExistsError(f"{final} is already committed")
        tmp = self.folder / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        pq.write_table(table.cast(COT_SCHEMA), tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.rename(tmp, final)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return final

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = self.folder.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def merge_rows(*tables: pa.Table) -> pd.DataFrame:
    """Concatenate in order (published first, then blocks by index); the last row of a sample wins."""
    frames = [t.cast(COT_SCHEMA).to_pandas() for t in tables if t.num_rows]
    if not frames:
        return empty_table().to_pandas()
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates(subset="sample_id", keep="last").reset_index(drop=True)
