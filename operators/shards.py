"""WebDataset shards: one staged tar per sample, then packed in key order into numbered shards.

A sample is staged as `staging/{key}.tar` as soon as it is rendered (atomically), so a resumed
run re-renders nothing that finished. Packing plans staged samples in sorted key order into shards
`shards/{n:06d}.tar` after those already written, skipping keys any shard already holds, writes
the planned shards in parallel and moves them into place in number order: a key is never written
twice, and a run killed between shards and rerun fills the same shards as an uninterrupted run.
Every member is raw bytes (mp4, jpg, json, npy): no pickle.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portraitflow.operators.atomic import atomic_target, atomic_write

log = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"^(\d{6})\.tar$")
INDEX_NAME = "index.wids.json"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _write_samples(fileobj, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """WebDataset's layout: members `{key}.{field}`, a sample's members together, fields sorted.

    Written with the standard library (webdataset's TarWriter would import torch into every
    render worker for this); mtime 0 and fixed owners, so equal samples give equal bytes.
    """
    count = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, fields in samples:
            for field in sorted(fields):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(fields[field]), 0, 0o444
                tar.addfile(info, io.BytesIO(fields[field]))
            count += 1
    return count


def staged_path(staging_dir: Path, key: str) -> Path:
    """A staged sample's file; keys are dot-free, so the file's stem is the key."""
    return staging_dir / f"{key}.tar"


def stage_sample(staging_dir: Path, key: str, fields: dict[str, bytes]) -> int:
    """Write one sample's fields to `staging_dir/{key}.tar` atomically; returns its size in bytes."""
    if "." in key or "/" in key:
        raise ValueError(f"sample keys must not contain dots or slashes: {key!r}")
    target = staged_path(staging_dir, key)
    with atomic_target(target) as tmp, open(tmp, "wb") as out:
        _write_samples(out, [(key, fields)])
    return target.stat().st_size


def staged_whole(staging_dir: Path, key: str) -> bool:
    """Whether sample `key` is staged and can be read whole; one that cannot (damaged since it was
    staged: a disk error, a folder copied while it was written) is deleted, so it is rendered
    again rather than stopping packing on every run. Reads tar headers only (a cut tar ends before
    a member's data): 0.35 ms a sample in the page cache, about 1 ms cold."""
    path = staged_path(staging_dir, key)
    if not path.exists():
        return False
    try:
        with tarfile.open(path, "r:") as tar:
            names = tar.getnames()
        if names and all(name.startswith(key + ".") for name in names):
            return True
        damage = f"members of another sample: {names[:3]}"
    except (tarfile.TarError, OSError) as exc:
        damage = f"{type(exc).__name__}: {exc}"
    log.warning("%s could not be read whole (%s): rendered again", path, damage)
    path.unlink(missing_ok=True)
    return False


def read_staged(path: Path) -> tuple[str, dict[str, bytes]]:
    """The key and fields of a staged sample."""
    fields: dict[str, bytes] = {}
    key = path.stem
    with tarfile.open(path, "r:") as tar:
        for member in tar.getmembers():
            name = member.name
            if not name.startswith(key + "."):
                raise ValueError(f"{path}: member {name!r} does not belong to sample {key!r}")
            fields[name[len(key) + 1 :]] = tar.extractfile(member).read()
    return key, fields


def shard_paths(shard_dir: Path) -> list[Path]:
    return sorted(p for p in shard_dir.glob("*.tar") if SHARD_NAME.match(p.name)) if shard_dir.is_dir() else []


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a shard, in order (read from tar headers only, once: `whole_shard_keys`);
    raises what stops it from being read whole."""
    keys, damage = whole_shard_keys(path)
    if damage is not None:
        raise damage
    return keys


def iter_shard_keys(path: Path) -> Iterator[str]:
    """Sample keys of a shard, in order, from tar headers only; see `iter_samples`."""
    for key, _ in iter_samples(path, read=False):
        yield key


#: the largest member a shard's reader reads: a curated clip's mp4 is tens of MB; a member that
#: claims more is taken for missing, so a crafted shard cannot make a reader allocate what it claims
MAX_MEMBER_BYTES = 512 * 1024**2


def oversized(member: tarfile.TarInfo, shard: str) -> bool:
    """Whether `member` is over MAX_MEMBER_BYTES (said in the log; its sample then lacks it)."""
    if member.size <= MAX_MEMBER_BYTES:
        return False
    log.warning("%s: member %s claims %d bytes, over the %d MiB a curated member holds: not read", shard,
                member.name, member.size, MAX_MEMBER_BYTES // 1024**2)
    return True


def iter_samples(path: Path, read: bool = True, bounded: bool = True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A shard's samples in order, as (key, fields) (fields left empty unless `read`; a member over
    MAX_MEMBER_BYTES left out when `bounded`, as a reader of untrusted shards wants, not a repair).

    A sample comes once the next header, or the end-of-archive blocks, show it whole, so a shard
    cut short or with a garbled header yields its whole samples and then raises tarfile.ReadError
    (tarfile alone takes a cut inside a header, or a garbled one, for the archive's end, which
    would pass off a sample missing members as whole).
    """
    current, fields = None, {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():  # a link or folder: no member curation writes
                continue
            key = member.name.split(".", 1)[0]
            if key != current:
                if current is not None:
                    yield current, fields
                current, fields = key, {}
            if read and not (bounded and oversized(member, str(path))):
                fields[member.name[len(key) + 1 :]] = tar.extractfile(member).read()
        if current is not None and not _ends_cleanly(tar):
            raise tarfile.ReadError(f"no end-of-archive block after {tar.members[-1].name}: the shard was cut short "
                                    "or a header is damaged")
    if current is not None:
        yield current, fields


def _ends_cleanly(tar: tarfile.TarFile) -> bool:
    """Whether zeros (the end-of-archive blocks, which a writer adds only after its last member)
    follow the last member that was read: a header never starts with NUL."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return bool(block) and block.count(0) == len(block)


#: keys of the shards this process has read whole, by (path, size, modification time)
_READ_WHOLE: dict[tuple[str, int, int], list[str]] = {}


def shard_notes(out: Path) -> Path:
    """The folder of a curated folder `out` where each shard read whole is noted (`whole_shard_keys`)."""
    return out / ".state" / "shard_keys"


def shard_note(path: Path, notes: Path) -> Path:
    """Where the keys of the shard at `path`, read whole, are noted in the folder `notes`."""
    return notes / f"{path.stem}.json"


def whole_shard_keys(path: Path, remember_in: Path | None = None,
                     read_only: bool = False) -> tuple[list[str], Exception | None]:
    """The keys of a shard's whole samples, and why it cannot be read whole (None when it can).

    Reading the headers costs a seek per member, so a shard read whole is remembered by its size
    and modification time: in this process, and in `remember_in` (a folder) across runs, so a run
    into a large corpus reads only new or changed shards. A shard cut short or rewritten changes
    both and is read again; one damaged in place with neither changing is not (`portraitflow
    inspect` reads every shard whole, unless `--quick`). `read_only` notes nothing new."""
    try:
        stat = path.stat()
    except OSError as exc:
        return [], exc
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    note = shard_note(path, remember_in) if remember_in is not None else None
    if identity not in _READ_WHOLE and note is not None and note.is_file():
        try:
            saved = json.loads(note.read_text())
            if (saved["size"], saved["mtime_ns"]) == identity[1:]:
                _READ_WHOLE[identity] = [str(key) for key in saved["keys"]]
        except (OSError, ValueError, KeyError, TypeError, RecursionError):  # another version's note: read the shard
            pass
    if identity in _READ_WHOLE:
        return list(_READ_WHOLE[identity]), None
    keys: list[str] = []
    try:
        for key in iter_shard_keys(path):  # one by one: the keys before a break are kept
            keys.append(key)
    except (tarfile.TarError, OSError) as exc:
        return keys, exc
    _remember_whole(path, stat, keys, None if read_only else remember_in)
    return list(keys), None


def _remember_whole(path: Path, stat: os.stat_result, keys: list[str], remember_in: Path | None) -> None:
    """Remember that the shard at `path`, as `stat` found it before it was read (a change since
    then is read again), holds `keys` whole (`whole_shard_keys`). The note is only a saving: one
    that cannot be written is skipped."""
    _READ_WHOLE[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = keys
    if remember_in is not None:
        try:
            atomic_write(shard_note(path, remember_in),
                         json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "keys": keys}))
        except OSError as exc:
            log.warning("could not note the keys of %s (the next run reads its headers again): %s", path, exc)


def rewrite_whole(path: Path) -> list[str]:
    """Rewrite a shard that cannot be read whole with only its whole samples, atomically under its
    own name (later shards keep their numbers); returns their keys. Samples are copied one at a
    time, so a large shard is never held in memory."""
    keys: list[str] = []

    def whole() -> Iterator[tuple[str, dict[str, bytes]]]:
        try:
            for key, fields in iter_samples(path, bounded=False):  # its own shard: every member is copied
                keys.append(key)
                yield key, fields
        except tarfile.TarError:  # the break: what follows it is lost (an OSError stops the rewrite)
            return

    with atomic_target(path) as tmp, open(tmp, "wb") as out:
        _write_samples(out, whole())
    return keys


#: below this many samples (seconds of packing), it stays in this process: writers take 0.2-0.4 s to
#: start, and 1.2 s of CPU each more under the CLI, which a spawned process imports again; on a
#: shared 2-core machine they lost at 500 samples (0.7-0.9x) and gave 0.9-1.6x at 1,000-2,000
#: (`benchmarks/pack_shards.py`)
PARALLEL_FROM_SAMPLES = 2000
#: writers at most by default: each copies about 250 MB/s (`benchmarks/pack_shards.py`), so 8
#: (2 GB/s) already outrun most volumes a head node writes to
MAX_DEFAULT_WORKERS = 8
#: shards written whole but not yet in place, in `.packing.*` folders of the shard folder (one a run)
PACKING_PREFIX = ".packing."
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def default_pack_workers() -> int:
    """One writer per CPU this process may run on, at most MAX_DEFAULT_WORKERS."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # not on macOS
    return max(1, min(MAX_DEFAULT_WORKERS, usable))


@dataclass(frozen=True)
class _PlannedShard:
    target: Path
    staged: tuple[Path, ...]


def _plan_shards(staging_dir: Path, shard_dir: Path, max_samples: int, max_bytes: int) -> list[_PlannedShard]:
    """The new shards, numbered after the existing ones, and the staged samples each will hold: in
    key order, skipping (and deleting) samples a shard already holds, each shard ending at whichever
    limit comes first by the staged files' sizes. Decided before any shard is written, so shards
    written at once hold what one written after the other would."""
    existing = shard_paths(shard_dir)
    done = {key for path in existing for key in shard_keys(path)}
    number = int(SHARD_NAME.match(existing[-1].name).group(1)) + 1 if existing else 0
    staged = sorted(staging_dir.glob("*.tar")) if staging_dir.is_dir() else []
    for path in staged:
        if path.stem in done:
            path.unlink()
    pending = deque(p for p in staged if p.exists())
    plan: list[_PlannedShard] = []
    while pending:
        batch, size = [], 0
        while pending and len(batch) < max_samples:
            sample_size = pending[0].stat().st_size
            if batch and size + sample_size > max_bytes:
                break
            size += sample_size
            batch.append(pending.popleft())
        plan.append(_PlannedShard(shard_dir / f"{number + len(plan):06d}.tar", tuple(batch)))
    return plan


def _write_shard(staged: tuple[Path, ...], packed: Path) -> None:
    """Write a shard of the staged samples to `packed`, durably (in a writer process, or the driver)."""
    with atomic_target(packed) as tmp, open(tmp, "wb") as out:
        _write_samples(out, (read_staged(p) for p in staged))


def _start_writer(driver_pid: int) -> None:
    """A writer dies with its driver (on Linux): one left behind by a killed run would take the shards
    already queued and then wait forever. Ctrl-C reaches the driver alone, which then lets the shards
    being written finish and cancels the rest."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != driver_pid:  # the driver died before the line above
        os._exit(1)


def _written_in_order(plan: list[_PlannedShard], packing: Path, workers: int) -> Iterator[_PlannedShard]:
    """The planned shards, in shard order, each once written whole to `packing` under its name: one
    after the other in this process with one worker, else by `workers` processes (tarfile holds the
    GIL: threads packed 0.6-1.2x as fast as one, `benchmarks/pack_shards.py --threads`), at most two
    shards each ahead of the first one not yet given back, so finished shards never pile up on the
    disk beside their staged samples."""
    if workers == 1:
        for shard in plan:
            _write_shard(shard.staged, packing / shard.target.name)
            yield shard
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),  # no fork of Ray's threads
                               initializer=_start_writer, initargs=(os.getpid(),))

    def submit(shard: _PlannedShard) -> tuple[_PlannedShard, Future]:
        return shard, pool.submit(_write_shard, shard.staged, packing / shard.target.name)

    try:
        todo = iter(plan)
        ahead = deque(map(submit, itertools.islice(todo, 2 * workers)))
        while ahead:
            shard, writing = ahead.popleft()
            writing.result()
            ahead.extend(map(submit, itertools.islice(todo, 1)))
            yield shard
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pack_shards(
    staging_dir: Path,
    shard_dir: Path,
    max_samples: int,
    max_bytes: int,
    on_shard: Callable[[list[str]], None] | None = None,
    remember_in: Path | None = None,
    workers: int = 1,
) -> list[Path]:
    """Move staged samples, in key order, into new shards after the existing ones.

    Which samples go into which shard is planned first (`_plan_shards`); the shards are then written
    by `workers` processes at once (by this process alone below PARALLEL_FROM_SAMPLES samples) into
    a folder of this call's own, and moved into place one by one in shard order, so the shard folder
    never holds a shard after a missing one and a killed run resumes as one that ran through.
    `on_shard(keys)` runs, in shard order, once a shard is durably in place (completion markers
    hang off it); its staged files are deleted only afterwards. Each new shard's keys are noted in
    `remember_in` (`whole_shard_keys`), so the next run does not read back the headers of shards
    it wrote (41 ms for a shard of 100 samples in the page cache: 34 min for 50,000). Returns the
    shards written.
    """
    for abandoned in shard_dir.glob(PACKING_PREFIX + "*"):  # a killed run's shards, written but not moved in
        shutil.rmtree(abandoned, ignore_errors=True)
    plan = _plan_shards(staging_dir, shard_dir, max_samples, max_bytes)
    if not plan:
        return []
    if sum(len(shard.staged) for shard in plan) < PARALLEL_FROM_SAMPLES:
        workers = 1
    shard_dir.mkdir(parents=True, exist_ok=True)
    packing = Path(tempfile.mkdtemp(prefix=PACKING_PREFIX, dir=shard_dir))
    written: list[Path] = []
    try:
        with contextlib.closing(_written_in_order(plan, packing, min(workers, len(plan)))) as written_in_order:
            for shard in written_in_order:
                with atomic_target(shard.target) as tmp:  # moved in durably, before a marker vouches for it
                    os.replace(packing / shard.target.name, tmp)
                keys = [p.stem for p in shard.staged]
                _remember_whole(shard.target, shard.target.stat(), keys, remember_in)  # written whole, just now
                if on_shard:
                    on_shard(keys)
                for p in shard.staged:
                    p.unlink()
                written.append(shard.target)
    finally:
        shutil.rmtree(packing, ignore_errors=True)
    return written


def parse_index(text: str, where: str) -> dict[str, int]:
    """Samples per shard URL of a wids-style index's text (`where` names it in the error):
    ValueError for one cut short, overwritten or another tool's JSON."""
    try:
        return {str(entry["url"]): int(entry["nsamples"]) for entry in json.loads(text)["shardlist"]}
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise ValueError(f"{where} cannot be read as a shard index ({type(exc).__name__}: {exc}); one `portraitflow "
                         "curate` wrote is written again by rerunning it with the same inputs and --out") from None


def indexed_shards(out_dir: Path) -> dict[str, int]:
    """Samples per shard (its path below `out_dir`) as the folder's index lists them.
    FileNotFoundError when there is none, ValueError naming the file when it is no index."""
    path = out_dir / INDEX_NAME
    return parse_index(path.read_text(encoding="utf-8", errors="replace"), str(path))


def write_index(out_dir: Path, shard_dir: Path) -> dict:
    """A wids-style index (`wids-shard-index-v1`) of every shard, beside the shards."""
    shards = [
        {"url": str(path.relative_to(out_dir)), "nsamples": len(shard_keys(path)), "filesize": path.stat().st_size}
        for path in shard_paths(shard_dir)
    ]
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "portraitflow", "shardlist": shards}
    atomic_write(out_dir / INDEX_NAME, json.dumps(index, indent=1))
    return index
