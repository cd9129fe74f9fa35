"""Decoding in chunks with resampling, and H.264 encoding with the driver's audio."""
from __future__ import annotations

import contextlib
import re
import shutil
import struct
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from portraitflow.operators.decode import (VideoInfo, VideoUnreadable, iter_frame_chunks, probe_video, read_frames,
                                          resample_positions)
from portraitflow.operators.video_writer import has_audio, write_h264


def _gradient_clip(n: int, size: int = 64) -> np.ndarray:
    """Frames whose mean brightness encodes their index, so resampling can be checked."""
    return np.stack([np.full((size, size, 3), 10 + 8 * i, np.uint8) for i in range(n)])


def test_resample_positions_pick_the_frame_on_screen() -> None:
    info = VideoInfo(width=8, height=8, fps=30.0, num_frames=90)
    positions, sources = resample_positions(info, 25.0)
    assert len(positions) == 75
    assert sources[0] == 0 and sources[-1] == 88
    assert np.all(np.diff(sources) >= 1)
    positions, sources = resample_positions(info, 25.0, start_s=1.0, end_s=2.0)
    assert positions[0] == 25 and len(positions) == 25 and sources[0] == 30


@pytest.mark.parametrize(("rate", "tick"), [(30000 / 1001, 1e-3), (24.0, 1e-3), (25.0, 1 / 25), (30000 / 1001, 1001 / 30000)])
def test_each_frame_is_picked_once_at_its_own_rate_whatever_the_containers_clock(rate: float, tick: float) -> None:
    """Times rounded to a millisecond tick (Matroska) land up to half a tick late: taken as on their
    frame. A tick of one frame (AVI, MXF) is the rate's own clock, exact: half of it as slack had
    picked frame k+1 for frame k where float32 times sit a hair early."""
    exact = np.arange(300) / rate
    starts = (np.round(exact / tick) * tick).astype(np.float32)  # as the container stores them, as decord reads them
    info = VideoInfo(64, 64, rate, 300)
    positions, sources = resample_positions(info, rate, frame_starts=starts.astype(np.float64), tick_s=tick)
    assert len(positions) == 300 and sources.tolist() == list(range(300))


def test_round_trip_chunks_and_resampling(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    assert write_h264(path, [_gradient_clip(12), _gradient_clip(12)[::-1]], fps=12) == 24
    info = probe_video(str(path))
    assert (info.width, info.height, info.num_frames) == (64, 64, 24)
    assert info.fps == pytest.approx(12, abs=0.01)
    chunks = list(iter_frame_chunks(str(path), target_fps=24, chunk_size=10))
    assert [len(c.positions) for c in chunks] == [10, 10, 10, 10, 8]
    means = np.concatenate([c.frames.reshape(len(c.frames), -1).mean(1) for c in chunks])
    assert np.allclose(means[0::2], means[1::2], atol=1)  # upsampling repeats each frame
    assert abs(means[2] - (10 + 8)) < 3


def _mpeg_ts(mp4: Path, ts: Path, skip_packets: int = 0) -> Path:
    """`mp4`'s video stream copied into MPEG-TS, less its first `skip_packets` (a capture cut mid-GOP)."""
    with av.open(str(mp4)) as src, av.open(str(ts), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for index, packet in enumerate(src.demux(src.streams.video[0])):
            if packet.dts is not None and index >= skip_packets:
                packet.stream = out
                dst.mux(packet)
    return ts


def test_h264_in_mpeg_ts_decodes_as_its_mp4(tmp_path: Path) -> None:
    """decord lists an MPEG-TS file's frames but cannot decode them by index: it is read with PyAV,
    from its first keyframe (a cut or capture starts mid-GOP; the frames before it cannot be decoded)."""
    import decord

    from bad_media import synthetic_video

    mp4 = tmp_path / "source.mp4"
    with av.open(str(mp4), "w") as container:  # frame i has brightness 6 i; a keyframe every 10 frames
        stream = container.add_stream("libx264", rate=25, options={"g": "10", "keyint_min": "10", "sc_threshold": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 6 * index, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    whole, cut = _mpeg_ts(mp4, tmp_path / "talk.ts"), _mpeg_ts(mp4, tmp_path / "cut.ts", skip_packets=3)
    one_gop = _mpeg_ts(synthetic_video(tmp_path / "one_gop.mp4", frames=30), tmp_path / "one_gop.ts")
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(one_gop), num_threads=1)[0]  # what made every such input fail
    assert probe_video(str(one_gop)) == probe_video(str(tmp_path / "one_gop.mp4"))
    assert np.array_equal(*(np.concatenate([c.frames for c in iter_frame_chunks(str(tmp_path / name), 25)])
                            for name in ("one_gop.mp4", "one_gop.ts")))
    assert probe_video(str(whole)) == probe_video(str(mp4))
    frames = {p.stem: np.concatenate([c.frames for c in iter_frame_chunks(str(p), 25, chunk_size=8)])
              for p in (mp4, whole, cut)}
    assert frames["source"].shape == (40, 48, 64, 3) and np.array_equal(frames["talk"], frames["source"])
    assert probe_video(str(cut)).num_frames == 30  # from the keyframe of frame 10 on
    assert np.array_equal(frames["cut"], frames["source"][10:])
    scaled = np.concatenate([c.frames for c in iter_frame_chunks(str(whole), 25, chunk_size=8, size=(32, 24))])
    assert scaled.shape == (40, 24, 32, 3)


def _gop_clip(path: Path, count: int, keyint: int, size: tuple[int, int] = (64, 48)) -> Path:
    """`count` frames at 25 fps, a keyframe every `keyint` (B-frames between), each frame told
    apart by its brightness and a noisy strip."""
    width, height = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"g": str(keyint), "keyint_min": str(keyint),
                                                            "sc_threshold": "0"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for k in range(count):
            image = np.full((height, width, 3), (5 * k) % 256, np.uint8)
            image[:, :width // 4] = rng.integers(0, 255, (height, width // 4, 3))
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
    return path


def _edit_list_hiding(mp4: Path, out: Path, frames: int) -> Path:
    """`mp4`'s packets `frames` (at 25 fps) earlier: the mp4 muxer writes an edit list that hides them."""
    with av.open(str(mp4)) as src, av.open(str(out), "w", format="mp4") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        shift = round(Fraction(frames, 25) / src.streams.video[0].time_base)
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream
                dst.mux(packet)
    return out


@pytest.fixture
def decode_starts(monkeypatch) -> list[int]:
    """The index of the first frame each PyAV decode starts at (0: from the first packet)."""
    from portraitflow.operators import decode

    starts, numbered = [], decode._numbered_frames

    def recorded(*args):
        frames = numbered(*args)
        for index, frame in frames:
            starts.append(index)
            yield index, frame
            yield from frames

    monkeypatch.setattr(decode, "_numbered_frames", recorded)
    return starts


def test_a_clip_of_a_ts_or_edit_listed_file_is_decoded_from_its_keyframe(tmp_path: Path, decode_starts) -> None:
    """PyAV seeks to the keyframe before a clip, not decoding the file from its start, and returns the
    frames an in-order decode of the whole file does, wherever the clip starts (a keyframe, the frame
    before one, mid-GOP, the last frames), for a TS (also one cut mid-GOP) and an edit-listed mp4."""
    mp4 = _gop_clip(tmp_path / "source.mp4", 130, keyint=12)
    files = [_mpeg_ts(mp4, tmp_path / "talk.ts"), _mpeg_ts(mp4, tmp_path / "cut.ts", skip_packets=5),
             _edit_list_hiding(mp4, tmp_path / "edited.mp4", frames=5)]
    for path in files:
        with av.open(str(path)) as container:
            whole = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert probe_video(str(path)).num_frames == len(whole) == {"talk.ts": 130, "cut.ts": 118, "edited.mp4": 125}[path.name]
        for first in (0, 3, 36, 47, 71, len(whole) - 9, len(whole) - 1):
            decode_starts.clear()
            frames = np.concatenate([c.frames for c in iter_frame_chunks(str(path), 25, first / 25, (first + 9) / 25,
                                                                         chunk_size=4)])
            assert np.array_equal(frames, whole[first:first + 9]), (path.name, first)
            assert decode_starts[0] <= first and (first < 24 or decode_starts[0] > 0), (path.name, first)


def test_a_seek_that_lands_after_the_clip_falls_back_to_decoding_in_order(tmp_path: Path, decode_starts,
                                                                         monkeypatch) -> None:
    """FFmpeg seeks a TS by decoding times, and a keyframe is decoded before it is shown: aimed at the
    keyframe's own time, the seek lands past it and decoding starts at the next keyframe, after the
    clip. The frames come from a decode from the first packet instead."""
    from portraitflow.operators import decode

    monkeypatch.setattr(decode, "_TS_SEEK_LEAD_S", 0.0)
    ts = _mpeg_ts(_gop_clip(tmp_path / "source.mp4", 60, keyint=12), tmp_path / "talk.ts")
    with av.open(str(ts)) as container:
        whole = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    frames = np.concatenate([c.frames for c in iter_frame_chunks(str(ts), 25, 30 / 25, 40 / 25)])
    assert np.array_equal(frames, whole[30:40]) and decode_starts == [0]


def test_widths_decord_reads_in_a_wrong_shape_are_decoded_with_pyav(tmp_path: Path) -> None:
    """decord takes RGB rows that FFmpeg padded to a whole multiple of the width (24 px to 32 or 64; 96
    to 128 and 144 to 192 on an AVX-512 machine) as extra channels, and then fails every batch: such
    widths, of the video or of the size asked for, are decoded with PyAV, at the true size."""
    import decord

    square, wide = _gop_clip(tmp_path / "square.mp4", 30, 12, (96, 96)), _gop_clip(tmp_path / "wide.mp4", 30, 12, (160, 128))
    with pytest.raises(decord.DECORDError):  # rows of 24 px are padded to 32 or 64 whatever the CPU
        decord.VideoReader(str(wide), width=24, height=16, num_threads=1).get_batch([0])
    for path, size in ((square, None), (wide, (144, 96)), (wide, (24, 16))):
        with av.open(str(path)) as container:
            width, height = size or (96, 96)
            whole = np.stack([f.to_ndarray(format="rgb24", width=width, height=height)
                              for f in container.decode(video=0)])
        frames = np.concatenate([c.frames for c in iter_frame_chunks(str(path), 25, 0.4, size=size, chunk_size=7)])
        assert frames.shape == (20, height, width, 3) and np.array_equal(frames, whole[10:])
    assert probe_video(str(square)) == VideoInfo(96, 96, 25.0, 30)


@pytest.mark.parametrize("size", [(96, 96), (64, 48)])
def test_read_frames_picks_frames_by_index_from_a_file_or_memory_at_any_width(tmp_path: Path,
                                                                              size: tuple[int, int]) -> None:
    """The training loader reads a shard's clip from memory and the preview strip an output file:
    96 px is a width decord returns in a wrong shape (PyAV decodes it), 64 px one it reads."""
    path = _gop_clip(tmp_path / "clip.mp4", 30, 12, size)
    with av.open(str(path)) as container:
        whole = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    for source in (str(path), path.read_bytes()):
        frames, count = read_frames(source, [17, 3, 17, 29])
        assert count == 30 and np.array_equal(frames, whole[[17, 3, 17, 29]])
        with pytest.raises(VideoUnreadable, match="30 frames, frame 30 wanted"):
            read_frames(source, [2, 30])
    with pytest.raises(VideoUnreadable):
        read_frames(path.read_bytes()[:2000], [0])


def test_unreadable_inputs_raise_the_documented_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    for path in (empty, junk):
        with pytest.raises(VideoUnreadable):
            probe_video(str(path))


def test_an_unopenable_video_says_ffmpegs_reason_without_its_path(tmp_path: Path) -> None:
    """decord's own message was `Error reading <input>...`; a recording cut short lacks its index
    (moov), which a camera writes last."""
    from bad_media import truncated

    cut_short = truncated(tmp_path / "cut short.mp4", 0.5)
    text = tmp_path / "notes.mp4"
    text.write_text("meeting notes, not a video\n")
    readers = {"path": lambda path: probe_video(str(path)),
               "chunks": lambda path: next(iter_frame_chunks(str(path), 25.0)),
               "memory": lambda path: read_frames(path.read_bytes(), [0])}  # a shard's clip
    reasons = {}
    for path in (cut_short, text):
        for form, read in readers.items():
            with pytest.raises(VideoUnreadable) as raised:
                read(path)
            reasons[path.name, form] = str(raised.value)
    invalid = "cannot open the video: Invalid data found when processing input"
    assert {reasons["cut short.mp4", form] for form in ("path", "chunks", "memory")} == {
        f"{invalid} (moov atom not found)"}, reasons
    assert {reasons["notes.mp4", form] for form in ("path", "chunks")} == {f"{invalid} (moov atom not found)"}
    assert reasons["notes.mp4", "memory"] == invalid  # no name: FFmpeg tries no demuxer in particular


def test_the_index_of_an_output_comes_before_its_frames(tmp_path: Path) -> None:
    """faststart: a browser plays the file while it downloads, not after fetching its end; off, the
    index comes last, as a camera writes it (the samples' cut copy loses it)."""
    def boxes(faststart: bool) -> list[str]:
        path = tmp_path / f"out{faststart}.mp4"
        write_h264(path, [_gradient_clip(10)], fps=25, faststart=faststart)
        data, found, offset = path.read_bytes(), [], 0
        while offset < len(data):
            size, kind = struct.unpack(">I4s", data[offset:offset + 8])
            found.append(kind.decode())
            offset += size
        assert offset == len(data)
        return found

    first, last = boxes(True), boxes(False)
    assert first.index("moov") < first.index("mdat") and last.index("moov") > last.index("mdat"), (first, last)


def test_audio_of_the_driver_is_muxed_and_cut_to_the_video(media_dir: Path, media_manifest, tmp_path: Path) -> None:
    with_audio = media_manifest[(media_manifest.has_audio == 1) & (media_manifest.kind == "talking_video")]
    driver = media_dir / with_audio.iloc[0].file
    info = probe_video(str(driver))
    frames = [c.frames for c in iter_frame_chunks(str(driver), 25.0, end_s=2.0, size=(128, 128))]
    out = tmp_path / "dubbed.mp4"
    written = write_h264(out, frames, fps=25.0, audio_from=driver)
    assert written == 50 and info.duration_s > 2.0
    assert has_audio(out)
    import av

    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert container.streams.video[0].frames == 50
        assert float(audio.duration * audio.time_base) == pytest.approx(2.0, abs=0.1)


def test_written_bytes_carry_no_library_versions(tmp_path: Path) -> None:
    """Same frames, same bytes, whichever FFmpeg build the process loaded (workers differ)."""
    frames = [np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)]
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    write_h264(first, frames, 25)
    write_h264(second, frames, 25)
    assert first.read_bytes() == second.read_bytes()
    assert b"Lavf" not in first.read_bytes()


def test_outputs_say_which_colour_matrix_they_were_encoded_with(tmp_path: Path) -> None:
    """Pure red encodes to BT.601's Y 81 (BT.709's would be 63); the stream says BT.601 limited range,
    so players that assume BT.709 for untagged HD video show the colours as written."""
    red = np.zeros((1, 720, 1280, 3), np.uint8)
    red[..., 0] = 255
    write_h264(tmp_path / "red.mp4", [red], 25)
    with av.open(str(tmp_path / "red.mp4")) as container:
        context = container.streams.video[0].codec_context
        assert (context.colorspace, context.color_primaries, context.color_trc, context.color_range) == (6, 6, 6, 1)
        frame = next(container.decode(video=0))
        assert abs(int(frame.to_ndarray(format="yuv420p")[360, 640]) - 81) <= 1


def test_keyframe_interval_bounds_the_distance_between_keyframes(tmp_path: Path) -> None:
    import av

    path = tmp_path / "gop.mp4"
    write_h264(path, [np.random.default_rng(0).integers(0, 255, (60, 64, 64, 3), dtype=np.uint8)], fps=25,
               keyframe_interval=10)
    with av.open(str(path)) as container:
        keyframes = [i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame]
    assert keyframes[0] == 0 and len(keyframes) >= 6
    assert max(np.diff(keyframes + [60])) <= 10


def test_outputs_get_the_permissions_of_an_ordinary_file(tmp_path: Path) -> None:
    """Not mkstemp's 0600: other users and services (a web server, a trainer) can read outputs."""
    import os
    import stat

    from portraitflow.operators.atomic import atomic_write

    umask = os.umask(0)
    os.umask(umask)
    video, note = tmp_path / "out.mp4", tmp_path / "note.json"
    write_h264(video, [_gradient_clip(4)], fps=4)
    atomic_write(note, "{}")
    for path in (video, note):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def _tone_after(path: Path, silent_s: float, total_s: float, rate: int = 16000) -> None:
    """A `total_s` video with a mono track: silence for `silent_s`, then a loud 440 Hz tone."""
    t = np.arange(int(total_s * rate)) / rate
    samples = np.where(t >= silent_s, 0.8 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
        for _ in range(int(total_s * 25)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        out.mux(video.encode(None))


def test_a_clip_gets_the_audio_of_its_own_time_range(tmp_path: Path) -> None:
    source, clip = tmp_path / "source.mp4", tmp_path / "clip.mp4"
    _tone_after(source, silent_s=1.2, total_s=2.0)
    write_h264(clip, [_gradient_clip(25)], fps=25.0, audio_from=source, audio_start_s=1.0)  # 1.0 s .. 2.0 s
    with av.open(str(clip)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        rate = stream.rate
    assert len(samples) / rate == pytest.approx(1.0, abs=0.1)  # cut at the source's frame (1024 samples) granularity
    loud = np.flatnonzero(np.abs(samples) > 0.3)[0] / rate
    assert loud == pytest.approx(0.2, abs=0.005), "the tone starts 0.2 s into the clip, as at 1.2 s in the source"


def test_audio_that_would_crash_the_decoder_fails_the_write_not_the_process(tmp_path: Path, monkeypatch) -> None:
    """A 6.1 or 7.1 PCM track in a MOV makes PyAV 18 free its channel layout twice: the worker
    writing an output with it aborted (`double free`) on every attempt, and its job was quarantined
    with no reason. Decoding is tried in a child process first (here one that aborts as PyAV does)."""
    from portraitflow.operators import video_writer

    source, out = tmp_path / "talk.mov", tmp_path / "out.mp4"
    _tone_after(source, silent_s=0.0, total_s=1.0)  # an mp4's bytes under a .mov name: the same demuxer
    monkeypatch.setattr(video_writer, "_DECODE_AUDIO", "import os; os.abort()")
    video_writer._check_in_child.cache_clear()
    with pytest.raises(video_writer.AudioUnreadable, match=r"talk.mov: its audio crashes the decoder .* re-mux it"):
        write_h264(out, [_gradient_clip(25)], fps=25.0, audio_from=source)
    assert not out.exists()
    monkeypatch.setattr(video_writer, "_DECODE_AUDIO", "raise SystemExit(1)")  # an error, no crash: the writer's
    video_writer._check_in_child.cache_clear()
    write_h264(out, [_gradient_clip(25)], fps=25.0, audio_from=source)
    assert has_audio(out)
    video_writer._check_in_child.cache_clear()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command to write a MOV chan atom")
def test_a_71_pcm_mov_is_refused_by_its_decoding_check(tmp_path: Path) -> None:
    """The real case, where an `ffmpeg` command can write it (PyAV writes no `chan` atom)."""
    import subprocess

    from portraitflow.operators import video_writer

    source, out = tmp_path / "talk71.mov", tmp_path / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-f", "lavfi", "-i",
                    "anullsrc=channel_layout=7.1:sample_rate=48000", "-t", "0.4", "-c:v", "libx264", "-c:a",
                    "pcm_s16le", str(source)], check=True)
    try:
        with av.open(str(source)) as container:
            video_writer.check_audio_decodes(container, source)
    except video_writer.AudioUnreadable:
        return  # PyAV 17-18: refused before this process decodes it
    write_h264(out, [_gradient_clip(10)], fps=25.0, audio_from=source)  # a PyAV without the bug: written
    assert has_audio(out)


def test_audio_that_ends_before_the_video_starts_gives_no_track(tmp_path: Path, caplog) -> None:
    """Its whole track was silence padding, and results said `has_audio` True (review s24)."""
    import logging

    source, out = tmp_path / "late.mp4", tmp_path / "out.mp4"
    with av.open(str(source), "w", format="mp4") as container:  # audio 0-0.5 s, video 1-2 s
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.full((1, 8000), 0.5, np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, 0, Fraction(1, 16000)
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
        for index in range(25):
            picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            picture.pts, picture.time_base = 25 + index, Fraction(1, 25)
            container.mux(video.encode(picture))
        container.mux(video.encode(None))
    with caplog.at_level(logging.WARNING):
        write_h264(out, [_gradient_clip(25)], fps=25.0, audio_from=source, pad_audio=True)
    assert not has_audio(out) and "its audio ends before the video's first frame" in caplog.text


def _audio_and_video_end_s(path: Path) -> tuple[float, float, float, int]:
    """(audio stream duration, video stream duration, end of the last audio packet, audio rate):
    durations as the container states them, the packet end from the packets' own timestamps."""
    with av.open(str(path)) as container:
        audio, video = container.streams.audio[0], container.streams.video[0]
        audio_s = float(audio.duration * audio.time_base)
        video_s = float(video.duration * video.time_base)
        packet_end = max(p.pts + p.duration for p in container.demux(audio) if p.size)
        return audio_s, video_s, float(packet_end * audio.time_base), audio.rate


@pytest.mark.parametrize("fps,num_frames,start_s", [(25.0, 25, 0.0), (30000 / 1001, 29, 0.5), (24.0, 19, 0.3)])
def test_the_audio_never_outlasts_the_video(tmp_path: Path, fps: float, num_frames: int, start_s: float) -> None:
    # Video ends that fall inside a 1024-sample source frame: the frame is cut at the video's end.
    source, clip = tmp_path / "source.mp4", tmp_path / "clip.mp4"
    _tone_after(source, silent_s=0.0, total_s=3.0, rate=44100)
    write_h264(clip, [_gradient_clip(num_frames)], fps=fps, audio_from=source, audio_start_s=start_s)
    audio_s, video_s, packet_end_s, rate = _audio_and_video_end_s(clip)
    assert video_s == pytest.approx(num_frames / fps, abs=1e-6)
    assert audio_s <= video_s + 1 / rate
    assert audio_s >= video_s - 0.002  # mp4 edit lists count whole milliseconds
    assert packet_end_s == pytest.approx(video_s, abs=1 / rate)


def test_the_drivers_audio_never_outlasts_the_video(media_dir: Path, media_manifest, tmp_path: Path) -> None:
    with_audio = media_manifest[(media_manifest.has_audio == 1) & (media_manifest.kind == "talking_video")]
    driver = str(media_dir / with_audio.iloc[0].file)
    fps = probe_video(driver).fps
    frames = [c.frames for c in iter_frame_chunks(driver, fps, start_s=0.5, end_s=0.5 + 37 / fps, size=(128, 128))]
    out = tmp_path / "dubbed.mp4"
    written = write_h264(out, frames, fps=fps, audio_from=driver, audio_start_s=0.5)
    audio_s, video_s, packet_end_s, rate = _audio_and_video_end_s(out)
    assert written == 37
    assert audio_s <= video_s + 1 / rate
    assert packet_end_s == pytest.approx(video_s, abs=1 / rate)


def _flash_and_click(path: Path, video_start_s: float, audio_start_s: float, event_s: float = 1.5,
                     audio_rate: int = 16000, audio_codec: str = "aac") -> None:
    """A 3 s clip whose video stream starts at `video_start_s` and audio at `audio_start_s` (file
    clock), with a white frame and a click both at `event_s`: what a player shows in sync."""
    with av.open(str(path), "w", format="mov" if audio_codec.startswith("pcm") else "mp4") as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        audio = out.add_stream(audio_codec, rate=audio_rate)
        audio.layout = "mono"
        for k in range(round((3.0 - video_start_s) * 25)):
            at = video_start_s + k / 25
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 255 if abs(at - event_s) < 0.02 else 40, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = round(at * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = np.zeros(round((3.0 - audio_start_s) * audio_rate), np.float32)
        click = round((event_s - audio_start_s) * audio_rate)
        samples[click:click + audio_rate // 100] = 0.9
        if audio_codec.startswith("pcm"):
            frame = av.AudioFrame.from_ndarray((samples[None] * 2**14).astype(np.int16), format="s16", layout="mono")
        else:
            frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
        frame.sample_rate, frame.time_base = audio_rate, Fraction(1, audio_rate)
        frame.pts = round(audio_start_s * audio_rate)
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))


def _flash_and_click_times(path: Path) -> tuple[float, float]:
    with av.open(str(path)) as container:
        brightness = [(f.time, f.to_ndarray(format="rgb24").mean()) for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        rate = container.streams.audio[0].rate
    return max(brightness, key=lambda tb: tb[1])[0], np.flatnonzero(np.abs(samples) > 0.3)[0] / rate


@pytest.mark.parametrize(("video_start_s", "audio_start_s"), [(0.5, 0.0), (0.1, 0.4), (0.3, 0.3)])
def test_the_output_keeps_the_source_in_sync_whatever_its_streams_start_times(
        tmp_path: Path, video_start_s: float, audio_start_s: float) -> None:
    """Time counts from the first shown video frame, for the frames (decode) and the audio (writer):
    a lead-in of audio before the video is dropped, audio that starts later is preceded by silence."""
    source, output = tmp_path / "source.mp4", tmp_path / "out.mp4"
    _flash_and_click(source, video_start_s, audio_start_s)
    frames = [c.frames for c in iter_frame_chunks(str(source), 25.0)]
    write_h264(output, frames, fps=25.0, audio_from=source)
    flash, click = _flash_and_click_times(output)
    assert flash == pytest.approx(1.5 - video_start_s, abs=0.021)
    assert click == pytest.approx(flash, abs=0.01)
    clip = tmp_path / "clip.mp4"  # a clip cut from 0.6 s on the video's timeline (frame 15)
    write_h264(clip, [c.frames for c in iter_frame_chunks(str(source), 25.0, start_s=0.6)],
               fps=25.0, audio_from=source, audio_start_s=0.6)
    flash, click = _flash_and_click_times(clip)
    assert flash == pytest.approx(1.5 - video_start_s - 0.6, abs=0.021) and click == pytest.approx(flash, abs=0.01)


@pytest.mark.parametrize("rate", [192000, 37800])
def test_audio_at_a_rate_aac_cannot_encode_is_resampled(tmp_path: Path, rate: int) -> None:
    source, output = tmp_path / "source.mov", tmp_path / "out.mp4"
    _flash_and_click(source, 0.1, 0.0, audio_rate=rate, audio_codec="pcm_s16le")
    write_h264(output, [c.frames for c in iter_frame_chunks(str(source), 25.0)], fps=25.0, audio_from=source)
    with av.open(str(output)) as container:
        assert container.streams.audio[0].rate == 48000
    flash, click = _flash_and_click_times(output)
    assert click == pytest.approx(flash, abs=0.01)


def _noise_track(path: Path, layout: str, seconds: float = 1.0, rate: int = 48000, codec: str = "aac",
                 hole: tuple[float, float] | None = None, container: str = "mp4",
                 delay: Callable[[int], float] = lambda block: 0.0) -> np.ndarray:
    """A `seconds` video with an audio track in `layout` (each channel its own noise), without the
    audio frames that would start inside `hole` (their timestamps jump it, as dropped audio leaves),
    the k-th 1024-sample frame stamped `delay(k)` seconds late; returns the first channel as written."""
    channels = len(av.AudioLayout(layout).channels)
    noise = np.random.default_rng(channels).uniform(-0.5, 0.5, (round(seconds * rate), channels)).astype(np.float32)
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = out.add_stream(codec, rate=rate)
        audio.layout = layout
        for start in range(0, len(noise), 1024):
            if hole and hole[0] <= start / rate < hole[1]:
                continue
            block = noise[start:start + 1024]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.reshape(1, -1)), format="flt", layout=layout)
            frame.sample_rate, frame.time_base = rate, Fraction(1, rate)
            frame.pts = start + round(delay(start // 1024) * rate)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
        for _ in range(round(seconds * 25)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        out.mux(video.encode(None))
    return noise[:, 0]


def _aac_channel_configuration(path: Path) -> int:
    """The channelConfiguration of an mp4's AAC track (0: a program config element names them)."""
    with av.open(str(path)) as container:
        extradata = container.streams.audio[0].codec_context.extradata
    return (int.from_bytes(extradata[:2], "big") >> 3) & 15


@pytest.mark.parametrize(("layout", "written", "configuration"), [
    ("7.1", "7.1", 7), ("5.1(side)", "5.1", 6), ("quad", "4.0", 4), ("2.1", "3.0", 3), ("mono", "mono", 1)])
def test_any_channel_layout_is_written_in_an_aac_configuration_of_its_own(
        tmp_path: Path, layout: str, written: str, configuration: int) -> None:
    """A 7.1 track crashed the worker (PyAV reads past the planes of planar 8-channel frames); AC-3's
    5.1(side), quad and 2.1 were written as configuration 0, which many decoders refuse."""
    source, output = tmp_path / "source.mp4", tmp_path / "out.mp4"
    _noise_track(source, layout)
    write_h264(output, [_gradient_clip(25)], fps=25.0, audio_from=source)
    with av.open(str(output)) as container:
        assert container.streams.audio[0].layout.name == written
    assert _aac_channel_configuration(output) == configuration
    assert b"Lavc" not in output.read_bytes()  # no AAC encoder version string (x264 writes its own in the video)


def test_pcm_channels_with_no_declared_order_are_written_as_stereo(tmp_path: Path) -> None:
    """MXF and AVI PCM declare "2 channels" with no order: the AAC encoder refused them, and the job
    failed with `avcodec_open2("aac", ...) returned 22`."""
    source, output = tmp_path / "source.avi", tmp_path / "out.mp4"
    _noise_track(source, "stereo", codec="pcm_s16le", container="avi")
    with av.open(str(source)) as container:
        assert container.streams.audio[0].layout.name == "2 channels"  # as FFmpeg reads AVI's PCM
    write_h264(output, [_gradient_clip(25)], fps=25.0, audio_from=source)
    with av.open(str(output)) as container:
        assert container.streams.audio[0].layout.name == "stereo"


def test_a_hole_in_the_audio_is_silence_and_what_follows_keeps_its_time(tmp_path: Path) -> None:
    """Audio samples were joined end to end: after a 0.4-s hole everything ran 0.4 s early."""
    source, output = tmp_path / "source.mkv", tmp_path / "out.mp4"
    written = _noise_track(source, "mono", seconds=2.0, hole=(0.8, 1.2), container="matroska")
    write_h264(output, [_gradient_clip(25), _gradient_clip(25)], fps=25.0, audio_from=source)
    with av.open(str(output)) as container:
        played = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    hole = slice(round(0.83 * 48000), round(1.17 * 48000))
    assert np.abs(played[hole]).max() < 0.01
    at, length = round(1.4 * 48000), round(0.4 * 48000)
    lags = range(-round(0.5 * 48000), round(0.1 * 48000))  # it ran 0.4 s early
    match = [np.dot(played[at:at + length], written[at + lag:at + lag + length]) for lag in lags]
    assert abs(lags[int(np.argmax(match))]) <= 48  # Matroska's times are whole milliseconds


@contextlib.contextmanager
def _memory_limit(extra: int):
    """Address space capped at `extra` bytes above what the process maps now (MemoryError past it)."""
    import resource

    mapped = sum(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("VmSize:"))
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


def _lag_samples(played: np.ndarray, written: np.ndarray, at_s: float, rate: int = 48000) -> int:
    """How many samples late `played` holds `written`'s 0.2 s from `at_s` on (negative: early)."""
    at, length = round(at_s * rate), round(0.2 * rate)
    lags = range(-round(0.3 * rate), round(0.3 * rate))
    return lags[int(np.argmax([np.dot(played[at:at + length], written[at - lag:at - lag + length]) for lag in lags]))]


def test_holes_too_short_to_fill_one_by_one_add_up_and_are_filled(tmp_path: Path) -> None:
    """A capture that loses 5 ms between audio frames: each hole was under the 10-ms bar and ignored,
    so after 2 s the audio ran 0.45 s early. Where the audio handed on has got to is counted by its
    samples, so the holes add up until they are filled."""
    source, output = tmp_path / "source.mkv", tmp_path / "out.mp4"
    written = _noise_track(source, "mono", seconds=2.0, container="matroska", delay=lambda block: 0.005 * block)
    write_h264(output, [_gradient_clip(25), _gradient_clip(25)], fps=25.0, audio_from=source)
    with av.open(str(output)) as container:
        played = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    stretch = 1 + 0.005 * 48000 / 1024  # block k is stamped 5 ms x k late: t seconds of audio play at t x stretch
    late = 1.0 - 1.0 / stretch  # what plays 1 s in was written 0.19 s earlier
    # holes wait until they pass AUDIO_GAP_S (10 ms) to be filled: within that, and a window's worth of them
    assert abs(_lag_samples(played, written, 1.0) - late * 48000) <= 0.025 * 48000  # it ran 0.19 s early


def test_a_timestamp_an_hour_ahead_gives_silence_only_up_to_the_videos_end(tmp_path: Path) -> None:
    """Silence for a hole was one frame of the whole gap: an hour of 7.1 is 11 GB at once, of mono 0.7."""
    source, output = tmp_path / "source.mkv", tmp_path / "out.mp4"
    _noise_track(source, "mono", seconds=1.0, container="matroska", delay=lambda block: 3600.0 * (block >= 20))
    with _memory_limit(256 * 1024**2):  # above what the process holds now
        write_h264(output, [_gradient_clip(25)], fps=25.0, audio_from=source)
    with av.open(str(output)) as container:
        played = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(played) == pytest.approx(48000, abs=1024) and np.abs(played[round(0.5 * 48000):]).max() < 0.01


def test_a_variable_frame_rate_video_is_resampled_by_its_timestamps(tmp_path: Path) -> None:
    """1 s at 25 fps, one frame held for 2 s, then 1 s at 25 fps: 4 s, not 51 frames / 25 fps."""
    path = tmp_path / "vfr.mp4"
    starts = [k / 25 for k in range(25)] + [1.0] + [3.0 + k / 25 for k in range(25)]
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for k, at in enumerate(starts):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 10 + 4 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(at * 1000), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    info = probe_video(str(path))
    assert info.num_frames == 51 and info.duration_s == pytest.approx(4.0, abs=0.05)
    assert info.output_fps == info.fps  # 12.75: a hold this long is the video's, not a capture's dropped frames
    means = np.concatenate([c.frames.reshape(len(c.frames), -1).mean(1) for c in iter_frame_chunks(str(path), 25.0)])
    assert len(means) == pytest.approx(100, abs=1)
    held = means[25:75]  # 1.0 s .. 3.0 s shows the held frame
    assert np.ptp(held) < 2 and abs(held[0] - (10 + 4 * 25)) < 3
    assert abs(means[75] - (10 + 4 * 26)) < 3


def test_a_capture_that_dropped_a_frame_keeps_its_frame_rate(tmp_path: Path) -> None:
    """A 29.97-fps driver short of one frame averages 29.47 fps over 2 s, and its animation was
    written at that rate. Its rate is FFmpeg's (29.97), a player's clock: the frame before the gap
    is held over it. A variable rate far from its declared one keeps its average."""
    from bad_media import dropped_frame_video

    path = str(dropped_frame_video(tmp_path / "dropped.mp4"))
    info = probe_video(path)
    assert info.num_frames == 59 and info.fps == pytest.approx(59 / 2.002, rel=1e-3)
    assert info.output_fps == float(Fraction(30000, 1001))
    greys = np.concatenate([c.frames[:, 0, 0, 0] for c in iter_frame_chunks(path, info.output_fps)]).astype(int)
    assert len(greys) == 60 and abs(greys[30] - greys[29]) <= 2 and abs(greys[31] - 3 * 31) <= 3
    write_h264(tmp_path / "steady.mp4", [_gradient_clip(30)], fps=30000 / 1001)
    assert probe_video(str(tmp_path / "steady.mp4")).nominal_fps is None  # no frame missing: its average is its rate


@pytest.mark.parametrize("rate", [Fraction(30000, 1001), Fraction(24), Fraction(60000, 1001)])
def test_matroska_times_in_whole_milliseconds_give_every_frame_once_at_its_rate(tmp_path: Path, rate: Fraction) -> None:
    """OBS records Matroska, browsers WebM, both timing frames in whole milliseconds: about every
    sixth frame was repeated and the next skipped, and 24 fps read as 24.012, 59.94 as 59.97."""
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        for k in range(round(2 * rate)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 2 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, 1 / rate
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    info = probe_video(str(path))
    assert info.output_fps == float(rate)
    greys = np.concatenate([c.frames[:, 0, 0, 0] for c in iter_frame_chunks(str(path), info.output_fps)]).astype(int)
    assert len(greys) == round(2 * rate) and np.all(np.abs(greys - 2 * np.arange(len(greys))) <= 2)


def test_frames_an_edit_list_hides_are_not_decoded(media_dir: Path) -> None:
    """This film clip's mp4 edit list hides its first 15 coded frames: players show 48 (PyAV too)."""
    path = media_dir / "upscaleavideo_old_movie_2.mp4"
    if not path.exists():
        pytest.skip("upscaleavideo_old_movie_2.mp4 is not in the shared media")
    with av.open(str(path)) as container:
        shown = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    info = probe_video(str(path))
    assert info.num_frames == len(shown) == 48 and info.fps == pytest.approx(25.0)
    first = next(iter_frame_chunks(str(path), info.fps, chunk_size=1)).frames[0]
    assert np.abs(first.astype(int) - shown[0]).mean() < 3
    chunk = next(iter_frame_chunks(str(path), info.fps, start_s=1.0, chunk_size=4, size=(214, 120)))
    assert chunk.frames.shape == (4, 120, 214, 3) and list(chunk.positions) == [25, 26, 27, 28]
    small = av.VideoFrame.from_ndarray(shown[25], format="rgb24").to_ndarray(format="rgb24", width=214, height=120)
    assert np.abs(chunk.frames[0].astype(int) - small).mean() < 3


def _copy_cut(mp4: Path, out: Path, packets: int) -> tuple[Path, int]:
    """What `ffmpeg -t ... -c copy` writes: `mp4`'s first `packets` packets in decoding order, which
    may hold a P-frame shown after a B-frame they lack (the B-frames before it are predicted from
    it), and an edit list that ends at the first frame they lack, hiding the frames after it.
    Returns the file and how many frames it shows."""
    with av.open(str(mp4)) as src, av.open(str(out), "w", format="mp4") as dst:
        stream, tick = dst.add_stream_from_template(src.streams.video[0]), src.streams.video[0].time_base
        kept = []
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None and len(kept) < packets:
                kept.append(round(packet.pts * tick * 25))
                packet.stream = stream
                dst.mux(packet)
    shown = next(k for k, frame in enumerate(sorted(kept)) if frame != k)  # the first frame the cut lacks
    data = bytearray(out.read_bytes())
    at = data.rindex(b"elst") + 12  # after the version, flags and entry count: the edit's duration
    assert data[at - 8] == 0 and data[at - 4:at] == struct.pack(">I", 1)  # one edit, 32-bit times
    data[at:at + 4] = struct.pack(">I", shown * 40)  # in the movie clock's milliseconds
    out.write_bytes(bytes(data))
    return out, shown


def test_a_frame_a_copy_cut_codes_after_its_edit_list_is_not_shown(tmp_path: Path) -> None:
    """FFmpeg does not show a frame after the edit list's end: it is neither counted nor in the rate,
    which spanning it and the missing frames before it made 34 frames at 23.6 fps (33 at 25 fps
    shown). decord reads the cut, and PyAV the widths decord misshapes."""
    cut, shown = _copy_cut(_gop_clip(tmp_path / "source.mp4", 40, keyint=12), tmp_path / "cut.mp4", packets=34)
    with av.open(str(cut)) as container:
        whole = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(whole) == shown < 34  # the cut codes a frame it does not show
    assert probe_video(str(cut)) == VideoInfo(64, 48, 25.0, shown)
    for size in (None, (24, 16)):
        frames = np.concatenate([c.frames for c in iter_frame_chunks(str(cut), 25.0, chunk_size=8, size=size)])
        expected = [av.VideoFrame.from_ndarray(f, format="rgb24").to_ndarray(format="rgb24", width=24, height=16)
                    for f in whole] if size else whole
        assert len(frames) == shown and np.abs(frames.astype(int) - np.stack(expected)).mean() < 3


@pytest.mark.parametrize("name", ["metrical_tracker_justin.mp4", "upscaleavideo_old_video_1.mp4"])
def test_a_drivers_frame_past_its_edit_list_is_not_shown(media_dir: Path, decode_starts, name: str) -> None:
    """These clips, cut with `-c copy`, hide leading frames and code one after their edit list's end:
    FFmpeg shows 300 and 28 frames at their nominal rate. Counted, that frame made the rate 29.77 and
    23.39 fps, so resampling to the nominal rate skipped a frame and doubled the last one. A clip at
    the end is decoded from its keyframe."""
    path = media_dir / name
    if not path.exists():
        pytest.skip(f"{name} is not in the shared media")
    with av.open(str(path)) as container:
        nominal = float(container.streams.video[0].average_rate)
        whole = np.stack([f.to_ndarray(format="rgb24", width=64, height=64) for f in container.decode(video=0)])
    info = probe_video(str(path))
    assert (info.num_frames, info.fps) == (len(whole), nominal) and len(whole) in (300, 28)
    frames = np.concatenate([c.frames for c in iter_frame_chunks(str(path), nominal, chunk_size=64, size=(64, 64))])
    assert np.array_equal(frames, whole)
    end = np.concatenate([c.frames for c in iter_frame_chunks(str(path), nominal, (len(whole) - 3) / nominal,
                                                              size=(64, 64))])
    assert np.array_equal(end, whole[-3:]) and decode_starts[-1] > 0


def _numbered_clip(path: Path, container: str, codec: str, count: int) -> None:
    """`count` frames at 25 fps whose brightness is 4 x their index."""
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        video.codec_context.options = {"bf": "0", "g": "10"}
        clock = Fraction(1, 1000) if codec == "libx264" else Fraction(1, 25)  # MPEG-TS + ms clock: no frame durations
        video.codec_context.time_base = clock
        for k in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 4 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(k / 25 / clock), clock
            out.mux(video.encode(frame))
        out.mux(video.encode(None))


@pytest.mark.parametrize(("name", "container", "codec"), [("clip.mpg", "mpeg", "mpeg2video"),
                                                           ("clip.avi", "avi", "mpeg4"),
                                                           ("clip.ts", "mpegts", "libx264")])
def test_containers_without_usable_timestamps_or_durations_keep_their_frames_and_rate(
        tmp_path: Path, name: str, container: str, codec: str) -> None:
    """MPEG-PS and AVI frames carry no presentation time (decord reports a huge negative one), and
    MPEG-TS frames no duration: neither may look like an edit list or shorten the video."""
    path = tmp_path / name
    _numbered_clip(path, container, codec, 30)
    info = probe_video(str(path))
    assert (info.num_frames, info.fps) == (30, 25.0)
    frames = np.concatenate([c.frames for c in iter_frame_chunks(str(path), 25.0)])
    assert len(frames) == 30
    assert np.all(np.diff(frames.reshape(30, -1).mean(1)) > -2)  # in order, never replayed from the start


def test_an_avi_without_frame_times_keeps_every_frame(media_dir: Path) -> None:
    path = media_dir / "mmaction2_test.avi"
    if not path.exists():
        pytest.skip("mmaction2_test.avi is not in the shared media")
    with av.open(str(path)) as container:
        count = sum(1 for _ in container.decode(video=0))
    assert probe_video(str(path)).num_frames == count == 164


def test_a_sideways_phone_clip_comes_out_upright_whichever_decoder_reads_it(tmp_path: Path) -> None:
    """Stored sideways with a display rotation (a phone video), then trimmed with an edit list (what
    `ffmpeg -ss ... -c copy` writes): the trimmed file is decoded with PyAV, which must turn its
    frames upright as decord does, or a driver's motion is read sideways."""
    upright = np.zeros((40, 64, 48, 3), np.uint8)
    upright[:, :16, :, 0] = 250  # a red band at the top, a green one on the left, brightness per frame
    upright[:, :, :8, 1] = 200
    upright[..., 2] = (4 * np.arange(40, dtype=np.uint8))[:, None, None]
    stored = tmp_path / "phone.mp4"
    with av.open(str(stored), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.set_display_rotation(-90)  # shown turned a quarter clockwise
        for frame in upright:
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame, 1)), format="rgb24")))
        out.mux(video.encode(None))
    trimmed = _edit_list_hiding(stored, tmp_path / "trimmed.mp4", frames=5)
    for size in (None, (24, 32)):
        whole = np.concatenate([c.frames for c in iter_frame_chunks(str(stored), 25.0, size=size)])
        cut = np.concatenate([c.frames for c in iter_frame_chunks(str(trimmed), 25.0, size=size)])
        assert whole.shape[1:3] == cut.shape[1:3] == ((64, 48) if size is None else (32, 24))
        assert whole[0, :4, :, 0].mean() > 200 and whole[0, -4:, :, 0].mean() < 50  # decord: upright
        assert np.abs(cut.astype(int) - whole[5:]).mean() < 3  # the same frames, upright


def test_the_output_carries_the_audio_track_a_player_plays(tmp_path: Path) -> None:
    """A dub's driver may hold the original and a translation: the track marked default is the one
    heard, whatever its place."""
    driver = tmp_path / "two_tracks.mp4"
    rate = 16000
    with av.open(str(driver), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        tracks = [(out.add_stream("aac", rate=rate, layout="mono"), pitch) for pitch in (440, 1000)]
        tracks[0][0].disposition, tracks[1][0].disposition = av.stream.Disposition(0), av.stream.Disposition.default
        tracks[0][0].metadata["language"], tracks[1][0].metadata["language"] = "eng", "spa"
        for _ in range(25):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(video.encode(None))
        for stream, pitch in tracks:
            tone = (0.3 * np.sin(2 * np.pi * pitch * np.arange(rate) / rate)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
    output = tmp_path / "out.mp4"
    write_h264(output, [np.zeros((25, 32, 32, 3), np.uint8)], fps=25.0, audio_from=driver)
    with av.open(str(output)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])
        peak = np.argmax(np.abs(np.fft.rfft(samples))) * stream.rate / len(samples)
        # video first, where `-map 0:0` and editors look; the dub's language kept
        assert [s.type for s in container.streams] == ["video", "audio"] and stream.metadata["language"] == "spa"
    assert abs(peak - 1000) < 20, peak


def test_audio_seconds_says_how_much_of_a_clip_has_sound(tmp_path: Path) -> None:
    """A source whose audio stops early gave a clip silent for most of its length, and nothing in
    its sample said so: the sample json now records `audio_s`."""
    from portraitflow.operators.video_writer import audio_seconds

    source, clip, silent = tmp_path / "source.mp4", tmp_path / "clip.mp4", tmp_path / "silent.mp4"
    _tone_after(source, silent_s=0.0, total_s=1.0)
    write_h264(clip, [_gradient_clip(25)] * 3, fps=25.0, audio_from=source)  # 3 s of video, 1 s of audio
    write_h264(silent, [_gradient_clip(25)], fps=25.0)
    assert audio_seconds(clip) == pytest.approx(1.0, abs=0.05)
    assert audio_seconds(silent) == 0.0


def test_pad_audio_fills_a_short_track_with_silence_to_the_videos_end(tmp_path: Path) -> None:
    """An animated video whose driver's audio stops early (a dub shorter than its picture) had a
    track shorter than its video, which editors and concatenation trip over: `pad_audio` (what
    animate writes) lasts as the video does, the sound where it was and silence after."""
    source, padded = tmp_path / "source.mp4", tmp_path / "padded.mp4"
    _tone_after(source, silent_s=0.0, total_s=1.0)
    written = write_h264(padded, [_gradient_clip(25)] * 3, fps=25.0, audio_from=source, pad_audio=True)
    audio_s, video_s, packet_end_s, rate = _audio_and_video_end_s(padded)
    assert written == 75 and video_s == pytest.approx(3.0, abs=1e-6)
    assert packet_end_s == pytest.approx(video_s, abs=1 / rate) and audio_s >= video_s - 0.002
    with av.open(str(padded)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(container.streams.audio[0])])
    loud = np.flatnonzero(np.abs(samples) > 0.3) / rate
    assert loud[0] < 0.05 and loud[-1] == pytest.approx(1.0, abs=0.03)  # the tone kept its second
    assert np.abs(samples[int(1.1 * rate):]).max() < 0.01  # then silence


def test_a_download_cut_short_fails_where_its_data_ends_with_a_reason_that_groups(tmp_path: Path) -> None:
    """A faststart file (index first, as web videos are) cut short keeps its index: it opens, and
    decoding fails where the data ends. decord's text there was its own source lines and codes."""
    whole = tmp_path / "whole.mp4"
    write_h264(whole, [np.random.default_rng(0).integers(0, 256, (60, 64, 64, 3), np.uint8)], fps=25)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(str(cut))
    with pytest.raises(VideoUnreadable) as raised:
        for _ in iter_frame_chunks(str(cut), info.fps, chunk_size=8):
            pass
    assert re.fullmatch(r"decoding failed near frame \d+ of \d+: the decoder rejects the data there "
                        r"\(damaged, or the file is cut short\)", str(raised.value)), raised.value


def test_a_video_whose_frames_share_one_timestamp_is_unreadable_not_1800_fps(tmp_path: Path) -> None:
    """Decoded frames re-encoded without their times all land at 0: 60 frames in 33 ms. An animate
    job on such a driver was `ok`, with an 1800-fps output of 33 ms and its audio cut to that."""
    source, path = tmp_path / "source.mp4", tmp_path / "untimed.mp4"
    write_h264(source, [np.random.default_rng(0).integers(0, 256, (60, 64, 64, 3), np.uint8)], fps=25)
    with av.open(str(source)) as decoded, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for frame in decoded.decode(video=0):
            frame.pts = None
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoUnreadable, match="timestamps are broken: 60 frames in 0.033 s"):
        probe_video(str(path))
    assert probe_video(str(source)).fps == 25.0
