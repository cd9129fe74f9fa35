"""Evaluation datasets to generation jobs: a folder, a jobs file, or curated WebDataset shards.

Self-reenactment jobs use a clip's first frame as the reference and the clip as both driver and
ground truth; clips are cut to `max_seconds` first (re-encoded with their audio), and the
reference is taken from the cut clip so reference and ground truth share every pixel. Cross
jobs pair each driving video with a portrait of someone else. Prepared files have names derived
from the input, so a rerun finds them and does not redo them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portraitflow.operators.atomic import atomic_target, atomic_write
from portraitflow.operators.inputs import input_key
from portraitflow.operators.paths import safe_stem

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class DatasetSpec(BaseModel):
    """The `dataset:` block of a sweep file."""

    model_config = ConfigDict(extra="forbid")

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


def prepare_clip(source: str, folder: Path, max_seconds: float | None, reference: bool = True) -> dict[str, Any]:
    """Cut the clip (when asked) and extract its first frame as the reference (unless the job has
    its own); a row with status and reason."""
    from portraitflow.operators.decode import VideoUnreadable, iter_frame_chunks, probe_video
    from portraitflow.operators.video_writer import write_h264

    key = input_key(source)
    clip, ref = folder / f"{key}.mp4", folder / f"{key}.ref.png"
    row = {"job_id": key, "source": source, "ref": str(ref), "driving": str(clip), "status": "ok", "reason": None}
    try:
        if not clip.is_file():
            fps = probe_video(source).fps
            frames = (chunk.frames for chunk in iter_frame_chunks(source, fps, end_s=max_seconds))
            write_h264(clip, frames, fps, audio_from=source)
        if reference and not ref.is_file():
            first = next(iter_frame_chunks(str(clip), probe_video(str(clip)).fps, chunk_size=1))
            _save_png(first.frames[0], ref)
    except (VideoUnreadable, ValueError, OSError) as exc:
        return {**row, "status": "failed", "reason": "unreadable", "error": str(exc)[:300]}
    return row


def _matches(folder: Path, patterns: list[str], suffixes: set[str]) -> list[str]:
    found = {p for pattern in patterns for p in folder.rglob(pattern) if p.suffix.lower() in suffixes}
    return sorted(str(p) for p in found)


def _jobs_file(path: Path, folder: Path, max_seconds: float | None, max_videos: int | None) -> list[dict[str, Any]]:
    """A jobs file read as `animate` reads it (relative paths from the file's folder, `job_id`
    optional, ids unique: a repeated `job_id` refuses the file, derived ids that collide get a
    hash); each driving video is cut to `max_seconds` like a folder's clips, with its job's own
    portrait as the reference."""
    from portraitflow.operators.generation_jobs import load_jobs as read_jobs_file

    jobs = read_jobs_file(path)[:max_videos]
    with_params = [job.job_id for job in jobs if job.params]
    if with_params:
        raise ValueError(f"{path}: per-job params ({', '.join(with_params[:3])}) are for `animate`; "
                         "in a sweep, its configs set them")
    return [{**prepare_clip(job.driving, folder, max_seconds, reference=False),
             "job_id": safe_stem(job.job_id), "ref": job.ref} for job in jobs]


def _shard_urls(path: str) -> list[str]:
    """A curated output folder (its `shards/`), a folder of tars, or a glob of tars."""
    import glob

    from portraitflow.operators.shards import shard_paths

    source = Path(path)
    if (source / "shards").is_dir():
        return [str(p) for p in shard_paths(source / "shards")]
    if source.is_dir():
        return sorted(str(p) for p in source.glob("*.tar"))
    return sorted(glob.glob(path))


def _unpack_shards(spec: DatasetSpec, folder: Path) -> list[str]:
    """Each shard sample's clip written out as `<key>.source.mp4`; returns their paths."""
    import webdataset as wds

    urls = _shard_urls(spec.path)
    if not urls:
        raise ValueError(f"no .tar shards at {spec.path}")
    paths = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        if "mp4" not in sample:
            continue
        target = folder / f"{safe_stem(sample['__key__'])}.source.mp4"
        if not target.is_file():
            atomic_write(target, sample["mp4"])
        paths.append(str(target))
    return paths


def _unique(jobs: list[dict[str, Any]], spec: DatasetSpec) -> list[dict[str, Any]]:
    """`jobs`, or ValueError when two share a job id: outputs, metrics and merges are keyed by it."""
    counts = Counter(job["job_id"] for job in jobs)
    twice = [job_id for job_id, count in counts.items() if count > 1]
    if twice:
        raise ValueError(f"{spec.path}: job id {twice[0]!r} names {counts[twice[0]]} jobs"
                         f"{f' (and {len(twice) - 1} more ids)' if len(twice) > 1 else ''}; job ids must be unique")
    return jobs


def load_jobs(spec: DatasetSpec, protocol: str, folder: str | Path, max_seconds: float | None = None,
              max_videos: int | None = None) -> list[dict[str, Any]]:
    """Jobs (job_id, ref, driving, status, reason) ready for generation, with unique job ids (else
    ValueError); failed rows included."""
    return _unique(_load_jobs(spec, protocol, Path(folder), max_seconds, max_videos), spec)


def _load_jobs(spec: DatasetSpec, protocol: str, folder: Path, max_seconds: float | None,
               max_videos: int | None) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    if spec.type == "jobs":
        return _jobs_file(Path(spec.path), folder, max_seconds, max_videos)
    if spec.type == "shards":
        videos = _unpack_shards(spec, folder)
    else:
        videos = _matches(Path(spec.path), spec.include, VIDEO_SUFFIXES)
    clips = [prepare_clip(video, folder, max_seconds) for video in videos[:max_videos]]
    if protocol == "self":
        return clips
    portraits = _matches(Path(spec.path), spec.refs, IMAGE_SUFFIXES) if spec.type == "folder" else []
    if not portraits:  # shards: the first frame of the next clip is someone else's portrait
        portraits = [c["ref"] for c in clips[1:] + clips[:1] if c["status"] == "ok"]
    if not portraits:
        raise ValueError(f"cross-reenactment needs portraits matching {spec.refs} in {spec.path}")
    return [{**clip, "job_id": f"{clip['job_id']}-x{i % len(portraits)}", "ref": portraits[i % len(portraits)]}
            for i, clip in enumerate(clips)]
