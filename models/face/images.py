"""Loading user-supplied images into RGB uint8 arrays, with a reason instead of a crash.

Pillow decodes every format it knows; the image is turned upright by its EXIF orientation,
converted from its embedded ICC colour profile to sRGB (a Display P3 phone photo read as sRGB
numbers looks duller), and 16-bit, grayscale, palette, CMYK, alpha and other modes are converted
to 8-bit RGB (alpha is composited on black, the zero padding every crop here uses).
"""
from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Larger images are refused before decoding (below Pillow's own decompression-bomb limit, which
#: is made an error too).
MAX_PIXELS = 64_000_000
TOO_LARGE_TEXT = f"over the {MAX_PIXELS // 1_000_000}-megapixel limit: downscale it"

#: Reason codes of a failed load.
EMPTY = "empty"
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_LARGE = "too_large"


@dataclass(frozen=True)
class LoadedImage:
    """`rgb` is (H, W, 3) uint8 when the load worked; otherwise None and `reason` says why."""

    rgb: np.ndarray | None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.rgb is not None


#: the modes LittleCMS converts with a profile of their own colour space, and the mode each becomes
#: in sRGB; other modes (16-bit grayscale, palette, grayscale with alpha) keep their numbers
_MANAGED_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}
_SRGB = ImageCms.createProfile("sRGB")


def _to_srgb(image: Image.Image, icc_profile: bytes | None, name: str) -> Image.Image:
    """`image` converted from `icc_profile` (its embedded one) to sRGB, as a colour-managed viewer
    shows it. A profile that cannot be read or does not fit the image (an RGB profile on a grayscale
    picture) leaves the pixels as they are, taken for sRGB, with a warning naming `name`."""
    if not icc_profile or image.mode not in _MANAGED_MODES:
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(image, profile, _SRGB, outputMode=_MANAGED_MODES[image.mode])
    except (ImageCms.PyCMSError, OSError) as exc:
        log.warning("%s: its colour profile is not applied (%s); its pixels are taken for sRGB", name, exc)
        return image


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit and float grayscale: map the range the values use (8-bit, 16-bit, or
        # [0, 1] for float) onto 8 bits.
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        top = (1.0 if peak <= 1.0 else 255.0) if image.mode == "F" else (255.0 if peak <= 255 else 65535.0)
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def load_image(source: str | Path | bytes) -> LoadedImage:
    """Decode a path or the bytes of an image file; never raises for bad input."""
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            return LoadedImage(None, UNREADABLE, f"{type(exc).__name__}: {exc}")
    else:
        data = bytes(source)
    if not data:
        return LoadedImage(None, EMPTY, "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    return LoadedImage(None, TOO_LARGE, f"{image.width}x{image.height} is {TOO_LARGE_TEXT}")
                image.load()
                upright = ImageOps.exif_transpose(image)
                name = str(source) if isinstance(source, (str, Path)) else "an image given as bytes"
                rgb = _to_rgb8(_to_srgb(upright, image.info.get("icc_profile"), name))
    except UnidentifiedImageError:  # its message names a BytesIO object's address: not stable
        return LoadedImage(None, NOT_AN_IMAGE, "no image format Pillow knows")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own check, above ours
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:.0f} megapixels" if pixels else "it"
        return LoadedImage(None, TOO_LARGE, f"{size} is {TOO_LARGE_TEXT}")
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        return LoadedImage(None, CORRUPT, f"{type(exc).__name__}: {exc}")
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return LoadedImage(None, CORRUPT, f"decoded to shape {rgb.shape}")
    return LoadedImage(rgb)


def long_side(path: str | Path) -> int:
    """The longer side in pixels of the image at `path`, read from its header alone (its EXIF
    orientation does not change it); 0 for a file Pillow cannot open (its job fails on loading it)."""
    try:
        with Image.open(path) as image:
            return max(image.size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0
