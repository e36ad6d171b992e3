"""Atomic, idempotent publication of Parquet partitions.

A partition is a folder holding ``part-00000.parquet`` and a ``_SUCCESS`` manifest (JSON: rows,
content hash, extra metadata). Writers build the whole folder beside its final place and then
swap it in with one rename (``renameat2(RENAME_EXCHANGE)`` on Linux, so readers see either the
old or the new folder, never a mix). Readers only trust folders that carry ``_SUCCESS``.
Publishing the same content again leaves the existing folder untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PART_FILE = "part-00000.parquet"
MANIFEST = "_SUCCESS"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class PublishResult:
    path: Path
    rows: int
    sha256: str
    changed: bool


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the kernel or libc cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    res = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return res == 0


def _swap_into_place(staged: Path, final: Path) -> None:
    if not final.exists():
        try:
            os.rename(staged, final)
            return
        except OSError:
            if not final.exists():
                raise  # a concurrent writer may have published first; swap with it below
    if _renameat2_exchange(staged, final):
        shutil.rmtree(staged)  # now holds the previous version
        return
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, trash)
    os.rename(staged, final)
    shutil.rmtree(trash, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def is_published(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def publish_table(table: pa.Table, final: Path, metadata: dict[str, Any] | None = None) -> PublishResult:
    """Write ``table`` as the partition folder ``final``, atomically and idempotently."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    staged.mkdir()
    try:
        part = staged / PART_FILE
        # Deterministic bytes for identical input: no creation time, fixed writer settings.
        pq.write_table(table, part, compression="zstd", write_statistics=True, store_schema=True)
        digest = _file_sha256(part)
        previous = read_manifest(final)
        if previous is not None and previous.get("sha256") == digest:
            shutil.rmtree(staged)
            return PublishResult(final, table.num_rows, digest, changed=False)
        manifest = {"rows": table.num_rows, "sha256": digest, "file": PART_FILE, **(metadata or {})}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        _fsync_dir(staged)
        _swap_into_place(staged, final)
        _fsync_dir(final.parent)
        return PublishResult(final, table.num_rows, digest, changed=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def write_quarantine(table: pa.Table, folder: Path, report: dict[str, Any]) -> Path:
    """Replace the quarantine folder of a partition with the failing rows and the check report."""
    empty = pa.table({})
    result = publish_table(table if table.num_columns else empty, folder, {"report": report})
    return result.path


def read_partition(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """Read a published partition; refuses folders without a ``_SUCCESS`` manifest."""
    folder = Path(folder)
    if not is_published(folder):
        raise FileNotFoundError(f"{folder} is not a published partition (no {MANIFEST})")
    return pq.read_table(folder / PART_FILE, columns=columns)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
