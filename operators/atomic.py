"""Atomic, durable file writes: a temp file in the same folder, flushed to the disk, then
os.replace and a flush of the folder, so readers and resumes see either the old file or the whole
new one, never a torn or empty one, even after a power loss."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _file_mode() -> int:
    """The mode a plainly created file gets under this process's umask (mkstemp would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


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


def _sync(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
