"""Probe and decode videos with decord, resampled to a target frame rate, in bounded chunks.

Frames are never held for a whole video: callers iterate chunks of at most `chunk_size` frames,
so memory depends on the chunk, not on the video's length.

Time is presentation time, as a player shows the video: frames an edit list hides (decord
reports them with negative times, or at or after the edit's end) are skipped, the timeline starts at
the first shown frame, and a variable-frame-rate video is resampled by its frames' timestamps, not
by its average rate. Frames come at the size a player shows: non-square pixels (anamorphic DV,
broadcast) are stretched to their shown width.
"""
from __future__ import annotations

import io
import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from portraitflow.operators.job_status import clipped

#: what the decoders open: a path, or a video in memory (a shard's clip)
Source = str | io.BytesIO


class VideoUnreadable(ValueError):
    """The input is not a decodable video (empty, truncated, audio only, zero frames, ...)."""


class TooFewFrames(VideoUnreadable):
    """Frames past the video's end were asked for: a fault of whoever counted its frames."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # shown frames per second of presentation time (the average rate of a VFR video)
    num_frames: int  # frames a player shows
    nominal_fps: float | None = None  # the stream's frame rate where it drops a few frames (`_nominal_rate`)

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def output_fps(self) -> float:
        """The rate a video made from this one is written at: a 29.97-fps capture that dropped a
        frame averages 29.6 fps, and a player shows it at 29.97 holding the frame before the gap."""
        return self.nominal_fps or self.fps


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive frames of the resampled timeline: positions and RGB pixels."""

    positions: np.ndarray  # (T,) indices in the resampled timeline (0 = first output frame)
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB


#: one `_ffmpeg_reason` at a time: it sets PyAV's process-wide log level and reads its last logged error
_FFMPEG_REASON_LOCK = threading.Lock()


def _ffmpeg_reason(source: Source) -> str | None:
    """Why FFmpeg cannot open `source`, as PyAV says it, with the demuxer's own complaint where it
    logged one: `Invalid data found when processing input (moov atom not found)` for a truncated
    mp4. None when it opens. PyAV keeps FFmpeg's log off by default; it is on, captured rather than
    printed, for this call only."""
    import av
    import av.logging

    if isinstance(source, io.BytesIO):
        source.seek(0)  # decord has read it
    with _FFMPEG_REASON_LOCK:
        level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture(), av.open(source):
                return None
        except av.FFmpegError as exc:
            logged = exc.log[2].strip() if exc.log else ""  # (level, component, message) of the last error
            return f"{exc.strerror} ({logged})" if logged else str(exc.strerror)
        finally:
            av.logging.set_level(level)


def _reader(path: Source, width: int = -1, height: int = -1):
    """A decord reader of a path or file object. Its failure is said with FFmpeg's reason
    (`_ffmpeg_reason`; decord's own message is "Error reading <input>..."), without the path, so
    that failures group by reason (a remote input's path is a temporary one)."""
    from decord import DECORDError, VideoReader, cpu

    try:
        reader = VideoReader(path, ctx=cpu(0), width=width, height=height, num_threads=1)
    except (DECORDError, RuntimeError) as exc:
        decord_text = str(exc).replace(path, "<input>") if isinstance(path, str) else str(exc)
        reason = _ffmpeg_reason(path) or decord_text.splitlines()[0]
        raise VideoUnreadable(f"cannot open the video: {clipped(reason, 200)}") from exc
    if len(reader) == 0:
        raise VideoUnreadable("the video has zero frames")
    return reader


def _timeline(reader, width: int = 0, height: int = 0, from_keyframe: bool = False,
              edit_end_s: float = math.inf) -> tuple[VideoInfo, np.ndarray, np.ndarray]:
    """(the shown frames' VideoInfo, their decord indices, their start times from the first one).

    Frames before the first with a non-negative time are hidden by an edit list, and so are those
    that start at or after its end, `edit_end_s` (`_edit_list_end`); with `from_keyframe`, so are
    those before the first keyframe (an MPEG-TS capture or cut starts mid-GOP: FFmpeg cannot decode
    them, and a player starts at the keyframe too). A container
    without usable timestamps (AVI and MPEG-PS, whose missing times decord reports as huge negative
    ones; times that repeat or run backwards: MPEG-TS segments joined end to end restart their
    clock, and decord, sorting frames by time, interleaves the segments) gets the uniform timeline
    of its declared average rate, in decoding order.
    """
    first = 0
    if from_keyframe:
        keys = reader.get_key_indices()
        first = int(keys[0]) if len(keys) else len(reader)
        if first >= len(reader):
            raise VideoUnreadable("the video has no keyframe to start decoding from")
    times = reader.get_frame_timestamp(np.arange(first, len(reader)))  # [n, 2]: start, end seconds
    starts = times[:, 0]
    if not (np.all(np.isfinite(times)) and np.all(np.abs(times) < 1e6) and np.all(np.diff(starts) > 0)):
        fps = _declared_rate(reader)
        count = len(reader) - first
        info = VideoInfo(width, height, _average_rate(count, count / fps), count)
        return info, np.arange(first, len(reader)), np.arange(count) / fps
    visible = np.flatnonzero((starts >= -1e-3) & (starts < edit_end_s - 1e-3))  # among the frames from `first`
    if len(visible) == 0:
        raise VideoUnreadable("the video shows no frames (all are hidden by its edit list)")
    shown = first + visible
    starts = starts[visible] - starts[visible[0]]
    last = float(times[visible[-1], 1] - times[visible[-1], 0])
    if last <= 0:  # MPEG-TS packets carry no duration: the last frame lasts as long as the others
        last = float(np.median(np.diff(starts))) if len(starts) > 1 else 1 / _declared_rate(reader)
    fps = _average_rate(len(shown), float(starts[-1] + last))
    return VideoInfo(width, height, fps, len(shown)), shown, starts


def _declared_rate(reader) -> float:
    fps = float(reader.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoUnreadable(f"the video declares an unusable frame rate ({fps})")
    return fps


@dataclass(frozen=True)
class _Stream:
    """A file's video stream as PyAV reads it before decoding. decord lists a TS file's frames and
    times but decodes none by index, so TS is decoded with PyAV (`_pyav_frames`)."""

    mpeg_ts: bool
    width: int  # coded, in stored pixels
    height: int
    sar: Fraction  # a stored pixel's width over its height: shown (width * sar) x height
    wide_colour: bool  # HDR or BT.2020 primaries (`_is_wide_colour`): decoded to SDR BT.709 by `_SdrRgb`
    interlaced: bool  # its fields are coded apart in time (broadcast, DV): woven, a moving edge combs
    guessed_rate: Fraction | None  # FFmpeg's guess at its frame rate (`av_guess_frame_rate`)
    tick_s: float  # its timestamps' unit: Matroska's and WebM's are whole milliseconds


#: FFmpeg's transfer characteristics of HDR: SMPTE ST 2084 (PQ: HDR10, HDR10+, Dolby Vision 8.1)
#: and ARIB STD-B67 (HLG: a phone's HDR video)
_TRC_HDR = frozenset({16, 18})
#: FFmpeg's BT.2020 colour primaries (HDR's, and a wide-gamut SDR master's)
_PRIMARIES_BT2020 = 9
#: FFmpeg's field orders of interlaced video (top or bottom field first, coded either way);
#: 0 is unknown, 1 progressive
_INTERLACED_FIELD_ORDERS = frozenset({2, 3, 4, 5})


def _is_empty(source: Source) -> bool:
    """Whether a path names a file of 0 bytes, or a file object holds none (a missing file is left
    to the decoders' own error)."""
    if isinstance(source, io.BytesIO):
        return source.getbuffer().nbytes == 0
    return os.path.isfile(source) and os.path.getsize(source) == 0


def _pyav_probe(source: Source) -> _Stream | None:
    """The first video stream of a path or file object, None if PyAV cannot open it (decord then
    says why). Raises VideoUnreadable with a reason that groups for the commonest bad inputs (empty,
    audio only, a still image)."""
    import av

    if _is_empty(source):
        raise VideoUnreadable("empty file (0 bytes)")
    try:
        with av.open(source) as container:
            formats = container.format.name.split(",")
            if not container.streams.video:
                raise VideoUnreadable("no video stream (audio only)" if container.streams.audio else "no video stream")
            if any(name == "image2" or name.endswith("_pipe") for name in formats):
                raise VideoUnreadable("a still image, not a video")
            stream = container.streams.best("video")
            codec = stream.codec_context
            return _Stream("mpegts" in formats, int(codec.width), int(codec.height), _pixel_aspect(stream),
                           _is_wide_colour(codec), codec.field_order in _INTERLACED_FIELD_ORDERS,
                           stream.guessed_rate, float(stream.time_base or 0))
    except av.FFmpegError:
        return None


def _is_wide_colour(coded) -> bool:
    """Whether a codec context's or a frame's colours are coded for HDR or BT.2020: read as if they
    were SDR BT.709 (as decord reads every video), they come out washed out and dark."""
    return coded.color_trc in _TRC_HDR or coded.color_primaries == _PRIMARIES_BT2020


def _pixel_aspect(stream) -> Fraction:
    """A PyAV video stream's stored pixel width over height, from the container or else the codec."""
    return Fraction(stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or 1)


def _display_size(source: Source) -> tuple[int, int]:
    """(width, height) a player shows the first frame at: turned upright (a phone video stored
    sideways) and, for non-square pixels (anamorphic DV, broadcast), stretched to its display
    width, kept even: what frames are decoded at when no size is asked, so a face keeps its shape
    and a stream whose picture size changes (joined captures) still stacks."""
    import av

    with av.open(source) as container:
        stream = container.streams.best("video")
        frame = next(container.decode(stream), None)
        sar = _pixel_aspect(stream)
    if frame is None:
        raise VideoUnreadable("FFmpeg decoded no frame of the video")
    width, height = frame.width, frame.height
    if sar != 1:
        width = max(2, round(width * sar / 2) * 2)
    return (height, width) if frame.rotation % 180 else (width, height)


#: how much of an mp4's end `_edit_list_end` reads: a copy cut's trailing packets are its last few
_EDIT_END_TAIL_S = 10.0


def _edit_list_end(path: str) -> float:
    """When an mp4 edit list stops showing frames, in seconds on decord's clock; inf if it shows all.

    A cut with `ffmpeg -c copy` keeps the packets its last frames are decoded with, often one shown
    after the cut (the P-frame its last B-frames are predicted from): decord lists it, FFmpeg does
    not show it. The mp4 demuxer marks the packets an edit list hides as discarded, so the packets
    of the last `_EDIT_END_TAIL_S` are read (none decoded: every decode of a clip asks, so reading
    a long file whole each time would cost more than its clips) and the end is the first hidden one
    after a shown one. Only the mp4 demuxer applies edit lists: other containers are not read.
    """
    import av

    try:
        with av.open(path) as container:
            if "mov" not in container.format.name.split(",") or not container.streams.video:
                return math.inf
            stream = container.streams.best("video")
            origin, tick = stream.start_time or 0, stream.time_base  # decord's clock starts at start_time
            tail = round(_EDIT_END_TAIL_S / tick)
            if stream.duration and stream.duration > tail:
                container.seek(origin + stream.duration - tail, stream=stream, backward=True)
            shown, hidden = [], []
            for packet in container.demux(stream):
                if packet.pts is not None:
                    (hidden if packet.is_discard else shown).append(packet.pts)
    except av.FFmpegError:
        return math.inf
    first = min(shown, default=math.inf)
    ends = [pts for pts in hidden if pts > first]  # not the leading frames it hides
    return float((min(ends) - origin) * tick) if ends else math.inf


def _decord_misshapes(width: int) -> bool:
    """Whether decord returns frames `width` pixels wide in a wrong shape: it takes a frame's
    channels to be its RGB row's length over its width, and FFmpeg aligns rows to the CPU's SIMD
    width (16, 32 or 64 bytes: 3-byte pixels pad a row to a multiple of 16, 32 or 64 pixels), so
    where the padded row is a whole multiple of the width (96 px padded to 128 reads as 4
    channels) every batch fails. Only widths under 192 px can."""
    return any(width % align and 3 * -(-width // align) * align % width == 0 for align in (16, 32, 64))


def probe_video(path: str) -> VideoInfo:
    """Shown size (`_display_size`), frame rate and frame count; raises VideoUnreadable for
    anything decord cannot use."""
    stream = _pyav_probe(path)
    reader = _reader(path)
    edit_end_s = _edit_list_end(path)
    if stream is None:
        height, width = reader[0].shape[:2]
        return _timeline(reader, int(width), int(height), edit_end_s=edit_end_s)[0]
    info = _timeline(reader, *_display_size(path), from_keyframe=stream.mpeg_ts, edit_end_s=edit_end_s)[0]
    if stream.guessed_rate and info.fps > BROKEN_TIMESTAMPS_RATIO * stream.guessed_rate:
        raise VideoUnreadable(f"its frames' timestamps are broken: {info.num_frames} frames in {info.duration_s:.3f} s "
                              f"({info.fps:g} fps, where its stream says {float(stream.guessed_rate):g})")
    nominal = _nominal_rate(info.fps, stream.guessed_rate, stream.tick_s / info.duration_s)
    return replace(info, nominal_fps=nominal)


#: how many times FFmpeg's guessed rate (which every timestamp of the stream can be written at) its
#: frames may average before their timestamps count as broken: a muxer that stamped 60 frames 0
#: read as 1800 fps where the stream says 30, an "ok" video of 33 ms
BROKEN_TIMESTAMPS_RATIO = 4


#: frames a stream may be short of its declared rate and still be taken at that rate: a capture
#: that dropped a few; fewer than that and its average is its rate (a phone's variable rate, a
#: 60-fps container of 30-fps frames), as re-timing it would make frames that are not there
DROPPED_FRAMES_AT_MOST = 0.05


def _nominal_rate(average: float, guessed: Fraction | None, rounding: float) -> float | None:
    """FFmpeg's guessed rate (snapped as `_snapped`) of a stream whose average rate differs from
    it, but is below it by at most DROPPED_FRAMES_AT_MOST or above it by at most `rounding` (its
    timestamps' rounding over its length: 2 s of 24-fps Matroska averages 24.012), else None (the
    average is its rate): the rate a player's clock runs at, which an output made from it keeps."""
    if guessed is None or guessed <= 0:
        return None
    nominal = _snapped(float(guessed))
    if abs(average - nominal) <= 1e-4 * nominal:
        return None
    return nominal if nominal * (1 - DROPPED_FRAMES_AT_MOST) <= average <= nominal * (1 + 1e-4 + 2 * rounding) else None


def _average_rate(frames: int, seconds: float) -> float:
    """Frames per second, `_snapped`: decord's timestamps are float32 and rounded, so a 25 fps
    video would otherwise read as 25.0000006."""
    return _snapped(frames / seconds)


def _snapped(rate: float) -> float:
    """`rate` snapped to the nominal integer or x/1001 rate within 0.01% (FFmpeg guesses 59.94-fps
    Matroska as 19001/317)."""
    for nominal in (Fraction(round(rate)), Fraction(round(rate * 1.001) * 1000, 1001)):
        if nominal and abs(rate - nominal) < 1e-4 * rate:
            return float(nominal)
    return rate


#: how far, in frames, a length may overshoot a whole count of frames and still give that count:
#: the 60 frames of 2 s at 29.97 fps, from a video that averages less, summed to 60.00001
COUNT_SLACK_FRAMES = 1e-2
#: decord's frame times are float32 seconds: a time this close to a frame's start (1 us, and two
#: float32 steps at its size: 0.9 ms an hour in) is taken as on it; any more would pick a frame
#: that starts after the time, which moved a shot cut of a 29.97-fps video resampled to 25 a frame early
FLOAT32_SLACK_S, FLOAT32_STEP = 1e-6, 2.4e-7
#: a container tick this share of a frame or more is the frame rate's own clock (AVI, MXF, Y4M: one
#: tick a frame), whose times are exact, not rounded: half of it as slack would pick the next frame
TICK_AT_MOST_FRAMES = 0.25


def resample_positions(info: VideoInfo, target_fps: float, start_s: float = 0.0, end_s: float | None = None,
                       frame_starts: np.ndarray | None = None, tick_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a `target_fps` timeline over [start_s, end_s) and the source frame (index among
    the shown frames) on screen at each.

    Each output time t picks the frame shown at t (the last one starting by t), which repeats frames
    when upsampling and skips them when downsampling, as a player would. `frame_starts` are the
    frames' start times; None means evenly spaced at `info.fps`. A time up to half a `tick_s` (the
    unit the container rounds times to, where that is a small part of a frame) before a frame's
    start is taken as on it: 29.97-fps Matroska, its times rounded to the millisecond, otherwise
    repeats a frame and skips the next about every sixth frame.
    """
    end_s = info.duration_s if end_s is None else min(end_s, info.duration_s)
    first = int(np.ceil(start_s * target_fps - COUNT_SLACK_FRAMES))
    last = int(np.ceil(end_s * target_fps - COUNT_SLACK_FRAMES))
    positions = np.arange(first, max(first, last))
    times = positions / target_fps
    if frame_starts is None:
        sources = np.floor(times * info.fps + 1e-6).astype(np.int64)
    else:
        rounded = tick_s / 2 if tick_s < TICK_AT_MOST_FRAMES / info.fps else 0.0  # a time rounded to its tick
        slack = FLOAT32_SLACK_S + FLOAT32_STEP * times + rounded
        sources = np.searchsorted(frame_starts, times + slack, side="right") - 1
    return positions, np.clip(sources, 0, info.num_frames - 1)


#: most bytes of full-resolution RGB frames a pass in order over a video decodes at once
#: (`frames_per_chunk` with `iter_frame_chunks(in_order=True)`): of 1080p 21 frames, of 4K 5.
#: Decoded so, with PyAV, the driving-motion extraction peaked 0.09-0.33 GB above its process's
#: start on drivers from 480x480 to 4K and 2 to 32 s long, the windows 0.11-0.32 GB; with decord,
#: which holds on to frames it decoded, a 2-s 4K driver peaked 3.0 GB, an 8-s one 7.2, and
#: curation's render of a 10-s 4K clip 15 GB.
FULL_RES_CHUNK_BYTES = 128 * 1024**2


def frames_per_chunk(most: int, width: int, height: int, budget: int) -> int:
    """How many RGB frames of `width` x `height` to decode at once: `most`, fewer where they would
    pass `budget` bytes (at least 1), so a caller's memory does not grow with the video's resolution
    (a 4K frame is 25 MB, a 1080p one 6.2 MB)."""
    return max(1, min(most, budget // max(1, width * height * 3)))


def iter_frame_chunks(
    path: str,
    target_fps: float,
    start_s: float = 0.0,
    end_s: float | None = None,
    chunk_size: int = 64,
    size: tuple[int, int] | None = None,
    in_order: bool = False,
) -> Iterator[FrameChunk]:
    """Yield the resampled frames of [start_s, end_s) in chunks of at most `chunk_size` frames.

    `size` = (width, height) lets decord scale while decoding, which is far cheaper than decoding
    at full resolution and resizing afterwards; without it, frames come at the size `probe_video`
    reports (non-square pixels stretched to their shown width). Interlaced video decoded at full
    size comes with its combed frames' fields blended (`blend_fields`), so a moving edge does not
    comb; scaled down, the decoder's resampling has mixed them already.

    `in_order` decodes with PyAV (the same pixels), in order from the keyframe before `start_s`,
    for a long pass over a whole video: decord (decord2 3.4) keeps hold of frames it has decoded,
    more the longer the video, so its memory is not bounded by the chunk. Peak RSS above the
    process's start of the driving-motion extraction, decord against PyAV on the same chunks: a
    22-s 1280x720 driver 1.39 GB against 0.17, a 20-s 1080x1920 one 2.9 GB against 0.24; decord
    reading a 32-s 4K video 2 frames at a time reached 9.9 GB (PyAV, 5 at a time: 0.44 GB).
    """
    stream = _pyav_probe(path)
    if size is None and stream is not None and stream.sar != 1:
        size = _display_size(path)
    width, height = size if size else (-1, -1)
    reader = _reader(path, width, height)
    mpeg_ts = stream is not None and stream.mpeg_ts
    info, shown, starts = _timeline(reader, from_keyframe=mpeg_ts, edit_end_s=_edit_list_end(path))
    positions, sources = resample_positions(info, target_fps, start_s, end_s, starts,
                                            tick_s=stream.tick_s if stream is not None else 0.0)
    # decord turns a rotated video upright: either coded side may become the width it decodes at
    widths = (size[0],) if size else (stream.width, stream.height) if stream else ()
    # PyAV where decord would seek hidden frames by coded position (returning wrong ones), cannot
    # decode TS by index, would return frames in a wrong shape or HDR colours as SDR ones; and where
    # asked to (`in_order`)
    if (shown[0] > 0 or mpeg_ts or any(_decord_misshapes(w) for w in widths)
            or (stream is not None and (in_order or stream.wide_colour))):
        seek_points = _seek_points(reader, shown)
        del reader
        frames = _pyav_frames(path, sources, size or _display_size(path), chunk_size, seek_points)
    else:
        frames = _decord_frames(reader, shown[sources], chunk_size)
    if stream is not None and stream.interlaced and not (size and min(size) < min(stream.width, stream.height)):
        frames = map(_deinterlaced, frames)  # scaled down, the decoder's resampling has mixed the fields
    for begin in range(0, len(positions), chunk_size):
        yield FrameChunk(positions=positions[begin:begin + chunk_size], frames=next(frames))


#: how much more a frame's rows stand out from their neighbours (the other field) than from the
#: rows two away (their own field) for it to count as combed. A progressive picture is smoother
#: from row to row than over two rows: 0.39-0.67 on 40 videos of the shared media; a woven
#: interlaced talking head read 1.05-3.63 (median 2.06)
COMB_RATIO = 1.0


def combed(frame: np.ndarray) -> bool:
    """Whether an (H, W, 3) uint8 frame shows two fields of different moments woven together. A
    stream's field order says how it was coded, not what it shows: progressive film is often coded
    interlaced, and a still interlaced scene does not comb."""
    grey = frame.mean(axis=2, dtype=np.float32)
    other_field = np.abs(grey[1:-1] - (grey[:-2] + grey[2:]) / 2).mean()
    own_field = np.abs(grey[2:-2] - (grey[:-4] + grey[4:]) / 2).mean()
    return bool(other_field > COMB_RATIO * own_field)


def blend_fields(frame: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 frame with each row averaged with its neighbours (1, 2, 1)/4: FFmpeg's
    linear-blend deinterlacer. Woven, the two fields of a moving face are shown 1/50 s apart on
    alternate rows (combing on the lips and hair, which the crops, the sharpness measure and the
    landmarks would take for detail); blended, each row holds both."""
    import cv2

    kernel = np.array([[0.25], [0.5], [0.25]], np.float32)
    return cv2.filter2D(frame, -1, kernel, borderType=cv2.BORDER_REPLICATE)


def _deinterlaced(chunk: np.ndarray) -> np.ndarray:
    """A chunk of interlaced video with its combed frames blended, one frame at a time, in place."""
    for index, frame in enumerate(chunk):
        if combed(frame):
            chunk[index] = blend_fields(frame)
    return chunk


def read_frames(source: str | bytes, indices: Sequence[int]) -> tuple[np.ndarray, int]:
    """(len(indices), H, W, 3) uint8 RGB of frames by decode index (any order, repeats allowed), and
    the video's frame count, of a file or an in-memory video (a shard's clip).

    decord seeks to the keyframe before the first wanted frame and decodes forward, so frames after
    the last wanted one are never decoded; a video decord would return in a wrong shape
    (`_decord_misshapes`: under 192 px wide) or in washed-out colours (HDR, BT.2020) is decoded
    with PyAV instead (`_pyav_frames`, which takes a file object as well as a path).
    """
    wanted, inverse = np.unique(np.asarray(indices, np.int64), return_inverse=True)
    reader = _reader(_openable(source))  # decord counts the frames of any width
    count = len(reader)
    if len(wanted) and wanted[-1] >= count:
        raise TooFewFrames(f"the video has {count} frames, frame {int(wanted[-1])} wanted")
    stream = _pyav_probe(_openable(source))
    if stream is not None and (stream.wide_colour or any(_decord_misshapes(side) for side in (stream.width, stream.height))):
        chunks = _pyav_frames(_openable(source), wanted, _display_size(_openable(source)), max(len(wanted), 1))
    else:
        chunks = _decord_frames(reader, wanted, max(len(wanted), 1))
    return next(chunks, np.empty((0, 0, 0, 3), np.uint8))[inverse], count


def _openable(source: str | bytes) -> Source:
    """A path as it is; bytes as a fresh file object (each reader consumes its own)."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _decord_frames(reader, sources: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    """Frames (T, H, W, 3) of decord indices `sources`, `chunk_size` at a time, each decoded once.
    No chunk is held past its yield: the caller's reference alone keeps it (and only a chunk that
    repeats or reorders frames is copied), so a chunk is not still alive while the next decodes."""
    for begin in range(0, len(sources), chunk_size):
        wanted = sources[begin:begin + chunk_size]
        unique, inverse = np.unique(wanted, return_inverse=True)
        try:
            decoded = reader.get_batch(unique.tolist()).asnumpy()
        except Exception as exc:  # decord's text on damaged packets mid-stream is its own source lines and codes
            raise VideoUnreadable(f"decoding failed near frame {int(unique[0])} of {len(reader)}: the decoder rejects "
                                  "the data there (damaged, or the file is cut short)") from exc
        if len(unique) != len(wanted) or np.any(unique != wanted):
            decoded = decoded[inverse]
        yield decoded
        del decoded


def _seek_points(reader, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the shown frames' start times from the first one, the indices among them of keyframes after
    the first): what `_pyav_frames` seeks by. None where times cannot tell frames apart (missing,
    repeated, out of order). decord counts keyframes in decoding order, which in a closed GOP is
    also their place among the shown frames; elsewhere the seek lands earlier, or is refused."""
    times = reader.get_frame_timestamp(shown)[:, 0].astype(np.float64)
    if len(times) < 2 or not (np.all(np.isfinite(times)) and np.all(np.abs(times) < 1e6)
                              and np.all(np.diff(times) > 0)):
        return None
    keys = np.searchsorted(shown, reader.get_key_indices())
    return times - times[0], np.unique(keys[(keys > 0) & (keys < len(shown))])


def _shown_index(seconds: float, starts: np.ndarray) -> int | None:
    """The shown frame starting `seconds` after the first, None if none starts within a quarter of
    its distance to its neighbours (decord's times are float32: exact equality is too strict)."""
    index = int(np.clip(np.searchsorted(starts, seconds), 1, len(starts) - 1))
    index -= int(seconds - starts[index - 1] < starts[index] - seconds)
    gap = np.diff(starts[max(index - 1, 0):index + 2]).min()
    return index if abs(starts[index] - seconds) < gap / 4 else None


#: how far before a keyframe a TS seek aims: FFmpeg finds a TS position by decoding times, and a
#: keyframe is decoded up to a few frames before it is shown (B-frames)
_TS_SEEK_LEAD_S = 0.5


def _numbered_frames(path: str, first: int,
                     seek_points: tuple[np.ndarray, np.ndarray] | None) -> Iterator[tuple[int, object]]:
    """PyAV's decoded frames, each with its index as an in-order decode counts them, from a
    keyframe at or before shown frame `first`.

    A frame is identified by its time after the in-order decode's first frame. The decode after a
    seek starts at its first keyframe (frames before it may be predicted from ones never decoded)
    and counts on from that keyframe's index; a seek that lands after frame `first`, or on a
    keyframe whose time is no shown frame's, is abandoned for a decode from the first packet.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.best("video")
        decoded = container.decode(stream)
        origin = next(decoded, None)
        if origin is None:
            return
        keys = seek_points[1][seek_points[1] <= first] if seek_points is not None else ()
        if origin.pts is None or not len(keys):
            yield 0, origin
            yield from enumerate(decoded, 1)
            return
        decoded.close()
        starts = seek_points[0]
        lead = _TS_SEEK_LEAD_S if "mpegts" in container.format.name.split(",") else 0.0
        target = origin.pts + round((starts[keys[-1]] - lead) / stream.time_base)
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            decoded = container.decode(stream)
            anchor = next((frame for frame in decoded if frame.key_frame), None)
        except av.FFmpegError:
            anchor = None
        if anchor is not None and anchor.pts is not None:
            index = _shown_index(float((anchor.pts - origin.pts) * stream.time_base), starts)
            if index is not None and index <= first:
                yield index, anchor
                yield from enumerate(decoded, index + 1)
                return
    with av.open(path) as container:
        yield from enumerate(container.decode(container.streams.best("video")))


#: swscale's colour management (FFmpeg 8, in PyAV 17's wheels on) to SDR BT.709. The relative colorimetric intent maps
#: HDR's reference white (203 cd/m², ITU-R BT.2408) to SDR white and clips what is brighter, as an
#: SDR camera would: skin and other diffuse surfaces look as in SDR. An SDR photo coded as PQ or as
#: HLG comes back within 1.4 of 255 levels on average (decoded as if SDR: 24 and 15 levels off, a
#: photo of a face; 32 and 19, the tests' saturated picture); the perceptual intent darkened its
#: midtones by a fifth, even with HDR10's mastering metadata.
_TO_SDR_BT709 = "out_transfer=bt709:out_primaries=bt709:intent=relative_colorimetric"


class _SdrRgb:
    """Decoded frames as RGB at a given size, as an SDR BT.709 screen shows them: HDR and BT.2020
    frames (`_is_wide_colour`) through a filter graph of swscale's colour management, one per
    picture and output size (a stream's picture size may change), the others as decord reads them."""

    def __init__(self) -> None:
        self._graphs: dict[tuple[int, int, str, int, int, int, int], object] = {}

    def __call__(self, frame, width: int, height: int) -> np.ndarray:
        if not _is_wide_colour(frame):
            return frame.to_ndarray(format="rgb24", width=width, height=height)
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range), width, height)
        if key not in self._graphs:
            self._graphs[key] = self._graph(frame, width, height)
        graph = self._graphs[key]
        graph.push(frame)
        return graph.pull().to_ndarray()

    @staticmethod
    def _graph(frame, width: int, height: int):
        import av

        graph = av.filter.Graph()
        try:
            # the YCbCr matrix and range as the frame's: unsaid, the first scale would drop them
            source = graph.add("buffer", video_size=f"{frame.width}x{frame.height}", pix_fmt=frame.format.name,
                               time_base="1/1", pixel_aspect="1/1", colorspace=str(int(frame.colorspace)),
                               range=str(int(frame.color_range)))
            chain = [source,
                     graph.add("scale", f"w={width}:h={height}"),  # resized first: colour managed, a 4K
                     graph.add("scale", _TO_SDR_BT709),             # frame took 267 ms, at 640x360 16
                     graph.add("format", "rgb24"), graph.add("buffersink")]
            for node, after in zip(chain, chain[1:]):
                node.link_to(after)
            graph.configure()
        except av.FFmpegError as exc:  # an FFmpeg before 8 has no colour management in swscale
            raise VideoUnreadable(f"HDR or BT.2020 video needs FFmpeg 8's colour conversion (PyAV >= 17): {exc}") from exc
        return graph


def _upright_rgb(frame, size: tuple[int, int], to_rgb: _SdrRgb) -> np.ndarray:
    """A PyAV frame as RGB (`to_rgb`), turned upright as its display matrix says (a phone video
    stored sideways), at `size` (width, height) upright: what decord returns for the same frame."""
    turns = frame.rotation // 90  # counter-clockwise quarter turns, negative for clockwise
    width, height = size
    if turns % 2:
        width, height = height, width
    rgb = to_rgb(frame, width, height)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns % 4 else rgb


def _pyav_frames(path: Source, sources: np.ndarray, size: tuple[int, int], chunk_size: int,
                 seek_points: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """The same as `_decord_frames` for a file decord cannot seek (an edit list hides leading
    frames; H.264 in MPEG-TS) or decode (`_decord_misshapes`), or that is read in order
    (`iter_frame_chunks(in_order=True)`), with PyAV: from the keyframe before the first wanted
    frame where `seek_points` allow (FFmpeg drops frames an edit list hides; `sources` index the
    shown ones). Every frame is scaled to `size` (upright width, height), so a stream whose picture
    size changes midway stacks. A stream that ends a frame or so before its timestamps said holds
    its last frame, as a player does. Each frame is written into its chunk as it is decoded, and no
    chunk is held past its yield."""
    import av

    wanted = deque(sources.tolist())
    to_rgb = _SdrRgb()
    chunk: np.ndarray | None = None  # sized for the frames it will hold: at most `chunk_size`, those left
    filled = 0
    last, index = None, -1

    def place(rgb: np.ndarray) -> Iterator[np.ndarray]:
        """`rgb` as the next wanted frame, in the chunk being filled; yields the chunk once full."""
        nonlocal chunk, filled
        if chunk is None:
            chunk, filled = np.empty((min(chunk_size, len(wanted)), *rgb.shape), np.uint8), 0
        chunk[filled] = rgb
        filled += 1
        wanted.popleft()
        if filled == len(chunk):
            full, chunk = chunk, None
            yield full

    with closing(_numbered_frames(path, wanted[0] if wanted else 0, seek_points)) as numbered:
        try:
            for index, last in numbered:
                if not wanted:
                    break
                if wanted[0] != index:
                    continue
                rgb = _upright_rgb(last, size, to_rgb)
                while wanted and wanted[0] == index:
                    yield from place(rgb)
                del rgb
        except av.FFmpegError as exc:
            raise VideoUnreadable(f"decoding failed near frame {index + 1}: {exc.strerror}") from exc  # str() names the file
        if wanted and last is None:
            raise VideoUnreadable("FFmpeg decoded no frame of the video")
        held = _upright_rgb(last, size, to_rgb) if wanted else None
    while wanted:  # the stream ended early: its last frame repeated
        yield from place(held)
