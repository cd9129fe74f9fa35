"""Generation jobs: (reference portrait, driving video, per-job params), read from the CLI's forms,
validated, and named deterministically so reruns find their finished outputs.

A job's local paths are made absolute when it is made, so results and output names do not
depend on the working folder or on how a path was typed (`./a.png` and `a.png` are one job). A
job whose params are invalid, or whose ref or driving is empty or a URL (only local files are
read), is kept with a reason (it ends as a `failed` row); a jobs file with an unknown column, or a
CSV row with more fields than its header, is refused whole, since rows would be misread.

Job ids are unique, since every result, metric and file downstream is keyed by them: a jobs file
that gives one `job_id` to two rows is refused whole (which row is meant cannot be guessed, and a
`failed` row would carry the same id), and an id derived from ref and driving that two jobs
would share (`s1/ref.png` and `s2/ref.png`, `a.png` and `a.jpg`) gets a short hash of the job's
full paths and params, so it stays readable, file-name safe and the same on every rerun. Which of
the two forms a job gets depends on the rest of its list, so resume looks for both (`id_forms`).

Output names (`output_name`) cover what the inputs hold, not only their paths: a driving video
re-exported at the same path is another job's input, and resume must not take the old video for
its result.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from portraitflow.jobs.config import validation_problems
from portraitflow.jobs.config.animate import OPERATIONAL_FIELDS, PER_JOB_FIELDS, AnimateConfig
from portraitflow.models.animators.registry import animator_class, backend_settings
from portraitflow.operators.inputs import NOT_UTF8, escapes_a_file_name, is_apple_double
from portraitflow.operators.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES, escape_undecodable, hashed_name

log = logging.getLogger(__name__)

JOB_COLUMNS = ("job_id", "ref", "driving")
#: bytes read from each end of each weights file and each job input for its fingerprint
FINGERPRINT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Job:
    """One animation: `ref` animated by `driving`; `params` override the config's motion options."""

    job_id: str
    ref: str
    driving: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("ref", "driving"):  # whichever form made the job (module docstring)
            object.__setattr__(self, name, local_path(str(getattr(self, name))))


def default_job_id(ref: str, driving: str) -> str:
    """`<ref stem>__<driving stem>`, the id of a job given none; `unique_ids` adds a hash when two
    jobs would share it."""
    return f"{Path(ref).stem}__{Path(driving).stem}"


def _hashed_id(job: Job) -> str:
    """The derived id of a job whose `default_job_id` another job of its list shares: that id plus a
    hash of the job's ref, driving and params (dot-free, at most 80 characters, so `output_name`
    keeps the hash)."""
    identity = json.dumps({"ref": job.ref, "driving": job.driving, "params": job.params}, sort_keys=True, default=str)
    return hashed_name(default_job_id(job.ref, job.driving), identity, max_len=69, fallback="job")


def id_forms(job: Job) -> list[str]:
    """Every id `unique_ids` can give `job`, its own first: a derived id is `default_job_id` in one
    list and `_hashed_id` in another (where another job shares the default), so resume looks for
    the job's output under both. A given id is the only one: it names that output alone."""
    derived = [default_job_id(job.ref, job.driving), _hashed_id(job)]
    return [job.job_id, *(form for form in derived if form != job.job_id)] if job.job_id in derived else [job.job_id]


def unique_ids(jobs: list[Job], source: str) -> list[Job]:
    """`jobs` (an empty `job_id`: none given) with unique ids, or ValueError naming the id.

    A given id used twice is refused. A derived id stays `default_job_id` when no other job has
    it; otherwise it is `_hashed_id`. Jobs identical in ref, driving and params and given no id are
    refused too: they are one job listed twice. A name that is not valid UTF-8 (a folder's file,
    an argument, a JSONL escape) is escaped (`escape_undecodable`): no table can hold it, and its
    job fails with `NOT_UTF8` (`effective_params`) rather than the whole results table.
    """
    jobs = [replace(job, **{name: escape_undecodable(getattr(job, name)) for name in ("job_id", "ref", "driving")})
            for job in jobs]
    given = Counter(job.job_id for job in jobs if job.job_id)
    twice = [job_id for job_id, count in given.items() if count > 1]
    if twice:
        rows = [row for row, job in enumerate(jobs, 1) if job.job_id == twice[0]]
        more = f" (and {len(twice) - 1} more ids: {', '.join(map(repr, twice[1:4]))})" if len(twice) > 1 else ""
        raise ValueError(f"{source}: job_id {twice[0]!r} is given to data rows {', '.join(map(str, rows))}{more}; "
                         "job ids must be unique")
    derived = Counter(default_job_id(job.ref, job.driving) for job in jobs if not job.job_id)
    named, seen = [], {}
    for row, job in enumerate(jobs, 1):
        job_id = job.job_id
        if not job_id:
            job_id = default_job_id(job.ref, job.driving)
            if derived[job_id] > 1 or job_id in given:
                job_id = _hashed_id(job)
        if job_id in seen:
            raise ValueError(f"{source}: data rows {seen[job_id]} and {row} both get job id {job_id!r} (same ref, "
                             "driving and params, no job_id): remove one, or give each its own job_id")
        seen[job_id] = row
        named.append(job if job_id == job.job_id else replace(job, job_id=job_id))
    _refuse_one_job_written_twice(jobs, source)
    return named


def _refuse_one_job_written_twice(jobs: list[Job], source: str) -> None:
    """ValueError for two rows without a job_id whose params differ only in how they are written
    ("1" and "1.0"): two ids, two videos of one job. Ids still hash the params as written, so the
    outputs of earlier runs keep their names."""
    first: dict[str, int] = {}
    for row, job in enumerate(jobs, 1):
        if job.job_id:
            continue
        same = json.dumps({"ref": job.ref, "driving": job.driving, "params": _as_settings(job.params)},
                          sort_keys=True, default=str)
        if same in first:
            raise ValueError(f"{source}: data rows {first[same]} and {row} are one job (same ref and driving, "
                             "params that read the same): remove one, or give each its own job_id")
        first[same] = row


def _is_url(path: str) -> bool:
    """`file://` included: the flow reads plain local paths only."""
    return "://" in path


def local_path(path: str, base: str | Path = ".") -> str:
    """`path` absolute (a relative one taken from `base`) and normalised; a URL or an empty path
    is kept as given, for the job to fail with its reason."""
    if not path or _is_url(path):
        return path
    return os.path.abspath(Path(base) / path)


def pair_jobs(ref: str, driving: str) -> list[Job]:
    return unique_ids([Job("", str(ref), str(driving))], f"{ref} + {driving}")


def cross_jobs(refs_dir: str, drivers_dir: str) -> list[Job]:
    """Every image in `refs_dir` with every video in `drivers_dir` (sorted, not recursive), or
    ValueError when either folder holds none. Other entries are named in a warning."""
    refs = _entries(refs_dir, IMAGE_SUFFIXES, "portraits")
    drivers = _entries(drivers_dir, VIDEO_SUFFIXES, "driving videos")
    return unique_ids([Job("", str(r), str(d)) for r in refs for d in drivers], f"{refs_dir} x {drivers_dir}")


def _entries(folder: str, suffixes: frozenset[str], what: str) -> list[Path]:
    """The files of `folder` named like `what`, but AppleDouble forks (`is_apple_double`): a folder
    copied from a Mac holds a `._` twin of each, which no flow can read."""
    entries = sorted(Path(folder).iterdir())
    chosen = [p for p in entries if p.suffix.lower() in suffixes and not p.is_dir() and not is_apple_double(p)]
    if not chosen:
        raise ValueError(f"{folder} holds no {what} (files ending {', '.join(sorted(suffixes))})")
    ignored = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in chosen]
    if ignored:
        log.warning("%s: %d entries that are not %s ignored: %s", folder, len(ignored), what,
                    ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else ""))
    return chosen


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""


def load_jobs(path: str | Path) -> list[Job]:
    """Jobs from a CSV, JSONL or parquet file: columns ref, driving, optional job_id and params.

    Relative paths are taken relative to the jobs file's folder. Ids are unique (`unique_ids`):
    a `job_id` given to two rows refuses the file.
    """
    path = Path(path)
    try:
        columns, rows = read_table(path)
    except UnicodeDecodeError as exc:  # its own text names neither the file nor where
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}): "
                         "save it as UTF-8") from None
    if not columns:
        raise ValueError(f"{path}: empty: no columns (ref and driving, optionally job_id and params)")
    unknown = set(columns) - set(JOB_COLUMNS) - set(PER_JOB_FIELDS)
    missing = {"ref", "driving"} - set(columns)
    if unknown or missing:
        raise ValueError(f"{path}: unknown columns {sorted(unknown)}, missing columns {sorted(missing)}; "
                         f"allowed: {', '.join(JOB_COLUMNS + PER_JOB_FIELDS)}")
    jobs = []
    for row in rows:
        ref, driving = (str(row[k]) if _present(row.get(k)) else "" for k in ("ref", "driving"))
        ref, driving = (local_path(p, path.parent) for p in (ref, driving))
        job_id = str(row["job_id"]) if _present(row.get("job_id")) else ""  # derived by unique_ids
        params = {k: row[k] for k in PER_JOB_FIELDS if k in row and _present(row[k])}
        jobs.append(Job(job_id, ref, driving, params))
    return unique_ids(jobs, str(path))


def _as_settings(params: dict[str, Any]) -> dict[str, Any]:
    """A job's params as the settings read them (CSV's "1" and "1.0" are the multiplier 1.0); a
    value a setting refuses stays as written (its job fails with the reason, `effective_params`)."""
    read = {}
    for name, value in params.items():
        try:
            read[name] = getattr(AnimateConfig.model_validate({name: value}), name)
        except ValidationError:
            read[name] = value
    return read


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A jobs file's columns and rows, each value as the file holds it: a CSV's text, JSON's and
    parquet's own types, so a job id `7` stays `7` (pandas makes a column of integers with a gap
    floats, `7.0`), and no CSV row shifts into other columns (pandas takes a row with one field
    more than the header for an index and its fields; a trailing comma or an unquoted comma in a
    path makes one): such a row refuses the file, named. A text file's UTF-8 BOM (spreadsheets and
    Notepad write one) is dropped, not read as part of the first column's name or line."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)  # fields past the header's go to the key None; blank lines skipped
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        for number, row in enumerate(rows, 1):
            if None in row:
                raise ValueError(f"{path}: data row {number} has {len(columns) + len(row[None])} fields, the header "
                                 f"{len(columns)}: quote a value holding a comma, drop a trailing comma")
        twice = sorted(name for name, count in Counter(columns).items() if count > 1)
        if twice:
            raise ValueError(f"{path}: columns {twice} are given twice")
        return columns, rows
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number}, column {exc.colno}: {exc.msg}") from None
            except RecursionError:
                raise ValueError(f"{path}: line {number} is nested too deep to read") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
        return list(dict.fromkeys(name for row in rows for name in row)), rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pandas(integer_object_nulls=True)  # ints with nulls: ints and None
        return list(table.columns), table.to_dict("records")
    raise ValueError(f"{path}: jobs files are .csv, .jsonl or .parquet")


def effective_params(job: Job, cfg: AnimateConfig) -> dict[str, Any]:
    """The job's motion options: the config's, overridden by the job's; ValueError if invalid, or
    if ref or driving is empty or a URL (the flow reads local files only): said here, since an
    empty path reads as the current folder and a URL as a missing file."""
    empty = [f"{name} is empty" for name in ("ref", "driving") if not getattr(job, name)]
    if empty:
        raise ValueError("; ".join(empty))
    undecodable = [f"{name}: {NOT_UTF8}" for name in ("ref", "driving") if escapes_a_file_name(getattr(job, name))]
    if undecodable:
        raise ValueError("; ".join(undecodable))
    remote = [f"{name} {value}" for name, value in (("ref", job.ref), ("driving", job.driving)) if _is_url(value)]
    if remote:
        raise ValueError(f"remote paths are not supported, give local files: {'; '.join(remote)}")
    try:
        merged = AnimateConfig.model_validate({**cfg.model_dump(), **job.params})
    except ValidationError as exc:
        raise ValueError(f"invalid job params: {validation_problems(exc)}") from None
    return {k: getattr(merged, k) for k in PER_JOB_FIELDS}


def output_settings(backend: str, cfg: AnimateConfig) -> dict[str, Any]:
    """Every setting of `cfg` that changes `backend`'s videos: each one it reads (`backend_settings`)
    but `OPERATIONAL_FIELDS`, with `weights` as the fingerprint of what they hold, not where, and
    the animator's `output_version` once it has one."""
    names = backend_settings(backend) - set(OPERATIONAL_FIELDS) - {"backend"}
    settings = {name: getattr(cfg, name) for name in sorted(names)}
    if settings.get("weights"):
        settings["weights"] = weights_fingerprint(settings["weights"])
    if version := animator_class(backend).output_version:
        settings["output_version"] = version
    return settings


def weights_fingerprint(weights: str) -> str:
    """A digest of a weights folder's files: each one's path in the folder, size, and first and
    last `FINGERPRINT_BYTES`. Other weights in the same folder give another fingerprint; the same
    files copied elsewhere (another folder or machine) the same one. Reading the files whole would
    cost gigabytes per run. Hidden files and folders (a conversion's `.partial`, caches) are not
    weights and are left out. Anything but a folder (`tiny`: random modules) is its own fingerprint."""
    root = Path(weights).expanduser()
    if not root.is_dir():
        return weights
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                     p.relative_to(root).parts))
    for path in sorted(files):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as handle:
            _digest_ends(digest, handle, size)
    return f"sha256:{digest.hexdigest()[:16]}"


def _digest_ends(digest: Any, handle: Any, size: int) -> None:
    """Adds the first and last `FINGERPRINT_BYTES` of an open file of `size` bytes to `digest`."""
    digest.update(handle.read(FINGERPRINT_BYTES))
    handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
    digest.update(handle.read(FINGERPRINT_BYTES))


def input_fingerprint(path: str) -> str:
    """What a job's ref or driving holds, in the spirit of `weights_fingerprint`: `sha256:` of its
    size and first and last `FINGERPRINT_BYTES` (a media file's header and its index or last
    frames), so a `touch` or a copy of the same bytes keeps it and a re-export at the same path
    changes it, for 128 KiB read per input, not the whole video.

    It is read where jobs are planned (the driver, which sees the same shared paths as the workers,
    docs/cluster.md). What cannot be read there is named by its path instead, `path:<path>` (the
    old naming): a URL (refused anyway, `effective_params`), or a missing or unreadable file, whose
    job then fails in preparation with its reason, never here."""
    if not path or _is_url(path):
        return f"path:{path}"
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.sha256(f"{size}\0".encode())
            _digest_ends(digest, handle, size)
    except (OSError, ValueError):  # missing, a folder, no permission, a NUL in the path
        return f"path:{path}"
    return f"sha256:{digest.hexdigest()[:16]}"


def output_name(job: Job, backend: str, params: dict[str, Any], settings: dict[str, Any],
                inputs: dict[str, str] | None = None) -> str:
    """`<job id>-<digest>.mp4`: the digest covers everything that changes the video (what the inputs
    hold, backend, the job's params and the config's other `output_settings`), so a rerun with
    another driving video or reference at the same path, or with other settings, writes a new file
    instead of mistaking the old one for its result.

    params: the job's params `backend` reads, and `max_output_side` where it scales the output
        (`plan_rows`: only those outputs were renamed when it came).
    inputs: `{"ref": ..., "driving": ...}` fingerprints (`input_fingerprint`) when the caller has
        them (`plan_rows` reads each file once for all its jobs); read here otherwise."""
    inputs = inputs or {name: input_fingerprint(getattr(job, name)) for name in ("ref", "driving")}
    identity = json.dumps({"ref": inputs["ref"], "driving": inputs["driving"], "backend": backend, "params": params,
                           "settings": settings}, sort_keys=True, default=str)
    return f"{hashed_name(job.job_id, identity, 80, fallback='job')}.mp4"
