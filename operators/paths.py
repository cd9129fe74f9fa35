"""Names and paths derived from inputs, kept inside the output folder.

Inputs are untrusted: a file name, a sample key or a job id may hold spaces, unicode, `..`,
slashes, NUL bytes or be thousands of characters long. Every name a stage derives from one goes
through `safe_name` (or `hashed_name` where two inputs must never share a name), and every path
under an output folder through `confined`, which refuses whatever would land outside it.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

#: What every flow takes for a video and for a photo, by suffix (lower case). A GIF is both: a
#: clip to curate or drive with, or a portrait (its first frame). The video suffixes are the
#: containers FFmpeg (decord's and PyAV's) reads that cameras, phones, broadcast and the web write
#: (tests/test_inputs_suffixes.py probes a file of each), so a folder of raw footage skips none.
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".f4v",  # ISO/QuickTime
    ".mkv", ".webm", ".avi", ".divx", ".flv", ".wmv", ".asf", ".rm", ".rmvb", ".ogv", ".dv", ".mxf",
    ".mpg", ".mpeg", ".vob", ".ts", ".mts", ".m2ts", ".m2t",  # MPEG program and transport streams
    ".gif",
})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
#: Suffixes that mark a file as plainly not a video (a photo, sound, text, a table, subtitles, an
#: archive): what a glob leaves out. A glob keeps any other file it matches, so a video under a
#: suffix not listed above still gets a row (failed, with the reason, if it cannot be read).
NOT_VIDEO_SUFFIXES = (IMAGE_SUFFIXES - VIDEO_SUFFIXES) | frozenset({
    ".wav", ".mp3", ".flac", ".aac", ".m4a", ".opus", ".wma",
    ".txt", ".lst", ".md", ".pdf", ".log", ".nfo", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".yaml", ".yml",
    ".xml", ".srt", ".vtt", ".ass", ".ssa", ".npy", ".npz", ".zip", ".tar", ".gz", ".tgz", ".7z", ".rar", ".md5",
    ".xmp", ".thm", ".db", ".ini", ".cpi", ".mpl", ".bdm", ".clpi", ".mpls",  # cameras' and OSes' sidecars, AVCHD indexes
})


def safe_name(text: str, max_len: int = 48, fallback: str = "item") -> str:
    """`text` reduced to ASCII letters, digits, `_` and `-` (runs of anything else become one `-`),
    at most `max_len` long: no dots, slashes or separators, so never `..` or absolute."""
    return _UNSAFE.sub("-", text).strip("-")[:max_len] or fallback


def hashed_name(label: str, identity: str, max_len: int = 48, fallback: str = "item", digits: int = 10) -> str:
    """`safe_name(label)` plus a short hash of `identity` (`digits` hex digits): readable, and distinct
    for distinct identities even when their labels sanitise alike (`a b.mp4` and `a?b.mp4`)."""
    digest = hashlib.sha1(identity.encode("utf-8", "surrogatepass")).hexdigest()[:digits]
    return f"{safe_name(label, max_len, fallback)}-{digest}"


def escape_undecodable(text: str) -> str:
    """`text` as valid UTF-8: the bytes of a file name that are not UTF-8, which Python holds as lone
    surrogates and UTF-8 writers such as Arrow refuse, become backslash escapes (`caf\\xe9.mp4`);
    any other text comes back unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name's byte gives: escaped as itself (`\\udc00`)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def confined(root: str | Path, *parts: str) -> Path:
    """`root/parts...` resolved, or ValueError when it would leave `root` (`..`, an absolute part,
    a symlink pointing out). Parts should already be safe names; this is the last guard."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and not path.is_relative_to(base):
        raise ValueError(f"{'/'.join(parts)!r} resolves outside {base}")
    return path


#: the longest stem `safe_stem` gives: room for a suffix and a prefix under a file system's 255 bytes
STEM_CHARS = 96


def safe_stem(text: str) -> str:
    """A file stem for an id taken from input: the id itself when it is already a safe name, else
    `hashed_name(id)`, so ordinary ids keep their names and odd ones can neither escape nor collide."""
    name = safe_name(text, STEM_CHARS, fallback="")
    return name if name and name == text else hashed_name(text, text, STEM_CHARS - 11)
