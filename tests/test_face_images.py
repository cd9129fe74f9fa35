"""load_image: every awkward user input gives an RGB uint8 array or a reason, never an exception."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from portraitflow.models.face import images
from portraitflow.models.face.images import load_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def _assert_rgb(loaded, shape):
    assert loaded.ok and loaded.reason is None
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == shape


def test_plain_rgb_jpeg_and_png(astronaut):
    _assert_rgb(load_image(_encode(Image.fromarray(astronaut), "JPEG")), astronaut.shape)
    loaded = load_image(_encode(Image.fromarray(astronaut), "PNG"))
    np.testing.assert_array_equal(loaded.rgb, astronaut)


def test_paths_and_missing_files(tmp_path: Path, astronaut):
    path = tmp_path / "a.png"
    path.write_bytes(_encode(Image.fromarray(astronaut), "PNG"))
    _assert_rgb(load_image(path), astronaut.shape)
    _assert_rgb(load_image(str(path)), astronaut.shape)
    missing = load_image(tmp_path / "missing.jpg")
    assert not missing.ok and missing.reason == images.UNREADABLE and "missing.jpg" in missing.detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", images.EMPTY),
        (b"this is not an image at all", images.NOT_AN_IMAGE),
        (bytes(range(256)) * 20, images.NOT_AN_IMAGE),
    ],
)
def test_empty_and_non_image_bytes(payload, reason):
    loaded = load_image(payload)
    assert loaded.rgb is None and loaded.reason == reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_corrupt(astronaut, fmt):
    data = _encode(Image.fromarray(astronaut), fmt)
    loaded = load_image(data[: len(data) // 2])
    assert loaded.rgb is None and loaded.reason == images.CORRUPT and loaded.detail


def test_grayscale_becomes_three_equal_channels(astronaut):
    gray = Image.fromarray(astronaut).convert("L")
    loaded = load_image(_encode(gray, "PNG"))
    _assert_rgb(loaded, astronaut.shape)
    np.testing.assert_array_equal(loaded.rgb[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])


def test_sixteen_bit_grayscale_keeps_its_range():
    ramp = (np.arange(256, dtype=np.uint16)[None, :].repeat(8, axis=0) * 257).astype(np.uint16)
    loaded = load_image(_encode(Image.fromarray(ramp), "PNG"))
    _assert_rgb(loaded, (8, 256, 3))
    np.testing.assert_array_equal(loaded.rgb[0, :, 1], np.arange(256))


def test_rgba_is_composited_on_black(astronaut):
    rgba = np.dstack([astronaut, np.zeros(astronaut.shape[:2], np.uint8)])
    rgba[:100, :, 3] = 255
    loaded = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    _assert_rgb(loaded, astronaut.shape)
    np.testing.assert_array_equal(loaded.rgb[:100], astronaut[:100])
    assert loaded.rgb[100:].max() == 0


def test_palette_with_transparency_and_cmyk(astronaut):
    palette = Image.fromarray(astronaut).quantize(64)
    palette.info["transparency"] = 0
    _assert_rgb(load_image(_encode(palette, "PNG", transparency=0)), astronaut.shape)
    cmyk = Image.fromarray(astronaut).convert("CMYK")
    loaded = load_image(_encode(cmyk, "JPEG", quality=95))
    _assert_rgb(loaded, astronaut.shape)
    assert np.abs(loaded.rgb.astype(int) - astronaut).mean() < 12


def test_float_tiff():
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    loaded = load_image(_encode(Image.fromarray(values, "F"), "TIFF"))
    _assert_rgb(loaded, (64, 64, 3))
    assert loaded.rgb[0, 0, 0] == 0 and loaded.rgb[-1, -1, 0] == 255


def test_exif_rotation_is_applied(astronaut):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    tall = astronaut[:, :300]
    loaded = load_image(_encode(Image.fromarray(tall), "PNG", exif=exif))
    _assert_rgb(loaded, (300, 512, 3))
    np.testing.assert_array_equal(loaded.rgb, np.rot90(tall, k=-1))


def test_oversized_images_are_refused_before_decoding(monkeypatch, astronaut):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    loaded = load_image(_encode(Image.fromarray(astronaut), "PNG"))
    assert loaded.rgb is None and loaded.reason == images.TOO_LARGE and loaded.detail.startswith("512x512 is over")


def test_an_image_over_pillows_own_limit_is_said_to_be_over_ours() -> None:
    """A 100-MP photo was refused in Pillow's words: a limit of 89 MP (ours is 64) and a "decompression
    bomb DOS attack", for an ordinary phone camera's high-resolution mode."""
    header = Image.new("L", (10_000, 10_000))
    loaded = load_image(_encode(header, "PNG"))
    assert loaded.reason == images.TOO_LARGE and loaded.detail == "100 megapixels is " + images.TOO_LARGE_TEXT


def test_real_media_all_load_or_give_a_reason(media_dir: Path, media_manifest):
    stills = [f for f in media_manifest.file if f.lower().endswith((".jpg", ".jpeg", ".png", ".gif"))]
    assert stills
    for file in stills:
        loaded = load_image(media_dir / file)
        assert loaded.ok, (file, loaded.reason, loaded.detail)
        assert loaded.rgb.ndim == 3 and loaded.rgb.shape[2] == 3


@pytest.fixture(scope="module")
def display_p3(media_dir: Path) -> bytes:
    """The Display P3 ICC profile a phone embeds in its photos (one of the shared portraits has it)."""
    with Image.open(media_dir / "inspireface_pose_left_face.jpeg") as photo:
        return photo.info["icc_profile"]


def test_an_embedded_colour_profile_is_converted_to_srgb(astronaut, display_p3):
    """A phone stores the colours it saw as Display P3 numbers; taken for sRGB they looked duller."""
    from PIL import ImageCms

    p3 = ImageCms.ImageCmsProfile(io.BytesIO(display_p3))
    as_p3 = ImageCms.profileToProfile(Image.fromarray(astronaut), ImageCms.createProfile("sRGB"), p3)
    loaded = load_image(_encode(as_p3, "PNG", icc_profile=display_p3))
    _assert_rgb(loaded, astronaut.shape)
    error = np.abs(loaded.rgb.astype(int) - astronaut.astype(int))
    assert error.mean() < 0.5 and error.max() <= 3, (error.mean(), error.max())  # P3 numbers taken for sRGB: 3.4, 38


@pytest.mark.parametrize("mode, profile", [("RGB", b"not a colour profile"), ("L", "display_p3")])
def test_a_profile_that_cannot_be_applied_keeps_the_pixels_and_warns(astronaut, display_p3, caplog, mode, profile):
    image = Image.fromarray(astronaut).convert(mode)
    stored = _encode(image, "PNG", icc_profile=display_p3 if profile == "display_p3" else profile)
    with caplog.at_level("WARNING", logger=images.__name__):
        loaded = load_image(stored)
    _assert_rgb(loaded, astronaut.shape)
    np.testing.assert_array_equal(loaded.rgb, np.asarray(image.convert("RGB")))
    assert "colour profile is not applied" in caplog.text
