"""H.264 encoding with PyAV, optionally muxing another file's audio, written atomically.

Frames stream in as chunks; the audio is encoded alongside up to the current video time so the
two streams interleave, and it is cut at the video's end so the output never outlasts its frames.
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from portraitflow.operators.atomic import atomic_target

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

#: Sample rates the AAC encoder accepts; another source rate is resampled to 48 kHz.
AAC_SAMPLE_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350})


def played_audio(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    """The audio stream a player plays: the one marked default (a dub's original and its
    translations are often all there), else the first."""
    import av

    tracks = container.streams.audio
    return next((s for s in tracks if s.disposition & av.stream.Disposition.default), tracks[0])


#: AAC's own channel configurations (1-6, 8 in its AudioSpecificConfig), by channel count: any
#: other layout (the 5.1(side) of decoded AC-3, quad, 2.1, 16 channels, "N channels" with no
#: order) is written as configuration 0 with a program config element, which many hardware and
#: browser decoders refuse; it is remixed to the one of its channel count (FFmpeg's remix matrix)
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "7.1", 8: "7.1"}
#: the sample format audio is handled in before the encoder: packed, as PyAV 18 miscounts the
#: planes of planar 8-channel frames and reads past their data
_WORK_FORMAT = "flt"
#: a jump this long in the source audio's timestamps is a hole (dropped audio, joined segments):
#: it is filled with silence, so what follows keeps its time
AUDIO_GAP_S = 0.01


def aac_layout(channels: int) -> str:
    """The AAC channel configuration a source of `channels` channels is written in (stereo where
    the stream does not say, as a probe may leave it 0)."""
    return AAC_LAYOUTS.get(channels, "7.1" if channels > 8 else "stereo")


class AudioUnreadable(ValueError):
    """The audio of a file whose video is used cannot be decoded without crashing the process."""


#: decodes the first frame of a file's stream (argv: path, stream index), in a child process
#: (`check_audio_decodes`)
_DECODE_AUDIO = """
import sys, av
with av.open(sys.argv[1]) as container:
    for frame in container.decode(container.streams[int(sys.argv[2])]):
        frame.layout.name
        break
"""
#: seconds the child may take to decode one audio frame
_DECODE_CHECK_TIMEOUT_S = 120


def check_audio_decodes(container: av.container.InputContainer, source: str | Path) -> None:
    """AudioUnreadable when decoding the audio track `source` plays (`container`, open on it) would
    abort the process: PyAV 17-18 frees a custom-ordered channel layout twice (6.1 and 7.1 PCM in
    MOV, whose `chan` atom orders the channels), a `double free` that took each worker it met with
    it, so a job was retried and quarantined with no reason. Tried in a child process for files of
    the MOV family (where that atom is; 0.2 s), once per file version in a process; only the child's
    death by a signal counts (an ordinary decoding error is the writer's own to raise)."""
    if not container.format.name.startswith("mov"):
        return
    stat = os.stat(source)
    _check_in_child(os.path.abspath(source), played_audio(container).index, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _check_in_child(path: str, track: int, size: int, mtime_ns: int) -> None:
    """`check_audio_decodes` of one version of a file (`size` and `mtime_ns` key the cache)."""
    try:
        done = subprocess.run([sys.executable, "-c", _DECODE_AUDIO, path, str(track)], capture_output=True,
                              timeout=_DECODE_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AudioUnreadable(f"{Path(path).name}: decoding one frame of its audio took over "
                              f"{_DECODE_CHECK_TIMEOUT_S} s") from None
    if done.returncode < 0:  # killed by a signal: SIGABRT from glibc's double-free check, SIGSEGV
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"signal {-done.returncode}"]
        raise AudioUnreadable(f"{Path(path).name}: its audio crashes the decoder (PyAV: {tail[0]}); a 6.1 or 7.1 "
                              "PCM track in a MOV does: re-mux it, e.g. `ffmpeg -i IN -c:v copy -c:a aac OUT.mp4`")


class _AudioSource:
    """The played audio stream of a file from `start_s` on the video's clock, decoded lazily,
    converted to the output's rate and layout, and re-encoded up to a given time.

    Time follows the source's timestamps, counted from the file's first shown video frame, as
    `decode` counts: the lead-in before `start_s` is dropped, and a late start or a hole in the
    audio is filled with silence, so everything after stays in sync.
    """

    def __init__(self, container, stream, start_s: float) -> None:
        """`start_s` on the file's clock (`open` adds the first shown video frame's time)."""
        self.container = container
        self.stream = stream
        self.start_s = start_s
        self.rate = stream.rate if stream.rate in AAC_SAMPLE_RATES else 48000
        self.layout = aac_layout(stream.codec_context.channels)
        _name_unordered_channels(stream)
        if self.start_s > 0:
            container.seek(int(self.start_s / stream.time_base), stream=stream)  # lands at or before start_s
        self._frames = self._from_start(container.decode(stream))
        self._pending = None
        self._samples_out = 0

    @classmethod
    def open(cls, source: str | Path, start_s: float = 0.0) -> "_AudioSource | None":
        import av

        try:
            container = av.open(str(source))
        except av.FFmpegError:
            return None
        if not container.streams.audio:
            container.close()
            return None
        stream = played_audio(container)
        from_s = _first_video_time(container) + start_s  # on the file's clock
        if stream.duration is not None and stream.start_time is not None:  # as the container states them
            ends_s = float((stream.start_time + stream.duration) * stream.time_base)
            if ends_s <= from_s:  # the track would be silence only
                log.warning("%s: its audio ends before the video's first frame%s: the output gets no audio track",
                            source, f" (+{start_s:g} s)" if start_s else "")
                container.close()
                return None
        try:
            check_audio_decodes(container, source)
        except AudioUnreadable:
            container.close()
            raise
        return cls(container, stream, from_s)

    def _from_start(self, frames):
        """Frames from `start_s` on in the output's rate, layout and `_WORK_FORMAT`: the lead-in
        before `start_s` dropped, silence wherever the source's timestamps leave time unfilled.

        `played` is where the audio handed on so far ends on the source's clock (its own samples,
        not its frames' times), so holes shorter than AUDIO_GAP_S add up until they are filled,
        and audio that overlaps what was played is cut, rather than the drift adding up."""
        played = self.start_s
        drop = 0  # output samples still to drop: a lead-in before start_s, or an overlap
        resampler = None
        for frame in frames:
            duration = frame.samples / frame.sample_rate
            at = played if frame.time is None else float(frame.time)
            if at + duration <= played:
                continue  # before start_s, or played already
            gap = at - played
            if gap > AUDIO_GAP_S:  # a late start, or a hole: silence up to this frame
                if resampler is not None:  # what the resampler holds comes before the hole
                    drop = yield from self._dropping(resampler.resample(None), drop)
                    resampler = None
                yield from self._silence_for(gap)
                played = at
            elif gap < -AUDIO_GAP_S or at < self.start_s:  # an overlap, or the lead-in (cut to the sample)
                drop += round(-gap * self.rate)
                played = at
            if resampler is None:
                resampler = self._resampler()
            frame.pts = None  # contiguous from here: times are checked above, not by the resampler
            for converted in resampler.resample(frame):
                drop = yield from self._dropping([converted], drop)
            played += duration
        if resampler is not None:
            yield from self._dropping(resampler.resample(None), drop)

    @staticmethod
    def _dropping(frames, drop: int):
        """Yield `frames` less their first `drop` samples; returns how many were not dropped yet."""
        for frame in frames:
            if drop >= frame.samples:
                drop -= frame.samples
                continue
            yield _slice_samples(frame, drop, frame.samples) if drop else frame
            drop = 0
        return drop

    def _resampler(self):
        import av

        return av.AudioResampler(format=_WORK_FORMAT, layout=self.layout, rate=self.rate)

    def _silence_for(self, seconds: float):
        """`seconds` of silence in frames of at most a second: a timestamp that jumps an hour ahead
        is not an hour of samples at once (`mux_until` stops taking them at the video's end)."""
        import av

        channels = len(av.AudioLayout(self.layout).channels)
        left = round(seconds * self.rate)
        while left > 0:
            samples = min(left, self.rate)
            silent = av.AudioFrame.from_ndarray(np.zeros((1, samples * channels), np.float32),
                                                format=_WORK_FORMAT, layout=self.layout)
            silent.sample_rate = self.rate
            yield silent
            left -= samples

    def mux_until(self, out, out_stream, until_s: float, final: bool = False, pad: bool = False) -> None:
        """Encode the source frames that end by `until_s` (the video written so far).

        A frame that straddles `until_s` waits for more video, unless `final` (`until_s` is the
        video's end): then it is cut to its samples before `until_s` and the rest dropped, so
        the audio never outlasts the video. Audio that ends before the video is filled with
        silence to its end when `final` and `pad`; else the track's length says how much of the
        video has sound (`audio_seconds`).
        """
        while True:
            frame = self._pending or next(self._frames, None)
            self._pending = None
            if frame is None:
                if final and pad and (short := round(until_s * self.rate) - self._samples_out) > 0:
                    self._frames, pad = self._silence_for(short / self.rate), False
                    continue
                return
            keep = round(until_s * frame.sample_rate) - self._samples_out
            if keep <= 0 or (keep < frame.samples and not final):
                self._pending = frame
                return
            if keep < frame.samples:
                frame = _slice_samples(frame, 0, keep)
            # explicit timestamps from 0, so the muxer's edit list hides the encoder's priming delay
            frame.pts, frame.time_base = self._samples_out, Fraction(1, frame.sample_rate)
            self._samples_out += frame.samples
            out.mux(out_stream.encode(frame))

    def close(self) -> None:
        self.container.close()


def _first_video_time(container) -> float:
    """When the first shown video frame starts on the file's clock (0 without video)."""
    if not container.streams.video:
        return 0.0
    try:
        frame = next(container.decode(container.streams.best("video")), None)
    finally:
        container.seek(0)
    return float(frame.time) if frame is not None and frame.time is not None else 0.0


#: a standard order for channels that have none, by count: AAC's own where it has one for the count
_DEFAULT_LAYOUTS = {**AAC_LAYOUTS, 7: "6.1", 16: "hexadecagonal"}


def _name_unordered_channels(stream) -> None:
    """Give a stream whose channels have no declared order ("2 channels": MXF and AVI PCM, split
    mono tracks) a standard order for its count, before it decodes: the resampler remixes
    only named channels, and the AAC encoder refuses unnamed ones."""
    context = stream.codec_context
    if context.layout.name.endswith("channels") and context.channels in _DEFAULT_LAYOUTS:
        context.layout = _DEFAULT_LAYOUTS[context.channels]


def _slice_samples(frame, start: int, stop: int):
    """A copy of a packed (`_WORK_FORMAT`) audio frame with only its samples [start, stop)."""
    import av

    channels = len(frame.layout.channels)
    trimmed = av.AudioFrame.from_ndarray(np.ascontiguousarray(frame.to_ndarray()[:, start * channels:stop * channels]),
                                         format=frame.format.name, layout=frame.layout.name)
    trimmed.sample_rate = frame.sample_rate
    return trimmed


def audio_seconds(path: str | Path) -> float:
    """Seconds of audio in an mp4 `write_h264` wrote (its track's duration as the container states
    it, the encoder's priming left out), 0.0 for none: a source whose audio stops early gives a
    clip that is partly silent, which its sample says (`audio_s`)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0.0
        stream = played_audio(container)
        return float((stream.duration or 0) * stream.time_base)


def has_audio(path: str | Path) -> bool:
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except av.FFmpegError:
        return False


#: bitexact: no library version strings in the file, so the bytes depend on the frames and settings
#: only, not on which FFmpeg build (PyAV's or decord's) a worker loaded first
MUX_OPTIONS = {"fflags": "+bitexact"}
#: the index (moov) moved before the frames once they are written, so a browser plays the file while
#: it downloads instead of fetching its end first
FASTSTART = {"movflags": "+faststart"}
#: x264's speed/size trade-off for every output (its own default is "medium"); the quality is set by the CRF
X264_PRESET = "veryfast"

#: AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic SMPTE 170M (BT.601, 525 lines)
#: and AVColorRange MPEG (limited)
_SMPTE170M, _LIMITED_RANGE = 6, 1


def _tag_bt601(context) -> None:
    """Say in the stream what the RGB -> YUV conversion (swscale's default matrix, BT.601) wrote:
    untagged, players assume BT.709 for HD sizes and shift the colours of large outputs."""
    context.colorspace = context.color_primaries = context.color_trc = _SMPTE170M
    context.color_range = _LIMITED_RANGE


def _first_frame_size(chunks: Iterable[np.ndarray]) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
    """(height, width) of the first frame, and every chunk again from the first non-empty one;
    ValueError when there is no frame."""
    chunks = iter(chunks)
    first = next((chunk for chunk in chunks if len(chunk)), None)
    if first is None:
        raise ValueError("no frames to encode")
    size = first[0].shape[:2]
    held = [first]  # handed on, then let go: a chunk of 2048-px frames is 300 MB
    del first

    def every_chunk() -> Iterator[np.ndarray]:
        yield held.pop()
        yield from chunks
    return size, every_chunk()


def _add_video_stream(out, rate: Fraction, width: int, height: int, crf: int, keyframe_interval: int | None,
                      threads: int):
    """The H.264 stream, yuv420p at the even size at most `width` x `height`, tagged BT.601."""
    video = out.add_stream("libx264", rate=rate)
    video.height, video.width = height - height % 2, width - width % 2
    video.pix_fmt = "yuv420p"
    _tag_bt601(video.codec_context)
    video.options = {"crf": str(crf), "preset": X264_PRESET}
    if threads:
        video.codec_context.thread_count = threads
    if keyframe_interval:
        video.options |= {"g": str(keyframe_interval), "keyint_min": str(keyframe_interval)}
    return video


def _add_audio_stream(out, audio: _AudioSource):
    """The AAC stream that `audio` is encoded into, keeping its rate, layout and language."""
    import av

    stream = out.add_stream("aac", rate=audio.rate)
    stream.layout = audio.layout
    stream.codec_context.flags |= int(av.codec.context.Flags.bitexact)  # no encoder version string
    if audio.stream.metadata.get("language"):  # which dub track this is, for a dubbing team
        stream.metadata["language"] = audio.stream.metadata["language"]
    return stream


def write_h264(
    path: str | Path,
    chunks: Iterable[np.ndarray],
    fps: float,
    audio_from: str | Path | None = None,
    audio_start_s: float = 0.0,
    crf: int = 18,
    keyframe_interval: int | None = None,
    threads: int = 0,
    faststart: bool = True,
    pad_audio: bool = False,
) -> int:
    """Encode (T, H, W, 3) uint8 RGB chunks to an mp4 at `path`; returns the number of frames.

    `audio_from`'s first audio stream, from `audio_start_s` on (a clip cut out of a longer video),
    is muxed alongside and cut at the video's end, and with `pad_audio` filled with silence to it
    where it ends first (a finished video's tracks last alike); a source without audio gives an
    output without audio.

    `keyframe_interval` (frames) bounds how far a reader must decode to reach any frame: training
    loaders that seek into windows want it near the window length; None keeps x264's default.
    `threads` caps the encoder's threads (0: x264 picks about 1.5 per core, which oversubscribes a
    node where every CPU already runs its own task).

    The file appears only when complete (temp file + rename), so a crash never leaves a
    half-written output that a resume would mistake for a finished one; its index comes first
    (`FASTSTART`) unless `faststart` is off (the index last, as a camera writes it: a copy cut
    short loses it).
    """
    import av

    audio = _AudioSource.open(audio_from, audio_start_s) if audio_from else None
    frames_written = 0
    try:
        (height, width), chunks = _first_frame_size(chunks)
        with atomic_target(path) as tmp, av.open(tmp, mode="w", format="mp4",
                                                  options={**MUX_OPTIONS, **(FASTSTART if faststart else {})}) as out:
            rate = Fraction(fps).limit_denominator(1001)
            # video first: stream 0, where players, editors and `ffmpeg -map 0:0` look for it
            video = _add_video_stream(out, rate, width, height, crf, keyframe_interval, threads)
            out_audio = _add_audio_stream(out, audio) if audio is not None else None
            for chunk in chunks:
                for rgb in chunk:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: video.height, : video.width]), format="rgb24")
                    frame.pts = frames_written
                    frame.time_base = Fraction(1) / rate
                    out.mux(video.encode(frame))
                    frames_written += 1
                if out_audio is not None:
                    audio.mux_until(out, out_audio, frames_written / float(rate))
            out.mux(video.encode())
            if out_audio is not None:
                audio.mux_until(out, out_audio, frames_written / float(rate), final=True, pad=pad_audio)
                out.mux(out_audio.encode())
    finally:
        if audio is not None:
            audio.close()
    return frames_written
