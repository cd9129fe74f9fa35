"""Turn INPUT arguments into a sorted list of video URIs, and name everything derived from them.

An INPUT is a file, a folder (searched recursively), a glob, a `.txt`/`.lst` list (one path or URI a
line) or a `.parquet` list (column `path`, else the first string column). Paths may be local or any
URI pyarrow's filesystems understand (`s3://`, `gs://`, `hdfs://`, `file://`).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from portraitflow.operators.paths import hashed_name

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".gif"}
LIST_SUFFIXES = {".txt", ".lst"}


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _local(text: str) -> str:
    return text[len("file://") :] if text.startswith("file://") else text


def _read_list(path: str) -> list[str]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = ["path"] if "path" in table.column_names else [
            f.name for f in table.schema if str(f.type) in ("string", "large_string")
        ][:1]
        if not names:
            raise ValueError(f"{path}: a parquet list needs a string column (`path`)")
        return [str(v) for v in table.column(names[0]).to_pylist() if v]
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _expand_uri(uri: str) -> list[str]:
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.Directory:
        found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        return sorted(
            f"{scheme}://{f.path}" for f in found if f.type == fs.FileType.File and Path(f.path).suffix.lower() in VIDEO_SUFFIXES
        )
    return [uri]


def expand_inputs(specs: Iterable[str]) -> list[str]:
    """Every video the INPUT arguments name, deduplicated and sorted (the processing order).

    Names that match nothing are kept as they are, so they end as `failed` rows rather than
    vanishing: bad input is never silently dropped.
    """
    found: set[str] = set()
    for spec in specs:
        spec = str(spec)
        if is_uri(spec):
            found.update(_expand_uri(spec))
            continue
        local = _local(spec)
        if Path(local).suffix.lower() in LIST_SUFFIXES | {".parquet"} and Path(local).is_file():
            found.update(expand_inputs(_read_list(local)))
        elif Path(local).is_dir():
            found.update(
                str(p.resolve()) for p in Path(local).rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
            )
        elif glob.has_magic(local):
            found.update(str(Path(p).resolve()) for p in glob.glob(local, recursive=True) if Path(p).is_file())
        else:
            found.add(str(Path(local).resolve()) if Path(local).exists() else local)
    return sorted(found)


def input_key(uri: str) -> str:
    """A dot-free name unique to the input: its sanitised stem plus a hash of the whole URI."""
    return hashed_name(Path(uri.rstrip("/")).stem, uri, fallback="input")


def input_bytes(uri: str) -> int:
    """The size of a local input (0 for a remote or missing one): a cheap guess at its work."""
    if is_uri(uri):
        return 0
    try:
        return os.path.getsize(_local(uri))
    except OSError:
        return 0


def clip_key(in_key: str, start_s: float, end_s: float) -> str:
    """The sample key of a clip: the input key and its time range in milliseconds (no dots)."""
    return f"{in_key}_{round(start_s * 1000):08d}_{round(end_s * 1000):08d}"


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path decord can open: the file itself, or a temporary download of a remote URI."""
    if not is_uri(uri):
        yield _local(uri)
        return
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    fd, tmp = tempfile.mkstemp(suffix=Path(path).suffix)
    try:
        with os.fdopen(fd, "wb") as out, filesystem.open_input_stream(path) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        yield tmp
    finally:
        os.unlink(tmp)
