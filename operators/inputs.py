"""Turn INPUT arguments into a sorted list of video URIs, and name everything derived from them.

An INPUT is a file, a folder (searched recursively, through links to folders), a glob (unless a
file has that very name), a `.txt`/`.lst` list (one path or URI a
line) or a `.parquet` list (column `path`, else the first string column). A folder takes the files
named like videos, a glob every file it matches but those plainly not videos (`_is_input`), and
each logs how many files it left out, by suffix. Paths may be local or any
URI pyarrow's filesystems understand (`s3://`, `gs://`, `hdfs://`, `file://`). An argument that
names no video (a pattern or folder without one, an unknown scheme, an unreachable store) is kept
as it is, so its row ends `failed` with the reason (`local_copy` raises it) instead of vanishing.
A file whose name is not valid UTF-8 is kept with the bytes that are not as backslash escapes
(`caf\\xe9.mp4`: no table can hold the name itself), and fails with `NOT_UTF8`.
A relative local entry of a list is taken from the list's folder; a list that cannot be read, or
that includes itself (directly or through other lists), is kept as one more input, which fails
with the reading error or `LIST_CYCLE`.
"""
from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portraitflow.operators.paths import NOT_VIDEO_SUFFIXES, VIDEO_SUFFIXES, escape_undecodable, hashed_name

if TYPE_CHECKING:
    from pyarrow import fs

LIST_SUFFIXES = {".txt", ".lst"}
NO_VIDEO_FILES = "matched no video files"
CANNOT_LIST = "cannot list the folder"
LIST_CYCLE = "the list includes itself (directly or through other lists)"
BROKEN_LINK = "a broken symbolic link: its target does not exist, or links lead back to it"
NOT_A_FILE = "not a regular file (a pipe, socket or device)"
NOT_UTF8 = "the file name is not valid UTF-8 (its undecodable bytes are shown as \\xNN escapes)"
NO_SUCH_FILE = "no such file or folder"
_BYTE_ESCAPE = re.compile(r"\\x([89a-f][0-9a-f])")  # what escape_undecodable makes of a byte that is not UTF-8

log = logging.getLogger(__name__)


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _local(text: str) -> str:
    """The local path of `text`: a `file://` URI's percent-decoded (`Path.as_uri()` writes a space
    as `%20`; bytes that are not UTF-8 come back as the file system's own), any other as given."""
    if not text.startswith("file://"):
        return text
    return urllib.parse.unquote(text[len("file://"):].removeprefix("localhost"), errors="surrogateescape")


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
    text = Path(path).read_text(encoding="utf-8-sig")  # a BOM (Notepad writes one) is no part of line 1
    lines = [line.strip() for line in text.splitlines()]
    for number, line in enumerate(lines, 1):
        if line.startswith("#") and os.path.isfile(Path(path).parent / line):  # a comment, yet a file's name
            log.warning("%s line %d: %r is read as a comment, yet names a file; write ./%s to take it",
                        path, number, line, line)
    return [line for line in lines if line and not line.startswith("#")]


def _list_entries(path: str) -> list[str]:
    """The entries of the list at `path`, a relative local one taken from the list's folder (as a
    jobs file's are); URIs stay as they are."""
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    for entry in _read_list(path):
        local = _local(entry)
        if not is_uri(entry) and not os.path.isabs(local):
            entry = os.path.abspath(os.path.join(glob.escape(base) if glob.has_magic(local) else base, local))
        entries.append(entry)
    return entries


def _is_list(local: str) -> bool:
    return Path(local).suffix.lower() in LIST_SUFFIXES | {".parquet"} and Path(local).is_file()


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Match path segments as `glob.glob(..., recursive=True)` does: `**` spans any folders."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def matching_files(filesystem: fs.FileSystem, root: str, pattern: str) -> list[str]:
    """The files under `root` whose path below it matches the glob `pattern`, as sorted paths
    relative to `root`; the listing is recursive only when the pattern reaches below `root`."""
    from pyarrow import fs

    wanted = pattern.split("/")
    selector = fs.FileSelector(root, recursive=len(wanted) > 1 or "**" in pattern, allow_not_found=True)
    below = (f.path[len(root.rstrip("/")):].lstrip("/") for f in filesystem.get_file_info(selector)
             if f.type == fs.FileType.File)
    return sorted(path for path in below if _glob_match(path.split("/"), wanted))


def _expand_uri(uri: str) -> list[str]:
    """The videos a remote URI names: itself, those under a folder, or those its pattern matches.

    `?` starts the store's options in a URI (kept on every match), so the wildcards are `*`, `**`
    and `[...]`; a pattern lists the folder before its first wildcard.
    """
    from pyarrow import fs

    location, mark, options = uri.partition("?")
    globbed = glob.has_magic(location)
    if globbed:
        parts = location.split("/")
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        location, pattern = "/".join(parts[:first]), "/".join(parts[first:])
        filesystem, root = fs.FileSystem.from_uri(location + mark + options)
    else:
        filesystem, root = fs.FileSystem.from_uri(uri)
        if filesystem.get_file_info(root).type != fs.FileType.Directory:
            return [uri]
        pattern = "**"
    found = _inputs_among(uri, matching_files(filesystem, root, pattern), globbed)
    return [f"{location.rstrip('/')}/{path}{mark}{options}" for path in found]


def expand_inputs(specs: Iterable[str], *, _expanding: frozenset[str] = frozenset()) -> list[str]:
    """Every video the INPUT arguments name, deduplicated and sorted (the processing order).

    An argument that names no video is kept as it is, so it ends as a `failed` row rather than
    vanishing or stopping the run: bad input is never silently dropped. So is a list met again
    while it is being expanded (`_expanding`: the resolved lists that include this one). A name
    that is not valid UTF-8 comes back escaped (`escape_undecodable`), to fail with `NOT_UTF8`.
    Two names of one file (a link beside its target) make one input, and a warning says so.
    """
    found: dict[str, str] = {}  # input -> the first name that named it
    for spec in specs:
        spec = str(spec)
        if is_uri(spec):
            try:
                uris = _expand_uri(spec) or [spec]
            except Exception:  # unknown scheme, unreachable store: local_copy raises it again for the row
                uris = [spec]
            for uri in uris:
                _add(found, uri, uri)
            continue
        local = _local(spec)
        if _is_list(local):
            listed = str(Path(local).resolve())
            if listed in _expanding:  # a cycle: the list is kept, and local_copy fails it with LIST_CYCLE
                named = [listed]
            else:
                try:
                    named = expand_inputs(_list_entries(local), _expanding=_expanding | {listed}) or [listed]  # empty: kept
                except (OSError, ValueError):  # not UTF-8, no string column: local_copy raises it again for the row
                    named = [listed]
            for uri in named:
                _add(found, uri, uri)
        elif Path(local).is_dir():
            kept = _videos_under(spec, local)
            for path in kept or [local]:
                _add(found, path, _entry(path) if kept else str(Path(local).resolve()))
        elif glob.has_magic(local) and not os.path.lexists(local):  # the name of a file means that file
            matched = glob.glob(local, recursive=True)
            # the files it matches, and the videos of the folders it matches, as the shell's expansion gives
            # them (a `**` pattern walks the folders itself: their files are among its matches)
            folders = [] if "**" in local else [p for p in matched if Path(p).is_dir()]
            kept = _inputs_among(spec, [p for p in matched if not Path(p).is_dir()], globbed=True) + [
                path for folder in folders for path in _videos_under(folder, folder)] + _unlistable_in_reach(local)
            for path in kept or [local]:
                _add(found, path, _entry(path) if kept else os.path.abspath(local))
        else:  # absolute, so a missing input has the same key from any working directory
            _add(found, local, str(Path(local).resolve()) if Path(local).exists() else os.path.abspath(local))
    return sorted({escape_undecodable(uri) for uri in found})


def names_nothing(spec: str) -> bool:
    """Whether an input argument names nothing as `expand_inputs` reads it: a local path (or
    `file://` URI) that is not there and, as a pattern (`**` recursive), matches no file or folder
    (a folder of no video is a failed row, as the folder given by name) nor reaches a folder it
    cannot list."""
    if is_uri(spec):
        return False
    local = _local(spec) or "."  # an empty argument is the working folder, as a folder's listing takes it
    if os.path.lexists(local):  # the name of a file means that file, brackets or not
        return False
    return not (glob.has_magic(local) and (glob.glob(local, recursive=True) or _unlistable_in_reach(local)))


def _add(found: dict[str, str], name: str, uri: str) -> None:
    """Record input `uri`, named `name`; a second name of it (a link beside its target) is logged,
    since it gets no row of its own."""
    first = found.setdefault(uri, name)
    if first != name and os.path.abspath(first) != os.path.abspath(name):
        log.warning("%s and %s are the same file: curated once, as %s", escape_undecodable(first),
                    escape_undecodable(name), escape_undecodable(uri))


def _videos_under(spec: str, folder: str) -> list[str]:
    """The inputs in `folder` and below (`_inputs_among` its files, through symbolic links to
    folders, each folder once), and each folder there that cannot be listed (no permission, a
    vanished mount), as an input that fails with the reason, so the videos in it are not left out
    unseen."""
    found, walked, unlisted = [], set(), []
    for root, folders, files in os.walk(folder, followlinks=True, onerror=lambda exc: unlisted.append(exc.filename)):
        real = os.path.realpath(root)
        if real in walked:  # a link back up the tree, or a second link to a folder already walked
            folders.clear()
            continue
        walked.add(real)
        found.extend(os.path.join(root, name) for name in files)
    return _inputs_among(spec, found, globbed=False) + _unlisted_inputs(spec, unlisted)


def _unlistable_in_reach(pattern: str) -> list[str]:
    """The folders a glob `pattern` would descend into that cannot be listed (`glob` passes over
    them without a word), as `_videos_under` makes them inputs: those its folder parts match
    (hidden ones only by a hidden part, as `glob`), or all below a `**`."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = os.path.join(*parts[:first]) if first else "."
    folder_parts = parts[first:] if parts[-1] == "**" else parts[first:-1]
    deep = "**" in folder_parts
    unlisted: list[str] = []
    for current, folders, _ in os.walk(root, onerror=lambda exc: unlisted.append(exc.filename)):
        if not deep and len(Path(os.path.relpath(current, root)).parts) >= len(folder_parts):
            folders.clear()  # deeper than the pattern reaches

    def reached(path: str) -> bool:
        relative = Path(os.path.relpath(path, root)).parts if path != root else ()
        if deep:
            return not any(name.startswith(".") for name in relative)
        return len(relative) <= len(folder_parts) and all(
            fnmatch.fnmatchcase(name, part) and (part.startswith(".") or not name.startswith("."))
            for name, part in zip(relative, folder_parts))

    return _unlisted_inputs(pattern, [path for path in unlisted if reached(path)])


#: folders a file system or an operating system keeps to itself, that no user can list
SYSTEM_FOLDERS = {"lost+found", "$RECYCLE.BIN", "System Volume Information"}


def _unlisted_inputs(spec: str, unlisted: list[str]) -> list[str]:
    """The folders under `spec` that could not be listed, as inputs that fail naming why; hidden and
    system ones (a mount's `lost+found`) are left out, as hidden files are, and logged."""
    kept = [os.path.abspath(path) for path in unlisted
            if not Path(path).name.startswith(".") and Path(path).name not in SYSTEM_FOLDERS]
    if left := sorted(set(map(os.path.abspath, unlisted)) - set(kept)):
        log.warning("%s: left out %d hidden or system folder(s) that cannot be listed: %s", escape_undecodable(spec),
                    len(left), ", ".join(escape_undecodable(path) for path in left[:3]) + (", ..." if len(left) > 3 else ""))
    return kept


def _is_input(path: str, globbed: bool) -> bool:
    """Whether a file a folder or a glob found is an input. A folder holds anything (notes,
    sidecars, photos), so it takes the files named like videos; a glob is what the user named, so
    it takes every file unless its suffix marks it as plainly not a video, and a video under an
    unusual suffix gets a row (failed, with the reason, when it cannot be read) instead of none.
    AppleDouble forks (`is_apple_double`) are never inputs, whatever their suffix."""
    suffix = Path(path).suffix.lower()
    if is_apple_double(path):
        return False
    return suffix not in NOT_VIDEO_SUFFIXES if globbed else suffix in VIDEO_SUFFIXES


def is_apple_double(path: str | Path) -> bool:
    """Whether `path` is an AppleDouble fork, the `._clip.mp4` macOS writes beside each file on a
    disk that cannot hold its metadata (exFAT, SMB, USB): no flow takes one, whatever its suffix."""
    return Path(path).name.startswith("._")


def _inputs_among(spec: str, paths: list[str], globbed: bool) -> list[str]:
    """The `paths` a folder or glob `spec` found that are inputs (`_is_input`); logs how many it
    left out, by suffix, so that no file is left out unseen."""
    kept, skipped = [], Counter()
    for path in paths:
        if _is_input(path, globbed):
            kept.append(path)
        else:
            name = Path(path).name
            skipped["hidden" if name.startswith(".") else Path(name).suffix.lower() or "no suffix"] += 1
    if skipped:
        counts = ", ".join(f"{count} {suffix}" for suffix, count in sorted(skipped.items()))
        log.warning("%s: left out %d file(s) not taken for videos (%s)", escape_undecodable(spec), skipped.total(), counts)
    return kept


def _entry(path: str) -> str:
    """The input a folder or glob entry makes: a file by its real path; a broken link, a loop of
    links or a pipe as it is, so its row fails with the reason (`local_copy`) instead of the entry
    vanishing."""
    return os.path.realpath(path) if os.path.isfile(path) else os.path.abspath(path)


#: hex digits of an input key's hash where the usual ten are shared with another input's
LONG_KEY_DIGITS = 24


def input_key(uri: str, digits: int = 10) -> str:
    """A dot-free name unique to the input: its sanitised stem plus a hash of the whole URI (40 bits:
    `distinct_keys` lengthens the rare one that another input of the same stem shares)."""
    return hashed_name(Path(uri.rstrip("/")).stem, uri, fallback="input", digits=digits)


def distinct_keys(rows: list[dict[str, Any]], curated: dict[str, str]) -> list[dict[str, Any]]:
    """`rows` (`uri`, `input_key`) with no key shared: where inputs share one (their stems alike and
    40 bits of their hashes: about 1 in 100 for a corpus of 150,000 `00001.mp4` files, or made so on
    purpose), the input curated under it (`curated`: key -> path) keeps it, else the first by path,
    and each other takes its long key, as does any input curated under its long key before. Where
    an earlier run curated another path under the key, no input keeps it: that path's input keeps
    it (followed when it has moved, `ledger.moved_inputs`)."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["input_key"], []).append(row)
    out = []
    for key, group in by_key.items():
        holder = curated.get(key)
        keeper = next((row for row in group if holder == row["uri"]), None if holder else min(group, key=lambda r: r["uri"]))
        for row in group:
            long = input_key(row["uri"], LONG_KEY_DIGITS)
            if row is not keeper or curated.get(long) == row["uri"]:
                if row is not keeper:
                    log.warning("%s and %s share the input key %s: the second is curated as %s",
                                escape_undecodable(keeper["uri"] if keeper else holder), escape_undecodable(row["uri"]),
                                key, long)
                row = dict(row, input_key=long)
            out.append(row)
    return sorted(out, key=lambda row: row["input_key"])


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


def clip_input_key(key: str) -> str:
    """The input key a sample key (`clip_key`) starts with."""
    return key.rsplit("_", 2)[0]


def escapes_a_file_name(path: str) -> bool:
    """Whether `path` names no file but is what `escape_undecodable` made of the name of one."""
    if not _BYTE_ESCAPE.search(path) or os.path.lexists(path):
        return False
    return os.path.lexists(_BYTE_ESCAPE.sub(lambda byte: chr(0xDC00 + int(byte[1], 16)), path))


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path decord can open: the file itself, or a temporary download of a remote URI
    (with the object's modification time, where the store gives one).

    Raises for an input `expand_inputs` kept because it names no video: the store's error,
    `matched no video files` for a folder (`CANNOT_LIST` for one it cannot list), pattern or empty list, the reading error of an
    unreadable list, `LIST_CYCLE` for one that includes itself (`expand_inputs` expands every other
    list); `NOT_UTF8` for a file whose name it escaped; `BROKEN_LINK`, `NO_SUCH_FILE`, and `NOT_A_FILE`.
    """
    if not is_uri(uri):
        path = _local(uri)
        if escapes_a_file_name(path):
            raise UnicodeError(f"{NOT_UTF8}: {path}")
        if os.path.islink(path) and not os.path.exists(path):
            raise FileNotFoundError(BROKEN_LINK)
        if Path(path).is_dir():
            try:
                os.listdir(path)
            except OSError as exc:  # no permission, a vanished mount: why, not "matched no video files"
                raise type(exc)(f"{CANNOT_LIST}: {exc.strerror}") from None
            raise FileNotFoundError(NO_VIDEO_FILES)
        if glob.has_magic(path) and not os.path.lexists(path):
            raise FileNotFoundError(NO_VIDEO_FILES)
        if not os.path.lexists(path):  # a mistyped name: said as such, not as a video decord cannot open
            raise FileNotFoundError(NO_SUCH_FILE)
        if _is_list(path):
            raise ValueError(LIST_CYCLE if _read_list(path) else NO_VIDEO_FILES)  # unreadable: its own error
        if not os.path.isfile(path):  # a FIFO or a device would block the decoder
            raise ValueError(NOT_A_FILE)
        yield path
        return
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(path)
    unmatched = info.type == fs.FileType.NotFound and glob.has_magic(uri.partition("?")[0])
    if info.type == fs.FileType.Directory or unmatched:
        raise FileNotFoundError(NO_VIDEO_FILES)  # a folder or pattern that matched nothing when expanded
    fd, tmp = tempfile.mkstemp(suffix=Path(path).suffix)
    try:
        with os.fdopen(fd, "wb") as out, filesystem.open_input_stream(path) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        if info.mtime_ns is not None:  # the object's time, so a scan of it is reused until it is replaced
            os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))
        yield tmp
    finally:
        os.unlink(tmp)
