"""Malformed and awkward media made on the spot: what untrusted uploads look like.

Each maker writes one file under `folder` and returns its path. Nothing here comes from ../shared.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np


def synthetic_video(path: Path, frames: int = 40, size: tuple[int, int] = (96, 128), fps: int = 25) -> Path:
    """A small valid H.264 mp4 of moving shapes (no face)."""
    import av

    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, :, 1] = 40
            x = (index * 3) % (width - 20)
            image[20:40, x:x + 20] = (220, 60, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(len(path.name)).integers(0, 256, 50_000, np.uint8).tobytes())
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated(path: Path, keep: float) -> Path:
    """A valid mp4 cut to `keep` of its bytes (the index or the media is lost)."""
    synthetic_video(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def header_only(path: Path) -> Path:
    """The first 64 bytes of a valid mp4: a container signature and nothing after it."""
    synthetic_video(path)
    path.write_bytes(path.read_bytes()[:64])
    return path


def absurd_mp4_dimensions(path: Path) -> Path:
    """A valid mp4 whose container declares 65535x65535 (sample entry and track header)."""
    synthetic_video(path)
    data = bytearray(path.read_bytes())
    entry = data.find(b"avc1")
    struct.pack_into(">HH", data, entry + 28, 0xFFFF, 0xFFFF)
    header = data.find(b"tkhd")
    size = struct.unpack_from(">I", data, header - 4)[0]
    struct.pack_into(">II", data, header - 4 + size - 8, 0xFFFF0000, 0xFFFF0000)
    path.write_bytes(bytes(data))
    return path


def absurd_y4m(path: Path) -> Path:
    """A raw YUV4MPEG stream declaring 60000x60000 frames, with a few bytes of one."""
    path.write_bytes(b"YUV4MPEG2 W60000 H60000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 4096)
    return path


def absurd_gif(path: Path) -> Path:
    """A GIF whose logical screen is 65535x65535, with one 1x1 image."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 0xFFFF, 0xFFFF, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    path.write_bytes(screen + image + b"\x3b")
    return path


def zero_frames(path: Path) -> Path:
    """An mp4 with a video stream and not one frame."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # the header is written; no frame ever is
    return path


def audio_only(path: Path) -> Path:
    """An mp4 holding one second of a sine tone and no video."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 0.3).astype(np.float32)[None]
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(tone[:, start:start + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def png_as_video(path: Path) -> Path:
    """A PNG image under a video extension."""
    from PIL import Image

    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(path, format="PNG")
    return path


def png_bomb(path: Path) -> Path:
    """A tiny PNG whose header declares 100000x100000 pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) +
                     chunk(b"IEND", b""))
    return path


def _face_like(size: int = 160) -> np.ndarray:
    """An RGB image with structure (not a face: these are about decoding, not detection)."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([(xx * 255 // size), (yy * 255 // size), ((xx + yy) * 127 // size)], -1)
    return image.astype(np.uint8)


def exif_rotated(path: Path) -> Path:
    from PIL import Image

    image = Image.fromarray(_face_like()[:, :120])
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    image.save(path, format="JPEG", exif=exif.tobytes())
    return path


def grayscale(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(_face_like()[:, :, 0]).save(path, format="PNG")
    return path


def cmyk(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(_face_like()).convert("CMYK").save(path, format="JPEG")
    return path


def sixteen_bit(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(_face_like()[:, :, 0].astype(np.uint16) * 257).save(path, format="PNG")
    return path


def with_alpha(path: Path) -> Path:
    from PIL import Image

    rgba = np.concatenate([_face_like(), np.full((160, 160, 1), 90, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(path, format="PNG")
    return path


# name -> maker; names carry spaces, unicode, dots and leading dashes on purpose.
BAD_VIDEOS: dict[str, Callable[[Path], Path]] = {
    "random bytes.mp4": random_bytes,
    "random-ünïcødé 名前.mkv": random_bytes,
    "random..avi": random_bytes,
    "-random.webm": random_bytes,
    "empty.mp4": empty_file,
    "truncated half.mp4": lambda p: truncated(p, 0.5),
    "truncated-tail.mp4": lambda p: truncated(p, 0.97),
    "header only.mov": header_only,
    "absurd dims.mp4": absurd_mp4_dimensions,
    "absurd.y4m.mp4": absurd_y4m,
    "absurd screen.gif": absurd_gif,
    "zero frames.mp4": zero_frames,
    "audio only.mp4": audio_only,
    "png inside.mp4": png_as_video,
    "..mp4": random_bytes,
    "a..b.mp4": lambda p: synthetic_video(p),
    "valid no face 🎥.mp4": lambda p: synthetic_video(p, frames=60),
}
BAD_IMAGES: dict[str, Callable[[Path], Path]] = {
    "exif rotated.jpg": exif_rotated,
    "gray scale.png": grayscale,
    "cmyk.jpg": cmyk,
    "sixteen bit.png": sixteen_bit,
    "alpha ünï.png": with_alpha,
    "bomb.png": png_bomb,
    "random.jpg": random_bytes,
}


def make_all(folder: Path, makers: dict[str, Callable[[Path], Path]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [maker(folder / name) for name, maker in makers.items()]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under root."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with_stat = os.lstat(path)
            found[path] = (with_stat.st_size, with_stat.st_mtime_ns)
    return found


def dropped_frame_video(path: Path, frames: int = 60, dropped: int = 30) -> Path:
    """A 29.97-fps H.264 mp4 (no face) whose frame `dropped` was never captured: a gap of two frame
    times in its timestamps, as a capture card or a phone under load leaves. Frame k's grey is 3k."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30000, 1001))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30000)
        for index in (k for k in range(frames) if k != dropped):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 3 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index * 1001, Fraction(1, 30000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
