"""Loading user-supplied images into RGB uint8 arrays, with a reason instead of a crash.

Pillow decodes every format it knows; the image is turned upright by its EXIF orientation, and
16-bit, grayscale, palette, CMYK, alpha and other modes are converted to 8-bit RGB (alpha is
composited on black, the zero padding every crop here uses).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Larger images are refused before decoding (below Pillow's own decompression-bomb limit, which
#: is made an error too).
MAX_PIXELS = 64_000_000

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
                    return LoadedImage(None, TOO_LARGE, f"{image.width}x{image.height}")
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = _to_rgb8(upright)
    except UnidentifiedImageError:  # its message names a BytesIO object's address: not stable
        return LoadedImage(None, NOT_AN_IMAGE, "no image format Pillow knows")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return LoadedImage(None, TOO_LARGE, str(exc))
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        return LoadedImage(None, CORRUPT, f"{type(exc).__name__}: {exc}")
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return LoadedImage(None, CORRUPT, f"decoded to shape {rgb.shape}")
    return LoadedImage(rgb)
