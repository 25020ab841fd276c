"""The lake's layout and its atomic writes.

Roots are URIs (``/path``, ``file:///path``, ``s3://bucket/prefix`` ...), resolved with pyarrow's
file systems. Each day-partition is one Parquet file, ``<lake>/<table>/ds=<YYYY-MM-DD>/part-0.parquet``,
written to a hidden temporary name beside the target and renamed over it, so a reader sees the old
file or the new one, never half of one, and re-running a day replaces exactly that day.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import polars as pl

PART_FILE = "part-0.parquet"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a root URI or a plain local path."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_dir(uri: str) -> list[str]:
    """Names directly below ``uri`` (files and folders), sorted; empty if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write to ``.<name>.tmp-<pid>`` beside the target, then rename over it."""
    fs, path = resolve(uri)
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def write_parquet_atomic(df: "pl.DataFrame", uri: str, record_sha256: bool = False) -> str:
    """Write a frame as one Parquet file atomically; returns the sha256 of the bytes written.

    ``record_sha256``: also record it beside the file for :func:`cached_file_sha256` (files that later
    tasks hash for their lineage, such as validated partitions)."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    data = buf.getvalue()
    write_bytes_atomic(uri, data)
    sha = hashlib.sha256(data).hexdigest()
    if record_sha256:
        _record_sha256(uri, sha)
    return sha


def write_json_atomic(uri: str, obj: Any) -> str:
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    write_bytes_atomic(uri, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(uri: str, block: int = 8 * 2**20) -> str:
    """sha256 of a file's bytes, read in blocks of ``block`` bytes (memory does not grow with the file)."""
    fs, path = resolve(uri)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class GrowingFileHash:
    """sha256 of a local file that another writer creates and appends to, hashed while it grows.

    :meth:`run` (in a thread) waits for ``path`` to appear, opens it and hashes what is there, polling
    for more, until :meth:`finish` says the writer is done; then it hashes the rest. The writer's
    spare CPU absorbs the hash (Polars' streaming Parquet writer leaves ~10% of 2 cores idle). It
    relies on the writer only appending (a Parquet writer writes its row groups, then the footer):
    :meth:`result` returns None when the bytes hashed are not the file's size, and the caller hashes
    the file again. The open file stays readable when it is renamed."""

    def __init__(self, path: str, block: int = 8 * 2**20, poll_s: float = 0.05):
        self.path, self.block, self.poll_s = path, block, poll_s
        self._done, self._opened = threading.Event(), threading.Event()
        self._sha: str | None = None
        self._bytes = 0
        self._size = -1

    def run(self) -> None:
        try:
            self._hash()
        except OSError:
            self._sha = None  # result() says so; the caller hashes the file once it is written
        finally:
            self._opened.set()  # also when it failed: finish() must not wait for it

    def _hash(self) -> None:
        while not os.path.exists(self.path):
            if self._done.is_set():  # the writer finished (or failed) without creating the file
                return
            time.sleep(self.poll_s)
        h, buf = hashlib.sha256(), bytearray(self.block)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            self._opened.set()
            while True:
                final = self._done.is_set()  # checked before the read: a read after it sees every byte
                n = f.readinto(buf)
                if n:
                    h.update(view[:n])
                    self._bytes += n
                elif final:
                    break
                else:
                    time.sleep(self.poll_s)
            self._size = os.fstat(f.fileno()).st_size
        self._sha = h.hexdigest()

    def finish(self) -> None:
        """The writer is done (or failed); returns once the file, if any, is open (it may then be renamed)."""
        self._done.set()
        self._opened.wait()

    def result(self) -> str | None:
        """The file's sha256, or None when it could not be hashed as it grew."""
        return self._sha if self._sha is not None and self._bytes == self._size else None


def _sha256_sidecar(path: str) -> str:
    parent, name = path.rsplit("/", 1)
    return f"{parent}/.{name}.sha256.json"


def _file_key(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _record_sha256(uri: str, sha: str, key: dict | None = None) -> None:
    """Write the sidecar: ``sha`` with ``key``, the file's key when it was hashed (default: now)."""
    path = local_path(uri)
    if path is not None:
        write_bytes_atomic(_sha256_sidecar(path), json.dumps({"sha256": sha, **(key or _file_key(path))}).encode())


def cached_file_sha256(uri: str) -> str:
    """:func:`file_sha256`, read from a sidecar ``.<name>.sha256.json`` when the file is unchanged.

    The sidecar (local files only) records the hash with the file's size, modification time (ns) and
    inode, as the writer or the first hashing saw them; if any differs (the file was rewritten, even
    by a rename over it) the hash is computed again and the sidecar replaced. Lets each retraining
    hash its window's input partitions for the lineage without reading them again.
    """
    path = local_path(uri)
    if path is None:
        return file_sha256(uri)
    key = _file_key(path)  # taken before hashing: a file replaced meanwhile no longer matches it
    try:
        with open(_sha256_sidecar(path), "rb") as f:
            rec = json.loads(f.read())
        if {k: rec.get(k) for k in key} == key:
            return rec["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sha = file_sha256(uri)
    _record_sha256(uri, sha, key)
    return sha


def local_path(uri: str) -> str | None:
    """A local path for a local URI (for tools that only read local files), else None."""
    fs, path = resolve(uri)
    return path if isinstance(fs, pafs.LocalFileSystem) else None
