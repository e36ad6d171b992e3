"""One file API for the data root, local or on an object store (fsspec URLs: s3://, gs://, ...).

The data root (``$LLMCF_HOME``) is either a local POSIX path or a URL. Code that builds artifact
paths gets a :class:`pathlib.Path` for the first and a :class:`upath.UPath` for the second (the
same ``/`` joins, ``exists``, ``iterdir``, ``glob``, ``open``, ``read_text``, ...), and uses the
helpers below for the operations whose meaning differs:

- **atomic writes**: locally a temporary file, ``fsync`` and ``os.replace``; on an object store one
  PUT of the whole object, which S3 and GCS make visible atomically (there is no rename there);
- **folders**: an object store has no atomic folder rename, so multi-file artifacts use a manifest
  written last as their commit point (``storage.publish_table`` and the stage modules do);
- **Parquet** through pyarrow with the fsspec filesystem, **models** copied to a local cache
  before ``from_pretrained`` (:func:`local_copy`) and uploaded after ``save_pretrained``
  (:func:`upload_dir`), and Ray Train's ``storage_filesystem`` (:func:`ray_storage`).

``lobj:///abs/path`` is a local folder with object-store semantics (not ``os.PathLike``, so no code
path can fall back to local file calls by accident), registered with fsspec when this module is
imported. The tests use it where the work crosses Ray worker processes (fsspec's ``memory://``
lives in one process); anyone can use it to dry-run an object-store deployment on one host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from upath import UPath
from upath.registry import register_implementation as _register_upath

AnyPath = Path | UPath


class LocalObjectStore(LocalFileSystem):
    """``lobj:///abs/path``: a local folder used like an object store (see the module docstring)."""

    protocol = ("lobj",)

    @classmethod
    def _strip_protocol(cls, path):  # type: ignore[override]
        path = str(path)
        if path.startswith("lobj://"):
            path = path[len("lobj://") :]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"lobj://{self._strip_protocol(name)}"


class LobjPath(UPath):
    """UPath for ``lobj://``: the generic fsspec-backed path, deliberately not ``os.PathLike``."""

    __slots__ = ()


fsspec.register_implementation("lobj", LocalObjectStore, clobber=True)
_register_upath("lobj", LobjPath, clobber=True)


def is_url(p: Any) -> bool:
    """True for an object-store location (a URL string or a non-local UPath), False for a local path."""
    if isinstance(p, str):
        return "://" in p
    return isinstance(p, UPath) and not isinstance(p, PurePath)


def as_path(p: Any) -> AnyPath:
    """``Path`` for local paths, ``UPath`` for URLs (kept as they are)."""
    if isinstance(p, UPath) and is_url(p):
        return p
    if isinstance(p, str) and "://" in p:
        return UPath(p)
    return Path(p)


def resolve(p: Any) -> AnyPath:
    """As :func:`as_path`, with local paths made absolute (``~`` expanded, symlinks resolved)."""
    path = as_path(p)
    return path if is_url(path) else Path(path).expanduser().resolve()


def fs_and_path(p: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    path = as_path(p)
    if is_url(path):
        return path.fs, path.path
    return LocalFileSystem(), str(path)


def local_path(p: Any) -> Path | None:
    """The local ``Path`` where ``p`` is local, else None."""
    return None if is_url(p) else Path(p)


def makedirs(p: Any) -> None:
    """``mkdir -p`` locally; nothing on an object store (folders exist by their objects)."""
    path = as_path(p)
    if is_url(path):
        if isinstance(path.fs, LocalFileSystem):
            path.fs.makedirs(path.path, exist_ok=True)
        return
    path.mkdir(parents=True, exist_ok=True)


def _ensure_parent(fs: fsspec.AbstractFileSystem, key: str) -> None:
    """Local-backed filesystems (``lobj://``, ``file://``) need the parent folder of a new file."""
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(fs._parent(key), exist_ok=True)


def _commit_order(names: list[str], last: str | None) -> list[str]:
    """``names`` sorted, with ``last`` (a folder's commit file) moved to the end."""
    names = sorted(names)
    if last is not None and last in names:
        names = [n for n in names if n != last] + [last]
    return names


def write_bytes_atomic(p: Any, data: bytes) -> None:
    """Readers see the old content or the new, never a partial file."""
    path = as_path(p)
    if is_url(path):
        fs, key = path.fs, path.path
        if isinstance(fs, LocalFileSystem):  # lobj:// and file://: same guarantee as an object PUT
            _ensure_parent(fs, key)
            _replace_local(Path(key), data)
        else:
            fs.pipe_file(key, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_local(path, data)


def _replace_local(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(p: Any, text: str) -> None:
    write_bytes_atomic(p, text.encode("utf-8"))


def write_json_atomic(p: Any, obj: Any) -> None:
    write_text_atomic(p, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(p: Any) -> Any | None:
    """The JSON object at ``p``, or None if there is none."""
    try:
        return json.loads(as_path(p).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def rmtree(p: Any) -> None:
    """Remove a folder (or a prefix) and everything under it; nothing if it does not exist."""
    path = as_path(p)
    if is_url(path):
        fs, key = path.fs, path.path
        if fs.exists(key):
            fs.rm(key, recursive=True)
        return
    shutil.rmtree(path, ignore_errors=True)


def remove(p: Any) -> None:
    path = as_path(p)
    if is_url(path):
        if path.fs.exists(path.path):
            path.fs.rm_file(path.path)
        return
    Path(path).unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the local folder ``path`` (``flock`` on the folder itself, so no
    lock file is left in it) while the block runs: processes on one host that read, merge and write
    files of that folder take turns instead of losing each other's writes. Blocks until free."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def file_sha256(p: Any) -> str:
    h = hashlib.sha256()
    with as_path(p).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- Parquet ---------------------------------------------------------------------------------------


def write_parquet(table: Any, p: Any, **kwargs: Any) -> None:
    """``pq.write_table`` to a local path or an object-store key (not atomic: callers commit)."""
    import pyarrow.parquet as pq

    fs, key = fs_and_path(p)
    if is_url(p):
        pq.write_table(table, key, filesystem=fs, **kwargs)
    else:
        pq.write_table(table, key, **kwargs)


def read_parquet(p: Any, **kwargs: Any) -> Any:
    """``pq.read_table`` of one file, local or on an object store."""
    import pyarrow.parquet as pq

    fs, key = fs_and_path(p)
    if is_url(p):
        return pq.read_table(key, filesystem=fs, **kwargs)
    return pq.read_table(key, **kwargs)


# -- folders that must be local (models, Qdrant's local mode) ----------------------------------------


def cache_root() -> Path:
    """Local cache for copies of object-store folders: ``$LLMCF_CACHE`` or ``~/.cache/llmcf``."""
    return Path(os.environ.get("LLMCF_CACHE") or Path.home() / ".cache" / "llmcf").expanduser()


def local_copy(p: Any, marker: str = "config.json") -> Path:
    """A local folder with the content of ``p``: ``p`` itself if local, else a cached download.

    The cache key is the URL; the copy is reused while the remote ``marker`` (the file written last)
    is unchanged (``fs.ukey``: size and modification time or ETag), and is downloaded into a
    temporary folder renamed into place, so a killed download is simply repeated.
    """
    path = as_path(p)
    if not is_url(path):
        return Path(path)
    fs, root = path.fs, path.path.rstrip("/")
    try:
        stamp = str(fs.ukey(f"{root}/{marker}"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no {marker}: not a complete folder") from None
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    dest = cache_root() / "remote" / f"{path.name}-{key}"
    stamp_file = dest.with_name(dest.name + ".source")
    if (dest / marker).exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        download_dir(path, tmp)
        if not (tmp / marker).exists():
            raise FileNotFoundError(f"{path} has no {marker}: not a complete folder")
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        stamp_file.write_text(stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download_dir(p: Any, local: Path) -> Path:
    """Copy every object under the prefix ``p`` into the local folder ``local`` (created)."""
    path = as_path(p)
    fs, root = path.fs, path.path.rstrip("/")
    Path(local).mkdir(parents=True, exist_ok=True)
    for key in fs.find(root):
        target = Path(local) / key[len(root) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
    return Path(local)


def upload_dir(local: Path, p: Any, last: str | None = None) -> None:
    """Copy a local folder to ``p`` (local: a plain recursive copy into place).

    ``last`` names a file uploaded after all others: the folder's commit marker.
    """
    path = as_path(p)
    rels = _commit_order(
        [f.relative_to(local).as_posix() for f in Path(local).rglob("*") if f.is_file()], last
    )
    for rel in rels:
        f = Path(local) / rel
        if is_url(path):
            target = f"{path.path.rstrip('/')}/{rel}"
            _ensure_parent(path.fs, target)
            path.fs.put_file(str(f), target)
        else:
            target_path = Path(path) / rel
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target_path)


def copy_dir(src: Any, dst: Any, last: str | None = None) -> None:
    """Copy every object under the prefix ``src`` to ``dst`` on the same store, ``last`` at the end."""
    src, dst = as_path(src), as_path(dst)
    fs, root = src.fs, src.path.rstrip("/")
    for rel in _commit_order([k[len(root) + 1 :] for k in fs.find(root)], last):
        target = f"{dst.path.rstrip('/')}/{rel}"
        _ensure_parent(fs, target)
        fs.copy(f"{root}/{rel}", target)


def ray_storage(p: Any) -> tuple[str, Any]:
    """(``storage_path``, ``storage_filesystem``) for Ray Train's RunConfig.

    Local paths and the schemes pyarrow knows natively (s3, gs, ...) go as they are; other fsspec
    filesystems (``lobj://``, ``memory://``) are wrapped for pyarrow.
    """
    path = as_path(p)
    if not is_url(path) or path.protocol in ("s3", "s3a", "gs", "gcs", "hdfs", "abfs", "abfss"):
        return str(path), None
    import pyarrow.fs as pafs

    return path.path, pafs.PyFileSystem(pafs.FSSpecHandler(path.fs))


def mtime(p: Any) -> float:
    """Modification time in seconds (object stores: the object's last-modified time)."""
    path = as_path(p)
    if is_url(path):
        return path.fs.modified(path.path).timestamp()
    return path.stat().st_mtime


def uri(p: Any) -> str:
    """A URI naming ``p``: ``file://`` + the absolute path locally, the URL itself otherwise."""
    path = as_path(p)
    return str(path) if is_url(path) else Path(path).absolute().as_uri()
