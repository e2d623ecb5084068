"""Reading and writing single files of a run, on a local folder or any fsspec URL, so that a reader never sees a torn
file: small files and Parquet tables are written whole and published atomically."""

from __future__ import annotations

import errno
import os
import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from ldm.errors import UserError


def filesystem(output: str):
    """(fsspec filesystem, root path inside it) of an output location. An object store's cached listings are
    dropped first: records and shards arrive from other processes (actors, a resumed run), and s3fs would otherwise
    answer `find` / `ls` / `exists` from what this process listed earlier (found by tests/test_object_storage.py)."""
    fs, root = fsspec.core.url_to_fs(output)
    if not is_local(fs):
        fs.invalidate_cache()
    return fs, root


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


class DiskFullError(UserError):
    """The output's storage has no space left: stop at once (no retry frees space), keep what is finished."""


def disk_full(output: str, what: str) -> DiskFullError:
    return DiskFullError(f"the storage of {output} is full (no space left on device) while writing {what}; free "
                         "space, then run the same command with --resume: every finished unit is kept")


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def write_atomic(output: str, relpath: str, data: bytes) -> None:
    """Write a small file so that readers see the old content or the new one, never a torn one.

    Local: write a temporary file next to it, then rename (atomic on POSIX); object stores: a single PUT is atomic.
    A failed write (disk full) leaves the previous file untouched.
    """
    fs, root = filesystem(output)
    path = posixpath.join(root, relpath)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(output, relpath) from None
            raise
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)


def read_file(output: str, relpath: str) -> bytes | None:
    """The file's bytes, or None where it does not exist."""
    fs, root = filesystem(output)
    try:
        return fs.cat_file(posixpath.join(root, relpath))
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: the output location is a file
        return None


def remove_file(output: str, relpath: str) -> None:
    """Remove one file if it exists."""
    fs, root = filesystem(output)
    path = posixpath.join(root, relpath)
    if fs.exists(path):
        fs.rm_file(path)


def write_table(output: str, relpath: str, table: pa.Table | list[dict]) -> pa.Table:
    """Write a Parquet table (a pyarrow Table, or rows as dicts) atomically; returns it as a Table."""
    table = table if isinstance(table, pa.Table) else pa.Table.from_pylist(table)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(output, relpath, sink.getvalue().to_pybytes())
    return table


def read_table(output: str, relpath: str) -> pa.Table | None:
    """A Parquet table, or None where it does not exist."""
    data = read_file(output, relpath)
    return None if data is None else pq.read_table(pa.BufferReader(data))


def bytes_on_disk(output: str) -> int:
    fs, root = filesystem(output)
    return int(fs.du(root, total=True))
