"""Where training shards come from and what happens to the ones that cannot be read.

- `expand_shards`: brace patterns, lists, and the wids-style index JSON the curation flow writes
  beside its shards, for local paths and any pyarrow filesystem URI. Local shards that do not
  exist are an error there, so a mistyped path fails when the loader is built; a shard that
  exists but breaks while it is read is skipped and counted (`shard_unreadable`).
- pyarrow filesystems are registered with webdataset's `gopen`, so `s3://`, `gs://`, `hdfs://`,
  ... shard URLs stream through the same reader as local files.
- `SkipCounter`: a webdataset exception handler that skips and counts, by reason, in shared
  memory, so the counts of every DataLoader worker add up in the process that trains.
- `UsableShardsCheck`: resampled shards are drawn forever, so shards with nothing to train on
  would hang the epoch; it raises instead.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import posixpath
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import webdataset as wds
from webdataset.gopen import gopen, gopen_schemes

from portraitflow.operators.shards import INDEX_NAME, oversized, parse_index
from portraitflow.operators.train_sample import SampleSkipped

log = logging.getLogger(__name__)

#: URI schemes read through pyarrow filesystems rather than webdataset's command-line helpers.
PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
#: Reasons a sample or shard is skipped; `shard_unreadable` loses the rest of that shard.
SKIP_REASONS = (
    "shard_unreadable",
    "missing_member",
    "damaged_member",
    "bad_json",
    "bad_array",
    "frame_count_mismatch",
    "clip_too_short",
    "video_undecodable",
    "degenerate_keypoints",
    "identity_mismatch",
    "no_curated_reference",
    "other",
)


def _open_with_pyarrow(url: str, mode: str = "rb", bufsize: int = 8192, **_: object):
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(url)
    return filesystem.open_input_stream(path)


for _scheme in PYARROW_SCHEMES:
    gopen_schemes[_scheme] = _open_with_pyarrow


def _local_path(url: str) -> str | None:
    """The file a local URL (a plain path, `file://`, or a path that exists whatever it looks
    like: `run-2024-05-01T10:00/...` parses as a scheme) names; None for remote and `pipe:` URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "" or os.path.exists(url):
        return url
    return parsed.path if parsed.scheme == "file" else None


def _open(url: str):
    """A binary stream of a shard: a local file opened as a file, anything else through `gopen`."""
    path = _local_path(url)
    return open(path, "rb") if path is not None else gopen(url, "rb")


def _read_text(url: str) -> str:
    path = _local_path(url)
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    with _open_with_pyarrow(url) as stream:
        return stream.read().decode("utf-8")


def read_index(url: str) -> list[str]:
    """Shard URLs of a wids-style index (`{"shardlist": [{"url": ..., "nsamples": ...}]}`);
    relative URLs are relative to the index's folder.

    An index is data, as untrusted as the shards (a downloaded or shared corpus): its entries may
    name files and storage URLs only. webdataset would run a `pipe:` entry through the shell, and
    fetch `http:` ones with curl, so any other scheme is refused."""
    base = posixpath.dirname(url)
    urls = []
    for shard in parse_index(_read_text(url), url):
        scheme = urlparse(shard).scheme
        if scheme not in ("", "file", *PYARROW_SCHEMES):
            raise ValueError(f"{url} names the shard {shard[:200]!r}: an index may name files and "
                             f"{'/'.join(PYARROW_SCHEMES)} URLs only, not '{scheme}:' (which would run a command "
                             "or fetch from the network)")
        urls.append(shard if scheme or shard.startswith("/") else posixpath.join(base, shard))
    return urls


def expand_shards(sources: str | Sequence[str]) -> list[str]:
    """Shard URLs from brace patterns (`dir/shards/{000000..000009}.tar`), `::`-joined lists,
    index JSON files, a curated output folder (its index), or a list of any of these.

    Raises FileNotFoundError naming a local shard, index or folder that does not exist: the
    reader would only skip it, so a mistyped path would give an empty epoch. A shard named more
    than once is read as often (oversampling), with a warning."""
    items = [sources] if isinstance(sources, str) else list(sources)
    if not items:
        raise ValueError("no shards given: set train_data.shards to a curated folder, its index.wids.json, "
                         "or .tar paths")
    urls: list[str] = []
    for item in items:
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            if not os.path.isfile(os.path.join(item, INDEX_NAME)):
                raise FileNotFoundError(f"shard folder {item} has no {INDEX_NAME}: give a folder written by "
                                        "`portraitflow curate`, its index, or shard paths")
            item = os.path.join(item, INDEX_NAME)
        # a path that exists is taken as it is: `cur {a,b}` or `a::b` are folder names, not patterns
        for url in [item] if os.path.exists(item) else wds.shardlists.expand_urls(item):
            urls.extend(read_index(url)) if url.endswith(".json") else urls.append(url)
    if not urls:
        raise ValueError(f"no shards in {sources!r}: an index that lists none is a curation that accepted no clip")
    missing = [url for url in urls if (path := _local_path(url)) is not None and not os.path.isfile(path)]
    if missing:
        more = f" and {len(missing) - 1} more of {len(urls)} shards" if len(missing) > 1 else ""
        glob = " (`*` and `?` are not patterns here: give a brace pattern such as {000000..000009}.tar, or the " \
               "curated folder)" if any(char in missing[0] for char in "*?") else ""
        raise FileNotFoundError(f"shard not found: {missing[0]}{more}{glob}")
    named = Counter(os.path.abspath(path) if (path := _local_path(url)) is not None else url for url in urls)
    if len(named) < len(urls):  # oversampling, or a folder given twice by mistake: the samples come as often
        log.warning("%d shard(s) are named more than once in %r: each is read as often as named, its samples as "
                    "often an epoch", sum(1 for count in named.values() if count > 1), sources)
    return urls


def read_shard(url: str, handler: Callable[[BaseException], bool]) -> Iterator[dict[str, Any]]:
    """A shard's samples in webdataset's layout (`__key__`, `__url__`, then one bytes value per
    member, named by what follows the key's dot: the shards curation writes), streamed from any URL
    webdataset's `gopen` opens. Plain tars only, as curation writes them (a compressed one is
    unreadable: a small gzip can unpack to any size); a member over MAX_MEMBER_BYTES is not read.

    tarfile takes a shard cut short at a header, or a damaged header, for the archive's end, which
    would drop the rest of the shard uncounted: here the end must be the zero blocks a writer adds
    after its last member, else `tarfile.ReadError` goes to `handler` (`shard_unreadable`), as does
    any error that breaks the stream. A sample holds whole members only; the one a break cuts short
    comes without the rest, which the sample builder counts (`missing_member`).
    """
    sample: dict[str, Any] | None = None
    broken: Exception | None = None
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or oversized(member, url):
                    continue
                key, _, field = posixpath.basename(member.name).partition(".")
                field = field.lower()  # as webdataset groups them: `KEY.MP4` is the sample's `mp4`
                key = posixpath.join(posixpath.dirname(member.name), key)
                if sample is None or sample["__key__"] != key:
                    if sample is not None:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                sample[field] = tar.extractfile(member).read()
                tar.members = []  # a stream's TarFile would keep every member's header to its end
            # the first zero block ended the loop; a writer adds a second (and pads the record)
            end = tar.fileobj.read(tarfile.BLOCKSIZE)
            if len(end) < tarfile.BLOCKSIZE or end.count(0) != len(end):
                raise tarfile.ReadError("no end-of-archive blocks after the last member read: the shard was cut short "
                                        "or a header is damaged")
    except Exception as exc:  # noqa: BLE001 - the handler counts a broken shard and raises anything else
        broken = exc
    if sample is not None:
        yield sample
    if broken is not None and not handler(broken):
        raise broken


class SkipCounter:
    """Counts skipped samples per reason across processes; `handler` plugs into webdataset.

    Returning True tells webdataset to continue with the next sample (or shard, when the tar
    stream itself broke), as `warn_and_continue` does, but nothing is skipped uncounted. Anything
    else (a bug, not bad data: `build_train_sample` turns every data problem into `SampleSkipped`)
    is raised, as the Ray Data path raises it, instead of quietly emptying an epoch.
    """

    def __init__(self) -> None:
        self._counts = multiprocessing.Array("q", len(SKIP_REASONS))

    def handler(self, exc: BaseException) -> bool:
        if isinstance(exc, SampleSkipped):
            reason = exc.reason if exc.reason in SKIP_REASONS else "other"
        elif isinstance(exc, (tarfile.TarError, EOFError, OSError)):
            reason = "shard_unreadable"
        else:
            raise exc
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += 1
        log.warning("training loader skipped (%s): %s", reason, exc)
        return True

    def built(self, build: Callable[[dict], dict[str, Any]], raw: dict) -> dict[str, Any] | None:
        """`build(raw)`, or None when the sample was skipped (counted); a bug raises."""
        try:
            return build(raw)
        except Exception as exc:  # noqa: BLE001 - the handler counts bad data and raises anything else
            self.handler(exc)
            return None

    def counts(self) -> dict[str, int]:
        """Skips so far per reason, only reasons that occurred."""
        with self._counts.get_lock():
            return {reason: int(n) for reason, n in zip(SKIP_REASONS, self._counts) if n}


#: shard draws per shard, all without a usable sample, after which a resampled stream gives up:
#: a usable shard among S is missed by 10 S random draws with probability about e^-10.
DRAWS_PER_SHARD = 10


class UsableShardsCheck:
    """A resampled stream draws shards forever, so shards with nothing to train on would hang the
    epoch: `count_draws` (a pipeline stage on the shard URLs) ends the stream once a process has
    drawn 10 x (number of shards) shards, plus `lookahead` (the draws that may be read ahead, into
    open shards and the shuffle buffer, before any sample is built), without one usable sample
    (`__call__` wraps the sample builder), and the epoch that yielded nothing raises with the skip
    counts where it is iterated. Once a sample was usable (`usable`: already known, e.g. when a
    resumed pass replays what it yielded before) it never ends the stream: the data is sparse, not
    unusable. (Ending, not raising, keeps the error out of deep generator stacks, whose traceback
    CPython 3.11 can fail to format.)
    """

    def __init__(self, build: Callable[[dict[str, Any]], dict[str, Any]], skips: SkipCounter, shards: int,
                 lookahead: int, usable: bool = False) -> None:
        self.build, self.skips, self.shards = build, skips, shards
        self.limit = DRAWS_PER_SHARD * shards + lookahead
        self.draws, self.usable = 0, usable

    def count_draws(self, urls: Iterable[Any]) -> Iterator[Any]:
        for url in urls:
            self.draws += 1
            if not self.usable and self.draws > self.limit:
                log.warning("training loader: %d resampled draws of %d shard(s) gave no usable sample; skipped so far %s",
                            self.draws - 1, self.shards, self.skips.counts())
                return
            yield url

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        built = self.build(sample)
        self.usable = True
        return built
