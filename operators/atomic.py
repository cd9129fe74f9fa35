"""Atomic, durable file writes: a temp file in the same folder, flushed to the disk, then
os.replace and a flush of the folder, so readers and resumes see either the old file or the whole
new one, never a torn or empty one, even after a power loss. A run holds its output folder alone
(`exclusive_folder`), which is also when the writes a killed run left unfinished are cleared."""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def _file_mode() -> int:
    """The mode a plainly created file gets under this process's umask (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()
_UNFINISHED = re.compile(r"\..+\.[a-z0-9_]{8}\.part")  # atomic_target's temp files: mkstemp's 8 random characters


class FolderBusy(RuntimeError):
    """Another process holds the output folder."""


class UnreadableFile(ValueError):
    """A file this project wrote (a scan, cached motion) that is missing or cannot be read back:
    cut short or damaged since (an interrupted copy, a full disk, bit rot). Callers make it again."""


#: what reading a missing or damaged npz or its JSON raises; anything else (a TypeError, an
#: AttributeError) is a bug, and propagates rather than passing for a damaged file
_READING_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


@contextlib.contextmanager
def reading(what: str | Path) -> Iterator[None]:
    """Turns the errors of reading a missing or damaged `what` into `UnreadableFile` naming it."""
    try:
        yield
    except UnreadableFile:
        raise
    except _READING_ERRORS as exc:
        raise UnreadableFile(f"{what}: {type(exc).__name__}: {exc}") from exc


#: a temp file untouched this long belongs to a write that will never finish (a killed run's Ray
#: workers may outlive its driver for a while, still writing)
ABANDONED_AFTER_S = 15 * 60


@contextlib.contextmanager
def exclusive_folder(folder: Path, lock: Path | None = None) -> Iterator[None]:
    """Hold `folder` for this process alone (FolderBusy if another holds it), after clearing the
    temp files of writes a killed run left there.

    The lock is an flock on `lock` (`folder/.lock` by default): the kernel drops it when its
    holder dies, however it dies, so a killed run never blocks the next (on NFS, flock needs the
    mount's locking: not `nolock`). While it is held no other run writes in `folder`, so an
    `atomic_target` temp file untouched for ABANDONED_AFTER_S is a write that will never finish.
    """
    lock = lock or folder / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"another run is writing {folder}") from None
        stale = time.time() - ABANDONED_AFTER_S
        for path in folder.rglob(".*.part"):
            with contextlib.suppress(OSError):  # gone meanwhile
                if is_unfinished(path) and path.stat().st_mtime < stale:
                    path.unlink()
        yield


def is_unfinished(path: Path) -> bool:
    """Whether `path` is the temp file of an `atomic_target` write (finished or abandoned, it is
    never the file written)."""
    return _UNFINISHED.fullmatch(path.name) is not None and path.is_file()


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[str]:
    """Yield a temp path to write (and close); it replaces `path` only if the block finishes
    without error, after its data is on the disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        _sync(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        _sync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    with atomic_target(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def write_parquet(path: str | Path, table: pa.Table | pd.DataFrame) -> None:
    """A pandas DataFrame (without its index) or a pyarrow Table as a parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_target(path) as tmp:
        pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False), tmp)


def _sync(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
