"""Odd but real-world streams: joined MPEG-TS segments, a picture size that changes, non-square
pixels, HDR, and the commonest bad files, each read as a player shows it or given a reason that groups."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from portraitflow.operators.decode import iter_frame_chunks, probe_video, read_frames
from portraitflow.operators.probe import probe_input


def _segment(path: Path, levels: range, size: tuple[int, int] = (64, 64), container: str = "mpegts",
             sar: Fraction | None = None, rotation: int | None = None, color_trc: int | None = None) -> Path:
    """Frames at 25 fps of brightness `levels`, stored at `size` (width, height): a striped
    picture (a bright band over the left quarter of the stored columns) tells its shape."""
    width, height = size
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream("libx264", rate=25, options={"g": "10"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if sar is not None:
            video.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            video.set_display_rotation(rotation)
        if color_trc is not None:
            video.codec_context.color_trc = color_trc
        for level in levels:
            image = np.full((height, width, 3), level, np.uint8)
            image[:, :width // 4] = 250
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
    return path


def _decoded(path: Path, **kwargs) -> np.ndarray:
    return np.concatenate([chunk.frames for chunk in iter_frame_chunks(str(path), 25.0, chunk_size=16, **kwargs)])


def _brightness(frames: np.ndarray) -> np.ndarray:
    """Each frame's level, read right of the bright band."""
    return frames[:, :, frames.shape[2] // 2:].reshape(len(frames), -1).mean(1)


def test_ts_segments_joined_end_to_end_play_in_order_at_their_own_rate(tmp_path: Path) -> None:
    """Each segment's clock starts again (camcorder .MTS splits, HLS captures joined with `cat`):
    sorted by time the segments interleave, which read 2 s as 1 s at 50 fps, every other frame."""
    first = _segment(tmp_path / "a.ts", range(20, 120, 4))
    second = _segment(tmp_path / "b.ts", range(120, 220, 4))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    info = probe_video(str(joined))
    assert (info.fps, info.num_frames) == (25.0, 50)
    levels = _brightness(_decoded(joined))
    assert len(levels) == 50 and np.all(np.diff(levels) > 0)  # every frame, in the order filmed
    single = probe_video(str(first))
    assert (single.fps, single.num_frames) == (25.0, 25)


def test_a_picture_size_that_changes_midway_is_scaled_to_the_first(tmp_path: Path) -> None:
    """Joined captures switch size (64 to 96 px here): every frame comes at the probed size, not a
    numpy error about shapes."""
    small = _segment(tmp_path / "small.ts", range(20, 120, 4), (64, 64))
    large = _segment(tmp_path / "large.ts", range(120, 220, 4), (96, 96))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(small.read_bytes() + large.read_bytes())
    info = probe_video(str(joined))
    assert (info.width, info.height, info.num_frames) == (64, 64, 50)
    frames = _decoded(joined)
    assert frames.shape == (50, 64, 64, 3) and np.all(np.diff(_brightness(frames)) > 0)
    assert _decoded(joined, size=(32, 32)).shape == (50, 32, 32, 3)


@pytest.mark.parametrize("container", ["mp4", "mpegts"])  # decord, PyAV
def test_non_square_pixels_are_decoded_at_their_shown_width(tmp_path: Path, container: str) -> None:
    """48x64 stored with pixels 4:3 wide is shown 64x64: a face would be squeezed a quarter at the
    stored size. The probe says the shown size, and frames come at it unless a size is asked."""
    path = _segment(tmp_path / f"anamorphic.{container}", range(20, 60, 4), (48, 64), container, Fraction(4, 3))
    info = probe_video(str(path))
    assert (info.width, info.height) == (64, 64)
    frames = _decoded(path)
    assert frames.shape == (10, 64, 64, 3)
    band = frames[0, 32, :, 0] > 200  # a quarter of the stored width is a quarter of the shown one
    assert band[:14].all() and not band[18:].any()
    assert _decoded(path, size=(32, 32)).shape == (10, 32, 32, 3)


def test_non_square_pixels_of_a_sideways_phone_clip_stretch_its_stored_width(tmp_path: Path) -> None:
    """Stored 48x32 with pixels 2:1 wide is 96x32 unturned, and shown turned a quarter: 32x96."""
    path = _segment(tmp_path / "sideways.mp4", range(20, 60, 4), (48, 32), "mp4", Fraction(2), rotation=-90)
    info = probe_video(str(path))
    assert (info.width, info.height) == (32, 96)
    assert _decoded(path).shape == (10, 96, 32, 3)


#: BT.709 primaries' linear RGB in BT.2020's (ITU-R BT.2087)
_BT709_TO_BT2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])


def _sdr_picture(size: int = 64) -> np.ndarray:
    """Skin, hair and background tones with gradients, all within SDR."""
    ramp = np.linspace(0.0, 1.0, size)
    picture = np.empty((size, size, 3))
    picture[..., 0] = 40 + 180 * ramp[None, :]
    picture[..., 1] = 30 + 120 * ramp[:, None]
    picture[..., 2] = 90 - 60 * ramp[None, :]
    picture[size // 4:3 * size // 4, size // 4:3 * size // 4] = (224, 172, 140)  # skin
    return picture.round().astype(np.uint8)


def _as_hdr(picture: np.ndarray, transfer: str) -> np.ndarray:
    """The picture as BT.2100 codes it (BT.2020 primaries, PQ or HLG), its white at HDR's reference
    white (203 cd/m², ITU-R BT.2408): what an SDR picture looks like placed in an HDR master."""
    display = (picture / 255.0) ** 2.4 @ _BT709_TO_BT2020.T * 203.0  # cd/m² on a BT.1886 screen
    if transfer == "pq":
        m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
        light = (display / 10000.0) ** m1
        return ((c1 + c2 * light) / (1 + c3 * light)) ** m2
    display /= 1000.0  # HLG's nominal display, whose system gamma is 1.2
    scene_luma = np.maximum(display @ np.array([0.2627, 0.6780, 0.0593]), 1e-12) ** (1 / 1.2)
    scene = display / scene_luma[..., None] ** 0.2
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-12)) + c)


def _hdr_clip(path: Path, picture: np.ndarray, transfer: str) -> Path:
    """3 frames of `picture` coded as HDR: 10-bit BT.2020 YCbCr, narrow range, losslessly."""
    signal = _as_hdr(picture.astype(np.float64), transfer)
    kr, kb = 0.2627, 0.0593
    luma = signal @ np.array([kr, 1 - kr - kb, kb])
    cb, cr = (signal[..., 2] - luma) / (2 * (1 - kb)), (signal[..., 0] - luma) / (2 * (1 - kr))
    half = len(picture) // 2
    planes = [64 + 876 * luma] + [(512 + 896 * chroma).reshape(half, 2, half, 2).mean((1, 3)) for chroma in (cb, cr)]
    trc = {"pq": 16, "hlg": 18}[transfer]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"qp": "0"})
        video.width = video.height = len(picture)
        video.pix_fmt = "yuv420p10le"
        codec = video.codec_context
        codec.color_primaries, codec.color_trc, codec.colorspace, codec.color_range = 9, trc, 9, 1
        frame = av.VideoFrame(len(picture), len(picture), "yuv420p10le")
        for plane, values in zip(frame.planes, planes):
            rows = np.frombuffer(plane, np.uint16).reshape(-1, plane.line_size // 2)
            rows[:values.shape[0], :values.shape[1]] = values.round()
        frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range = 9, trc, 9, 1
        for pts in range(3):
            frame.pts = pts
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


@pytest.mark.parametrize("transfer", ["pq", "hlg"])
def test_hdr_is_read_as_an_sdr_screen_shows_it(tmp_path: Path, transfer: str) -> None:
    """HDR10 and a phone's HLG video, read as if SDR (as decord reads every video), came out dark
    and washed out (this picture coded as PQ: 32 levels off on average, as HLG 19), so curation
    refused PQ and judged HLG on wrong colours. Both are read as SDR BT.709 now, their reference
    white as SDR white, by every reader: at full size, scaled while decoding, and by frame index
    (within 3.1 levels: 4:2:0 chroma of saturated colours)."""
    picture = _sdr_picture()
    path = _hdr_clip(tmp_path / f"{transfer}.mp4", picture, transfer)
    assert probe_input({"uri": str(path)}, str(path))["status"] == ""
    full = _decoded(path)
    assert full.shape == (3, 64, 64, 3)
    assert np.abs(full.astype(float) - picture).mean() < 4
    halved = _decoded(path, size=(32, 32)).astype(float).mean((1, 2))
    assert np.abs(halved - picture.reshape(-1, 3).mean(0)).max() < 3
    indexed, count = read_frames(str(path), [2, 0])
    assert count == 3 and np.abs(indexed.astype(float) - picture).mean() < 4


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path, format="PNG")
    return path


def test_the_commonest_bad_files_get_reasons_that_group(tmp_path: Path) -> None:
    """The row says what is wrong in words shared by every such file, never its path (a remote
    input's is a temporary one), so failures can be counted by reason."""
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    expected = {"zero.mp4": "empty file (0 bytes)", "audio.mp4": "no video stream (audio only)",
                "photo.mp4": "a still image, not a video",
                "junk.mp4": "cannot open the video: Invalid data found when processing input (moov atom not found)"}
    paths = [tmp_path / "zero.mp4", _audio_only(tmp_path / "audio.mp4"), _png(tmp_path / "photo.mp4"),
             tmp_path / "junk.mp4"]
    for path in paths:
        row = probe_input({"path": str(path)}, str(path))
        assert row["status"] == "failed" and str(tmp_path) not in row["error"], row
        assert row["error"] == expected[path.name], row


def _interlaced(path: Path, second_field: int) -> Path:
    """64x64 interlaced H.264 whose frames weave a field at level 40 with one at `second_field`."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"tff": "1"})
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        video.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        for _ in range(10):
            woven = np.full((64, 64, 3), 40, np.uint8)
            woven[1::2] = second_field
            out.mux(video.encode(av.VideoFrame.from_ndarray(woven, format="rgb24")))
        out.mux(video.encode(None))
    return path


def test_combed_interlaced_frames_come_with_their_fields_blended(tmp_path: Path) -> None:
    """Broadcast footage weaves two fields shot 1/50 s apart: a moving edge combs, and the crops
    kept the combing (a reviewer's interlaced clip was accepted with sharpness 331)."""
    from portraitflow.operators.decode import _pyav_probe

    moving = _interlaced(tmp_path / "moving.mp4", second_field=200)  # the second field brighter: combed
    assert _pyav_probe(str(moving)).interlaced
    frames = _decoded(moving).astype(int)
    assert np.abs(np.diff(frames[:, 4:-4], axis=1)).mean() < 10  # woven, neighbouring rows differ by 160
    assert 100 < frames[:, 4:-4].mean() < 140
    still = _decoded(_interlaced(tmp_path / "still.mp4", second_field=40)).astype(int)  # nothing moved: no comb
    assert np.abs(still - 40).max() <= 3
    small = _decoded(moving, size=(32, 32))  # scaled down: the decoder mixed the fields, left as it did
    assert small.shape[1:] == (32, 32, 3)
    progressive = _segment(tmp_path / "progressive.mp4", range(20, 60, 4), container="mp4")
    assert not _pyav_probe(str(progressive)).interlaced


def test_a_still_picture_stream_ahead_of_the_video_is_not_taken_for_it(tmp_path: Path) -> None:
    """A one-frame MJPEG stream (cover art) stored first, as Matroska keeps it: size, frames and the
    decoders all follow the stream FFmpeg picks as the video (decord's choice too)."""
    path = tmp_path / "cover.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 96, 32, "yuvj420p"
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        out.mux(cover.encode(av.VideoFrame.from_ndarray(np.full((32, 96, 3), 30, np.uint8), format="rgb24")))
        out.mux(cover.encode(None))
        for level in range(40, 240, 8):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")))
        out.mux(video.encode(None))
    info = probe_video(str(path))
    assert (info.width, info.height, info.num_frames) == (64, 48, 25)
    frames = _decoded(path)
    assert frames.shape == (25, 48, 64, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), np.arange(40, 240, 8), atol=4)


def test_an_ffmpeg_without_colour_management_says_so_for_hdr(tmp_path: Path, monkeypatch) -> None:
    """Before FFmpeg 8, swscale has no `intent`: HDR inputs failed as `decoding failed near frame 1:
    Option not found`, which reads as a damaged file."""
    from portraitflow.operators import decode

    path = _hdr_clip(tmp_path / "pq.mp4", _sdr_picture(), "pq")
    monkeypatch.setattr(decode, "_TO_SDR_BT709", "out_transfer=bt709:an_option_of_later_versions=1")
    with pytest.raises(decode.VideoUnreadable, match="needs FFmpeg 8's colour conversion"):
        _decoded(path)
