"""Probe and decode videos with decord, resampled to a target frame rate, in bounded chunks.

Frames are never held for a whole video: callers iterate chunks of at most `chunk_size` frames,
so memory depends on the chunk, not on the video's length.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


class VideoUnreadable(ValueError):
    """The input is not a decodable video (empty, truncated, audio only, zero frames, ...)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive frames of the resampled timeline: positions and RGB pixels."""

    positions: np.ndarray  # (T,) indices in the resampled timeline (0 = first output frame)
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB


def _reader(path: str, width: int = -1, height: int = -1):
    from decord import DECORDError, VideoReader, cpu

    try:
        reader = VideoReader(path, ctx=cpu(0), width=width, height=height, num_threads=1)
    except (DECORDError, RuntimeError) as exc:
        raise VideoUnreadable(f"decord cannot open the video: {str(exc).splitlines()[0][:200]}") from exc
    if len(reader) == 0:
        raise VideoUnreadable("the video has zero frames")
    return reader


def probe_video(path: str) -> VideoInfo:
    """Size, frame rate and frame count; raises VideoUnreadable for anything decord cannot use."""
    reader = _reader(path)
    height, width = reader[0].shape[:2]
    fps = float(reader.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoUnreadable(f"the video declares an unusable frame rate ({fps})")
    return VideoInfo(width=int(width), height=int(height), fps=fps, num_frames=len(reader))


def resample_positions(info: VideoInfo, target_fps: float, start_s: float = 0.0, end_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source frame indices and times of a `target_fps` timeline over [start_s, end_s).

    Each output time t picks the source frame shown at t (nearest earlier frame), which repeats
    frames when upsampling and skips them when downsampling, as a player would.
    """
    end_s = info.duration_s if end_s is None else min(end_s, info.duration_s)
    first = int(np.ceil(start_s * target_fps - 1e-6))
    last = int(np.ceil(end_s * target_fps - 1e-6))
    positions = np.arange(first, max(first, last))
    times = positions / target_fps
    sources = np.minimum(np.floor(times * info.fps + 1e-6).astype(np.int64), info.num_frames - 1)
    return positions, sources


def iter_frame_chunks(
    path: str,
    target_fps: float,
    start_s: float = 0.0,
    end_s: float | None = None,
    chunk_size: int = 64,
    size: tuple[int, int] | None = None,
) -> Iterator[FrameChunk]:
    """Yield the resampled frames of [start_s, end_s) in chunks of at most `chunk_size` frames.

    `size` = (width, height) lets decord scale while decoding, which is far cheaper than decoding
    at full resolution and resizing afterwards.
    """
    width, height = size if size else (-1, -1)
    reader = _reader(path, width, height)
    info = VideoInfo(width=0, height=0, fps=float(reader.get_avg_fps()), num_frames=len(reader))
    positions, sources = resample_positions(info, target_fps, start_s, end_s)
    for begin in range(0, len(positions), chunk_size):
        chunk_sources = sources[begin : begin + chunk_size]
        unique, inverse = np.unique(chunk_sources, return_inverse=True)
        try:
            decoded = reader.get_batch(unique.tolist()).asnumpy()
        except Exception as exc:  # decord raises bare errors on damaged packets mid-stream
            raise VideoUnreadable(f"decoding failed near frame {int(unique[0])}: {str(exc).splitlines()[0][:200]}") from exc
        yield FrameChunk(
            positions=positions[begin : begin + chunk_size],
            frames=decoded[inverse],
        )
