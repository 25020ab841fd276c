"""The lake's layout and its atomic writes.

Roots are URIs (``/path``, ``file:///path``, ``s3://bucket/prefix`` ...), resolved with pyarrow's
file systems. Each day-partition is one Parquet file, ``<lake>/<table>/ds=<YYYY-MM-DD>/part-0.parquet``,
written to a hidden temporary name beside the target and renamed over it, so a reader sees the old
file or the new one, never half of one, and re-running a day replaces exactly that day.

Temporary names are unique to the attempt (``.<name>.tmp-<pid>-<uuid4 hex>``, :func:`temp_path`): two
writers of the same target, in two processes or two threads of one, never touch each other's file; the
last rename wins and the target is always one writer's complete bytes. Hidden names (a leading ``.``)
are never listed to readers (:func:`list_dir`); the files of writers killed mid-write are removed by
:func:`sweep_stale_temp` once older than a bound (docs/reliability.md, "Immutable inputs").
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

import pyarrow.fs as pafs

from tasks.core import objectstore
from tasks.core.faults import fault_point

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

PART_FILE = "part-0.parquet"
# What marks a temporary file: ``.<target name>.tmp-<pid>[-<uuid4 hex>]`` (the uuid-less form is the old one).
TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..+\.tmp-\d+(-[0-9a-f]{32})?$")
# A temporary file older than this is a killed writer's (a live writer keeps appending to its file, and
# no single write of the pipeline takes hours): :func:`sweep_stale_temp`'s default.
STALE_TEMP_S = 6 * 3600


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a root URI or a plain local path. ``s3://`` URIs use the one S3
    configuration of the process (:mod:`tasks.core.objectstore`)."""
    if objectstore.is_s3(uri):
        return objectstore.filesystem(), uri.split("://", 1)[1].rstrip("/")
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


class UnsafePath(ValueError):
    """A path part that could leave its root: a ``..`` segment, an absolute path, a URI, a NUL byte."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_part(part: str) -> str:
    """``part`` if it is a relative path that stays below whatever it is joined to, else :class:`UnsafePath`.

    Refused: an absolute path (a leading ``/`` or ``\\``, a drive such as ``C:``), a URI (``s3://...``),
    a ``..`` segment (also written with backslashes), a NUL byte. A part is data (a file name from a
    listing, a day, a name from a request), never an instruction to go elsewhere."""
    if not isinstance(part, str):
        raise UnsafePath(f"path part {part!r} is not text")
    if "\x00" in part:
        raise UnsafePath(f"path part {part[:80]!r} contains a NUL byte")
    if part.startswith(("/", "\\")) or _DRIVE.match(part) or "://" in part:
        raise UnsafePath(f"path part {part[:80]!r} is absolute; only relative parts are joined to a root (a listing's suffix: strip its leading '/')")
    if any(seg == ".." for seg in re.split(r"[/\\]", part)):
        raise UnsafePath(f"path part {part[:80]!r} has a '..' segment; parts may not leave their root")
    return part


def join(root: str, *parts: str) -> str:
    """``root/part/...``; every part is checked by :func:`check_part` (no ``..``, nothing absolute)."""
    return "/".join([root.rstrip("/"), *[check_part(p).strip("/") for p in parts]])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def file_mtime_ns(uri: str) -> int | None:
    """A file's modification time (ns), None when it is not a file."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    return (info.mtime_ns or 0) if info.type == pafs.FileType.File else None


def list_dir(uri: str, hidden: bool = False) -> list[str]:
    """Names directly below ``uri`` (files and folders), sorted; empty if it does not exist.

    Hidden names (a leading ``.``: writers' temporary files, hash sidecars) are left out unless ``hidden``."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos if hidden or not info.base_name.startswith("."))


def regular_file_size(uri: str) -> int:
    """The size in bytes of the regular file at ``uri``; :class:`UnsafePath` for a symbolic link (to anything,
    also a dangling one) or something that is not a plain file (a folder, a FIFO, a device).

    The message names ``uri`` only: never where a link points or what it holds. A local file is
    examined with ``lstat`` (the link itself, not its target)."""
    path = local_path(uri)
    if path is not None:
        try:
            st = os.lstat(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{uri}: no such file") from exc
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{uri}: is a symbolic link; landing files must be regular files (links are refused, "
                             "not followed)")
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{uri}: is not a regular file")
        return st.st_size
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise UnsafePath(f"{uri}: is not a regular file ({info.type.name})")
    return int(info.size or 0)


def is_symlink(uri: str) -> bool:
    """Whether ``uri`` is a local symbolic link (object stores have none)."""
    path = local_path(uri)
    return path is not None and os.path.islink(path)


def open_input(uri: str) -> BinaryIO:
    """A binary stream of a file, for reading it in pieces. A local file is opened with ``O_NOFOLLOW``: a
    symbolic link put in its place after it was checked is refused by the kernel, not followed."""
    path = local_path(uri)
    if path is not None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            if os.path.islink(path):
                raise UnsafePath(f"{uri}: is a symbolic link; links are refused, not followed") from exc
            raise
        return os.fdopen(fd, "rb")
    fs, path = resolve(uri)
    return fs.open_input_stream(path)


def list_entries(uri: str) -> list[str]:
    """Like :func:`list_dir` (no hidden names), but a local folder lists every entry, symbolic links
    included (a dangling one too), so that a reader can refuse them rather than miss them."""
    path = local_path(uri)
    if path is None:
        return list_dir(uri)
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if not n.startswith("."))


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def temp_path(path: str) -> str:
    """A hidden temporary name beside ``path``, unique to the attempt: ``.<name>.tmp-<pid>-<uuid4 hex>``
    (the pid says whose it is; the uuid separates threads of one process and a reused pid)."""
    parent, name = path.rsplit("/", 1)
    return f"{parent}/.{name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex}"


def is_temp_name(name: str) -> bool:
    """Whether a base name is a writer's temporary file (:func:`temp_path`, or the old ``.tmp-<pid>`` form)."""
    return bool(_TEMP_NAME.match(name))


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (OSError, FileNotFoundError):
        pass


def write_bytes_atomic(uri: str, data: bytes) -> dict | None:
    """Write to an attempt-unique hidden name beside the target (:func:`temp_path`), then rename over it.

    Concurrent writers of one target each rename their own complete file; the last rename wins. A
    failed write removes its temporary file (a killed one leaves it to :func:`sweep_stale_temp`).
    Returns the written file's key (size, modification time, inode: a rename keeps them) for a local
    file, taken before the rename: a concurrent writer may have replaced the target since."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):  # an object store has no folders to create
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = temp_path(path)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fault_point(None, "mid_write")  # test-only (tasks/core/faults.py)
        key = _file_key(tmp) if isinstance(fs, pafs.LocalFileSystem) else None
        fs.move(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)
        raise
    return key


def publish_once(tmp: str, path: str) -> bool:
    """Move the local file ``tmp`` to ``path`` unless ``path`` exists; True if this call published it.

    For immutable files (keyed by their inputs): a hard link creates ``path`` only if it is absent
    (atomic on a local file system), so a finished file is never replaced under its readers, and of
    concurrent writers the first to finish wins. ``tmp`` is removed either way. Where hard links are
    not supported, a rename after an existence check (a narrow race: both files are complete)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        if os.path.exists(path):
            return False
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def publish_once_uri(tmp_uri: str, uri: str) -> bool:
    """:func:`publish_once` for any URI: on an object store (no rename, no hard link) a server-side copy of
    the complete temporary object to ``uri`` unless an object is there, then the temporary one deleted.
    A reader sees no object or the whole one (an object appears only when its copy completes); of two
    writers that both find none, the later copy replaces the earlier one's identical bytes (same inputs)."""
    if local_path(uri) is not None:
        return publish_once(local_path(tmp_uri), local_path(uri))
    fs, path = resolve(uri)
    _, tmp = resolve(tmp_uri)
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        fs.copy_file(tmp, path)
        return True
    finally:
        _remove_quietly(fs, tmp)


def remove(uri: str) -> None:
    """Delete the file at ``uri`` if it is there."""
    fs, path = resolve(uri)
    _remove_quietly(fs, path)


def sweep_stale_temp(root_uri: str, older_than_s: float = STALE_TEMP_S,
                     garbage: Callable[[str], bool] = is_temp_name) -> list[str]:
    """Remove the temporary files (:func:`is_temp_name`) below ``root_uri`` not modified for ``older_than_s``
    seconds: those of writers killed mid-write. Returns the paths removed. ``garbage``: which base names
    to consider (default: temporary files).

    Called where a task starts writing a folder (an ingested day, a validated day, a feature window).
    The wall clock is used here only to collect garbage, never for a result: a live writer's file is
    younger than the bound (it is being written), so removing older ones changes nothing a reader or a
    writer sees. A file another sweep removed first is skipped."""
    fs, root = resolve(root_uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, FileNotFoundError):
        return []
    cutoff_ns = time.time_ns() - int(older_than_s * 1e9)
    removed = []
    for info in infos:
        if info.type == pafs.FileType.File and garbage(info.base_name) and info.mtime_ns is not None \
                and info.mtime_ns < cutoff_ns:
            _remove_quietly(fs, info.path)
            removed.append(info.path)
            log.warning("removed %s: untouched for over %.0f s (a killed writer's, or no longer published)",
                        info.path, older_than_s)
    return removed


def parquet_bytes(df: "pl.DataFrame") -> bytes:
    """A frame as the bytes of one Parquet file (zstd, with statistics), as the lake writes it."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def write_parquet_atomic(df: "pl.DataFrame", uri: str, record_sha256: bool = False) -> str:
    """Write a frame as one Parquet file atomically; returns the sha256 of the bytes written.

    ``record_sha256``: also record it beside the file for :func:`cached_file_sha256` (files that later
    tasks hash for their lineage, such as validated partitions)."""
    data = parquet_bytes(df)
    key = write_bytes_atomic(uri, data)
    sha = hashlib.sha256(data).hexdigest()
    if record_sha256 and key is not None:  # keyed by the file written, not by whatever is there now
        _record_sha256(uri, sha, key)
    return sha


def write_addressed(data: bytes, uri_for: Callable[[str], str], record_sha256: bool = False) -> tuple[str, str]:
    """Write ``data`` atomically to the file named by its sha256 (``uri_for(sha256)``). Returns (uri, sha256).

    A file of that name holds the same bytes: it is written again all the same (renamed over itself), so
    its modification time says it is in use (:func:`sweep_stale_temp` collects unpublished ones by age)."""
    sha = hashlib.sha256(data).hexdigest()
    uri = uri_for(sha)
    key = write_bytes_atomic(uri, data)
    if record_sha256 and key is not None:
        _record_sha256(uri, sha, key)
    return uri, sha


def link_atomic(src_uri: str, dst_uri: str, sha256: str | None = None) -> None:
    """Make ``dst_uri`` the same file as ``src_uri``, atomically replacing what was there: a hard link
    under a temporary name renamed over it (a copy where links are not supported). ``sha256``: record it
    for :func:`cached_file_sha256` of ``dst_uri``."""
    src, dst = local_path(src_uri), local_path(dst_uri)
    if objectstore.is_s3(src_uri) and objectstore.is_s3(dst_uri):  # a server-side copy: the object appears whole
        fs, src_path = resolve(src_uri)
        fs.copy_file(src_path, resolve(dst_uri)[1])
        key = None
    elif src is None or dst is None:
        key = write_bytes_atomic(dst_uri, read_bytes(src_uri))
    else:
        tmp = temp_path(dst)
        try:
            os.link(src, tmp)
            key = _file_key(tmp)
            os.replace(tmp, dst)
        except OSError:
            if os.path.exists(tmp):
                os.remove(tmp)
            key = write_bytes_atomic(dst_uri, read_bytes(src_uri))
    if sha256 and key is not None:
        _record_sha256(dst_uri, sha256, key)


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
