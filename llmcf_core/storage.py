"""Atomic, idempotent publication of Parquet partitions.

A partition is a folder holding ``part-00000.parquet`` and a ``_SUCCESS`` manifest (JSON: rows,
content hash, extra metadata). Writers build the whole folder beside its final place and then
swap it in with one rename (``renameat2(RENAME_EXCHANGE)`` on Linux, so readers see either the
old or the new folder, never a mix). Readers only trust folders that carry ``_SUCCESS``.
Publishing the same content again leaves the existing folder untouched.

On an object store (a URL data root: s3://, gs://, ...; see ``llmcf_core.fsio``) there is no atomic
folder rename, so the manifest is the commit point instead: the data goes to a content-addressed
``part-<sha256[:16]>.parquet`` in the final folder, then ``_SUCCESS`` naming that file is written
in one PUT (atomic on S3 and GCS). Readers open the file the manifest names, so they see the old or
the new version, never a mix; part files older than the previous version are deleted afterwards.
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

from llmcf_core import fsio

PART_FILE = "part-00000.parquet"
MANIFEST = "_SUCCESS"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class PublishResult:
    path: Any  # Path, or a UPath on an object store
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


def read_manifest(folder: Any) -> dict[str, Any] | None:
    return fsio.read_json(fsio.as_path(folder) / MANIFEST)


def is_published(folder: Any) -> bool:
    return (fsio.as_path(folder) / MANIFEST).is_file()


def part_file(folder: Any, manifest: dict[str, Any] | None = None) -> Any:
    """The data file of a published partition (the one its manifest names)."""
    folder = fsio.as_path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} is not a published partition (no {MANIFEST})")
    return folder / str(manifest.get("file") or PART_FILE)


# Deterministic bytes for identical input: no creation time, fixed writer settings (both paths).
_PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True, "store_schema": True}


def _write_part(table: pa.Table, path: Any) -> None:
    fsio.write_parquet(table, path, **_PARQUET_OPTIONS)


def publish_table(table: pa.Table, final: Any, metadata: dict[str, Any] | None = None) -> PublishResult:
    """Write ``table`` as the partition folder ``final``, atomically and idempotently."""
    final = fsio.as_path(final)
    if fsio.is_url(final):
        return _publish_object_store(table, final, metadata)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    staged.mkdir()
    try:
        part = staged / PART_FILE
        _write_part(table, part)
        digest = fsio.file_sha256(part)
        previous = read_manifest(final)
        if previous is not None and previous.get("sha256") == digest:
            shutil.rmtree(staged)
            return PublishResult(final, table.num_rows, digest, changed=False)
        manifest = {"rows": table.num_rows, "sha256": digest, "file": PART_FILE, **(metadata or {})}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        fsio.fsync_dir(staged)
        _swap_into_place(staged, final)
        fsio.fsync_dir(final.parent)
        return PublishResult(final, table.num_rows, digest, changed=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _publish_object_store(table: pa.Table, final: Any, metadata: dict[str, Any] | None) -> PublishResult:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_PARQUET_OPTIONS)
    data = sink.getvalue().to_pybytes()
    digest = hashlib.sha256(data).hexdigest()
    previous = read_manifest(final)
    if previous is not None and previous.get("sha256") == digest:
        return PublishResult(final, table.num_rows, digest, changed=False)
    name = f"part-{digest[:16]}.parquet"
    fsio.write_bytes_atomic(final / name, data)
    manifest = {"rows": table.num_rows, "sha256": digest, "file": name, **(metadata or {})}
    fsio.write_json_atomic(final / MANIFEST, manifest)  # the commit point
    keep = {name, MANIFEST, str((previous or {}).get("file") or "")}
    for child in final.iterdir():  # a reader holding the previous manifest can still read its file
        if child.name not in keep and child.name.startswith("part-"):
            fsio.remove(child)
    return PublishResult(final, table.num_rows, digest, changed=True)


def write_quarantine(table: pa.Table, folder: Any, report: dict[str, Any]) -> Any:
    """Replace the quarantine folder of a partition with the failing rows and the check report."""
    empty = pa.table({})
    result = publish_table(table if table.num_columns else empty, folder, {"report": report})
    return result.path


def read_partition(folder: Any, columns: list[str] | None = None) -> pa.Table:
    """Read a published partition; refuses folders without a ``_SUCCESS`` manifest."""
    folder = fsio.as_path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} is not a published partition (no {MANIFEST})")
    return fsio.read_parquet(part_file(folder, manifest), columns=columns)
