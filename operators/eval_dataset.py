"""Evaluation datasets to generation jobs: a folder, a jobs file, or curated WebDataset shards.

Self-reenactment jobs use a clip's first frame as the reference and the clip as both driver and
ground truth; clips are cut to `max_seconds` first (re-encoded with their audio), and the
reference is taken from the cut clip so reference and ground truth share every pixel. Cross
jobs pair each driving video with a portrait of someone else: a folder's portraits, else the
first frame of another clip, never one cut from the same source video. Prepared files have names
derived from the input and the cut length (`{input_key}-{ms}ms`, `{input_key}-full` uncut), so a
rerun finds them and does not redo them while the input holds what they were cut from (a stamp
beside them: an input re-exported at the same path is cut again), and a sweep with another
`max_seconds` sharing the folder never reuses them. A cross job's id names its portrait (the
clip's name, `-x` and the portrait's input key or clip name), not its place in a list: a portrait
added never gives an earlier job's id to another pairing. A folder's globs never pick up files
under the sweep's own output folder, so a sweep writing inside its dataset does not take its clips
and outputs for inputs on a rerun; they match names in any case (a camera's `TALK.MP4`), and never
take macOS `._` forks.
Shards are read one at a time up to `max_videos` samples, each as a local file: a shard's name is
data, and webdataset's opener would run one starting `pipe:` as a shell command. An unreadable
shard (or the rest of it) and a sample without a clip are failed rows with their reason.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from itertools import cycle
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from portraitflow.jobs.config.fields import ConfigModel
from portraitflow.operators.atomic import atomic_target, atomic_write
from portraitflow.operators.generation_jobs import Job, input_fingerprint, load_jobs
from portraitflow.operators.inputs import input_key, is_apple_double
from portraitflow.operators.job_status import FAILED, OK, clipped
from portraitflow.operators.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES, hashed_name, safe_stem
from portraitflow.operators.probe import error_text
from portraitflow.operators.train_sample import SampleSkipped, check_digests

log = logging.getLogger(__name__)

CLIP_KEY = re.compile(r"(.+)_\d{8,}_\d{8,}")  # `inputs.clip_key`: {input_key}_{start_ms}_{end_ms}
NO_PARTNER = "no_cross_portrait"


class DatasetSpec(ConfigModel):
    """The `dataset:` block of a sweep file."""

    type: Literal["folder", "jobs", "shards"] = Field("folder", description="Where the clips come from.")
    path: str = Field(..., description="The folder, the jobs file (csv/jsonl/parquet), or a curated output "
                      "folder, folder or glob of .tar shards.")
    include: list[str] = Field(default_factory=lambda: ["*.mp4"], description="Globs of driving videos in a folder.")
    refs: list[str] = Field(default_factory=lambda: ["*.png", "*.jpg"],
                            description="Globs of portraits for cross jobs.")


def _save_png(rgb, path: Path) -> None:
    from PIL import Image

    with atomic_target(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def clip_name(source: str, max_seconds: float | None, name: str | None = None) -> str:
    """The dot-free name of `source` (or `name`, a curated sample's key) cut to `max_seconds`:
    `{input_key}-{ms}ms`, or `-full` uncut."""
    return f"{name or input_key(source)}-{'full' if max_seconds is None else f'{round(max_seconds * 1000)}ms'}"


def prepare_clip(source: str, folder: Path, max_seconds: float | None, reference: bool = True,
                 name: str | None = None, curated: bool = False) -> dict[str, Any]:
    """Cut the clip (when asked) and extract its first frame as the reference (unless the job has
    its own); a row with status and reason. The job id is the clip's name (`clip_name`), which
    covers the source's path only: `<name>.inputs` keeps the `input_fingerprint` of the source the
    clip was cut from, and a clip whose source now holds something else (or that has no stamp, as
    one cut before stamps) is cut again, its reference with it. `name` (a shard sample's key) names
    the job instead of the source's path; a clip `curated` by portraitflow no longer than
    `max_seconds` is taken as it is, not encoded a second time: it is already H.264 at a constant
    rate (a re-encode read 41-43 dB against it)."""
    from portraitflow.operators.decode import VideoUnreadable, iter_frame_chunks, probe_video
    from portraitflow.operators.video_writer import write_h264

    key = clip_name(source, max_seconds, name)
    clip, ref, stamp = folder / f"{key}.mp4", folder / f"{key}.ref.png", folder / f"{key}.inputs"
    row = {"job_id": key, "source": source, "ref": str(ref), "driving": str(clip), "status": OK, "reason": None}
    try:
        cut_from = input_fingerprint(source)
        if not (clip.is_file() and stamp.is_file() and stamp.read_text() == cut_from):
            ref.unlink(missing_ok=True)  # the old clip's first frame
            info = probe_video(source)
            if curated and (max_seconds is None or info.duration_s <= max_seconds):
                atomic_write(clip, Path(source).read_bytes())
            else:
                frames = (chunk.frames for chunk in iter_frame_chunks(source, info.output_fps, end_s=max_seconds))
                write_h264(clip, frames, info.output_fps, audio_from=source)
            atomic_write(stamp, cut_from)
        if reference and not ref.is_file():
            first = next(iter_frame_chunks(str(clip), probe_video(str(clip)).fps, chunk_size=1))
            _save_png(first.frames[0], ref)
    except (VideoUnreadable, ValueError, OSError) as exc:
        return {**row, "status": FAILED, "reason": "unreadable", "error": error_text(exc)}
    return row


def _matches(folder: Path, patterns: list[str], suffixes: set[str] | None, skip: tuple[Path, ...] = ()) -> list[str]:
    """Files under `folder` matching a pattern as `rglob` finds them, but in any case, since cameras
    and phones write `TALK.MP4` and `IMG_0001.MOV` (`_any_case`), with one of `suffixes` (None: any
    file); no AppleDouble fork (`is_apple_double`), and none inside a `skip` folder: a sweep's own
    clips and outputs, when its folder lies in the dataset, are never inputs of a rerun."""
    skipped = [Path(os.path.abspath(s)) for s in skip]
    found = {p for pattern in patterns for p in folder.rglob(_any_case(pattern))
             if (p.suffix.lower() in suffixes if suffixes is not None else p.is_file()) and not is_apple_double(p)
             and not any(Path(os.path.abspath(p)).is_relative_to(s) for s in skipped)}
    return sorted(str(p) for p in found)


def _unlisted_folders(folder: str) -> list[str]:
    """Each folder under `folder` that cannot be listed (no permission, a vanished mount), with why."""
    unlisted: list[str] = []
    for _ in os.walk(folder, onerror=lambda exc: unlisted.append(f"{exc.filename}: {exc.strerror}")):
        pass
    return unlisted


def _any_case(pattern: str) -> str:
    """A glob pattern matching names in any case (`*.mp4` -> `*.[mM][pP]4`): letters outside
    `[...]` classes become a class of both cases, so `**` and the rest keep rglob's meaning."""
    out, in_class = [], False
    for char in pattern:
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        elif char.isalpha() and not in_class and char.lower() != char.upper():
            char = f"[{char.lower()}{char.upper()}]"
        out.append(char)
    return "".join(out)


def _jobs_file(path: Path, folder: Path, max_seconds: float | None, max_videos: int | None) -> list[dict[str, Any]]:
    """A jobs file read as `animate` reads it (relative paths from the file's folder, `job_id`
    optional, ids unique: a repeated `job_id` refuses the file, derived ids that collide get a
    hash); each driving video is cut to `max_seconds` like a folder's clips, with its job's own
    portrait as the reference."""
    jobs = load_jobs(path)[:max_videos]
    _refuse_job_params(path, jobs)
    return [{**prepare_clip(job.driving, folder, max_seconds, reference=False),
             "job_id": safe_stem(job.job_id), "ref": job.ref} for job in jobs]


def _refuse_job_params(path: str | Path, jobs: list[Job]) -> None:
    """ValueError naming the per-job param columns of a jobs file: in a sweep, its configs set them."""
    columns = sorted({name for job in jobs for name in job.params})
    if columns:
        raise ValueError(f"{path}: per-job params (column(s) {', '.join(columns)}) are for `animate`; in a sweep, "
                         "its configs set them: drop the column(s), or make them sweep params")


def _shard_files(path: str) -> list[str]:
    """The shards of a curated output folder (its `shards/`), a folder of tars, or a glob of tars,
    as absolute paths: a name found by listing never starts like a URL (`pipe:...`)."""
    import glob

    from portraitflow.operators.shards import shard_paths

    source = Path(path)
    if (source / "shards").is_dir():
        found = shard_paths(source / "shards")
    else:
        found = source.glob("*.tar") if source.is_dir() else glob.glob(path)
    return sorted(os.path.abspath(p) for p in found)


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    """A shard sample's json, {} when it has none or it is not an object."""
    try:
        meta = json.loads(sample.get("json") or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep to parse
        return {}
    return meta if isinstance(meta, dict) else {}


def _damage(sample: dict[str, Any]) -> str | None:
    """Why a curated sample's mp4 is not as curation wrote it (`check_digests`), or None: samples
    from other tools, whatever their json holds, record no digests."""
    try:
        check_digests(sample, _meta(sample), ["mp4"])
    except SampleSkipped as exc:
        return str(exc)
    return None


def _origin(key: str, meta: dict[str, Any]) -> str:
    """The source video a shard sample was cut from, as its input key: from its json (`meta`)
    `source`, else from its clip key `{input_key}_{start_ms}_{end_ms}`, else the key itself."""
    if isinstance(meta.get("source"), str) and meta["source"]:
        return input_key(meta["source"])
    match = CLIP_KEY.fullmatch(key)
    return match.group(1) if match else key


def _failed(job_id: str, source: str, reason: str, error: str) -> dict[str, Any]:
    return {"job_id": job_id, "source": source, "ref": "", "driving": "", "status": FAILED, "reason": reason,
            "error": clipped(error)}


def _unpack_shards(spec: DatasetSpec, folder: Path,
                   max_videos: int | None) -> list[tuple[str, str, str | None, bool] | dict[str, Any]]:
    """The first `max_videos` shard samples, each its clip written out as `<key>.source.mp4` (a key
    met again, in another shard, gets a hash of its shard; written again when a shard curated anew
    holds other bytes under the key) and
    given as (path, origin: the input key of its source video, its key: its jobs' name, whether
    portraitflow curated it: its json has a `format_version`); a sample
    without a clip, and a shard that cannot be read (from where it breaks), are failed rows
    instead, with a warning."""
    from portraitflow.operators.shard_source import read_shard

    entries: list[tuple[str, str, str | None, bool] | dict[str, Any]] = []
    seen: set[str] = set()
    for url in _shard_files(spec.path):
        if max_videos is not None and len(entries) >= max_videos:
            break
        try:  # one shard at a time, read as a file (never through gopen); its break raises, to be a row below
            for sample in read_shard(url, handler=lambda _: False):
                key = safe_stem(str(sample["__key__"]))
                if key in seen:  # shards not curated here may repeat keys: a later one is named by its shard
                    key = hashed_name(key, f"{url}#{sample['__key__']}")
                seen.add(key)
                if "mp4" not in sample:
                    log.warning("%s: sample %s has no mp4; skipped", url, key)
                    entries.append(_failed(key, url, "no_video", f"sample {key} of {url} has no mp4"))
                elif damage := _damage(sample):  # decoding a damaged mp4 can crash this process
                    log.warning("%s: sample %s skipped: %s", url, key, damage)
                    entries.append(_failed(key, url, "damaged_sample", damage))
                else:
                    target = folder / f"{key}.source.mp4"
                    if not target.is_file() or target.stat().st_size != len(sample["mp4"]) \
                            or target.read_bytes() != sample["mp4"]:  # read only where the sizes agree
                        atomic_write(target, sample["mp4"])
                    meta = _meta(sample)
                    entries.append((str(target), _origin(key, meta), key, "format_version" in meta))
                if max_videos is not None and len(entries) >= max_videos:
                    break
        except Exception as exc:  # noqa: BLE001 - a corrupt shard is any reading error; it is a row
            log.warning("%s: unreadable shard, skipped from where it breaks: %s", url, exc)
            entries.append(_failed(hashed_name(f"shard_{Path(url).stem}", url), url, "unreadable_shard",
                                   f"{type(exc).__name__}: {exc}"))
    return entries[:max_videos]


def _unique(jobs: list[dict[str, Any]], spec: DatasetSpec) -> list[dict[str, Any]]:
    """`jobs`, or ValueError when two share a job id: outputs, metrics and merges are keyed by it."""
    counts = Counter(job["job_id"] for job in jobs)
    twice = [job_id for job_id, count in counts.items() if count > 1]
    if twice:
        raise ValueError(f"{spec.path}: job id {twice[0]!r} names {counts[twice[0]]} jobs"
                         f"{f' (and {len(twice) - 1} more ids)' if len(twice) > 1 else ''}; job ids must be unique")
    return jobs


def dataset_jobs(spec: DatasetSpec, protocol: str, folder: str | Path, max_seconds: float | None = None,
              max_videos: int | None = None, exclude: str | Path | None = None) -> list[dict[str, Any]]:
    """Jobs (job_id, ref, driving, status, reason) ready for generation, with unique job ids (else
    ValueError); failed rows included. A folder dataset's globs skip `folder` (the prepared clips)
    and `exclude` (the sweep's output folder), wherever they lie."""
    skip = (Path(folder),) + ((Path(exclude),) if exclude is not None else ())
    return _unique(_dataset_jobs(spec, protocol, Path(folder), max_seconds, max_videos, skip), spec)


def check_dataset(spec: DatasetSpec, exclude: str | Path | None = None) -> None:
    """ValueError when the dataset names no video, since a sweep would run every config on none and
    finish: no file under a folder matching `include` (outside `exclude`, the sweep's output
    folder), no row in a jobs file (read as `dataset_jobs` reads it), no shard file. Only what
    listing tells: a shard without a sample is known when it is read."""
    if spec.type == "folder":
        try:
            os.listdir(spec.path)
        except OSError as exc:  # `rglob` finds nothing in it, and "matched no videos" would send one looking for files
            raise ValueError(f"dataset {spec.path!r} cannot be listed ({exc.strerror})") from None
        skip = (Path(exclude),) if exclude is not None else ()
        matched = _matches(Path(spec.path), spec.include, None, skip)  # one walk of the tree for both
        found = [p for p in matched if Path(p).suffix.lower() in VIDEO_SUFFIXES]
        why = f"no video file under it matches include {spec.include} (in any case)"
        others = [p for p in matched if Path(p).suffix.lower() not in VIDEO_SUFFIXES]
        if others:  # portraits `refs` reads are not news
            others = sorted(set(others) - set(_matches(Path(spec.path), spec.refs, IMAGE_SUFFIXES, skip)))
        if others:
            what = (f"{len(others)} files that are no video ({', '.join(Path(p).name for p in others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}): drivers are videos ({', '.join(sorted(VIDEO_SUFFIXES))}), "
                    "portraits are matched by `refs`")
            why += f"; it matches {what}"
            if found:
                log.warning("dataset %s: include %s matches %s; they are not read as drivers", spec.path,
                            spec.include, what)
        if unlisted := _unlisted_folders(spec.path):  # `rglob` passes over them without a word
            log.warning("dataset %s: %d folder(s) in it cannot be listed, so no video in them is read: %s", spec.path,
                        len(unlisted), "; ".join(unlisted[:3]) + ("; ..." if len(unlisted) > 3 else ""))
        if not found and skip and _matches(Path(spec.path), spec.include, VIDEO_SUFFIXES, ()):
            why = (f"every video file matching include {spec.include} lies in the output folder {exclude}, which is "
                   "never read as input: give another --out")
    elif spec.type == "jobs":
        found, why = load_jobs(spec.path), "the jobs file has no rows"
        _refuse_job_params(spec.path, found)
    else:
        found, why = _shard_files(spec.path), "no .tar shards there"
    if not found:
        raise ValueError(f"dataset {spec.path!r} matched no videos: {why}")


def _dataset_jobs(spec: DatasetSpec, protocol: str, folder: Path, max_seconds: float | None,
               max_videos: int | None, skip: tuple[Path, ...]) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    if spec.type == "jobs":
        return _jobs_file(Path(spec.path), folder, max_seconds, max_videos)
    videos = _matches(Path(spec.path), spec.include, VIDEO_SUFFIXES, skip) if spec.type == "folder" else []
    if spec.type == "shards":
        entries = _unpack_shards(spec, folder, max_videos)
    else:  # every file is a source video of its own
        entries = [(video, video, None, False) for video in videos[:max_videos]]
    clips, origins = [], []
    for entry in entries:
        clips.append(prepare_clip(entry[0], folder, max_seconds, name=entry[2], curated=entry[3])
                     if isinstance(entry, tuple) else entry)
        origins.append(entry[1] if isinstance(entry, tuple) else None)
    if protocol == "self":
        return clips
    portraits = [p for p in _matches(Path(spec.path), spec.refs, IMAGE_SUFFIXES, skip)
                 if p not in videos] if spec.type == "folder" else []  # a .gif both globs match is a driver
    if len(portraits) > len(clips):
        log.warning("%d of the %d portraits in %s are in no cross job: each clip is paired with one portrait, "
                    "and there are %d clips", len(portraits) - len(clips), len(portraits), spec.path, len(clips))
    if portraits:
        return [{**clip, "job_id": f"{clip['job_id']}-x{input_key(portrait)}", "ref": portrait}
                for clip, portrait in zip(clips, cycle(portraits))]
    if not any(clip["status"] == OK for clip in clips):  # no portraits, and no clip to take one from
        raise ValueError(f"cross-reenactment needs portraits matching {spec.refs} in {spec.path}")
    return _cross_first_frames(clips, origins)


def _cross_first_frames(clips: list[dict[str, Any]], origins: list[str | None]) -> list[dict[str, Any]]:
    """Cross jobs without portraits: each ok clip's reference is the first frame of the next ok
    clip (in order, wrapping round) cut from another source video, and its job id ends `-x` and that
    clip's name (not its place in the dataset, which a clip added before it shifts). A clip with no
    such partner (every other ok clip is from the same source) is a failed row, and a clip that
    failed stays failed; both end `-x`, no reference."""
    ok = [i for i, clip in enumerate(clips) if clip["status"] == OK]
    jobs = []
    for i, clip in enumerate(clips):
        job = {**clip, "job_id": f"{clip['job_id']}-x", "ref": ""}
        if clip["status"] == OK:
            j = ok.index(i)
            partner = next((k for k in ok[j + 1:] + ok[:j] if origins[k] != origins[i]), None)
            if partner is None:
                job.update(status=FAILED, reason=NO_PARTNER,
                           error="no clip of another source video to take the reference portrait from")
            else:
                job.update(job_id=f"{clip['job_id']}-x{clips[partner]['job_id']}", ref=clips[partner]["ref"])
        jobs.append(job)
    return jobs
