"""Composite animated square crops back onto the full reference image with a feathered mask."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import cv2
import numpy as np


def _edge_ramp(side: int, feather: float, fade_start: bool, fade_end: bool) -> np.ndarray:
    """(side,) weights along one axis: 1 inside, falling smoothly to 0 over `feather` * side at each
    end that fades; an end that does not fade stays 1 up to its last pixel."""
    ramp_px = max(feather * side, 1.0)
    index = np.arange(side, dtype=np.float32)
    distance = np.full(side, np.inf, np.float32)
    if fade_start:
        distance = np.minimum(distance, index)
    if fade_end:
        distance = np.minimum(distance, index[::-1])
    ramp = np.clip((distance + 0.5) / ramp_px, 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible band where the ramp ends


def feathered_mask(side: int, feather: float,
                   fade: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> np.ndarray:
    """(side, side, 1) float32 weights: 1 inside, falling smoothly to 0 over `feather` * side at each
    edge `fade` selects (left, top, right, bottom). An edge on the photo's border keeps the weight 1:
    there is no seam to hide there, and a fade would blend the animation back into the still photo
    (a double image where hair or background move)."""
    left, top, right, bottom = fade
    rows, columns = _edge_ramp(side, feather, top, bottom), _edge_ramp(side, feather, left, right)
    return np.minimum(rows[:, None], columns[None, :])[..., None]


def exceeds(long_side: int, max_side: int) -> bool:
    """Whether a photo whose longer side is `long_side` px is scaled down to `max_side` (0: never)."""
    return 0 < max_side < long_side


def _scaled_start(start: int, end: int, length: int, scaled_length: int, side: int, scale: float) -> int:
    """Where a box of `side` scaled pixels starts along one axis of the scaled image: a box that
    reaches the axis' far border (and not its near one) keeps reaching it, any other is placed by
    its scaled start (an edge at 0 stays there)."""
    if end >= length and start > 0:
        return scaled_length + round((end - length) * scale) - side
    return round(start * scale)


def fit_within(image: np.ndarray, box: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """`image` scaled down so that its longer side is `max_side` where it `exceeds` it (else as it
    is), and the square `box` (x1, y1, x2, y2) in the returned image's pixels, still square, an edge
    on the image's border still on it (where `paste_back` does not feather)."""
    height, width = image.shape[:2]
    if not exceeds(max(height, width), max_side):
        return image, box
    scale = max_side / max(height, width)
    scaled_width, scaled_height = max(round(width * scale), 1), max(round(height * scale), 1)
    scaled = cv2.resize(image, (scaled_width, scaled_height), interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = (int(v) for v in box)
    side = max(round((x2 - x1) * scale), 1)
    left = _scaled_start(x1, x2, width, scaled_width, side, scale)
    top = _scaled_start(y1, y2, height, scaled_height, side, scale)
    return scaled, np.array([left, top, left + side, top + side])


def paste_back(image: np.ndarray, chunks: Iterable[np.ndarray], box: np.ndarray, feather: float) -> Iterator[np.ndarray]:
    """Yield (T, H, W, 3) frames of `image` with each animated crop blended into `box`.

    The box (x1, y1, x2, y2) may reach outside the image (crops are zero-padded there); only the
    part inside the image is composited, and the mask fades only at the box's edges inside it.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    side = x2 - x1
    mask = feathered_mask(side, feather, fade=(x1 > 0, y1 > 0, x2 < width, y2 < height))
    ix1, iy1, ix2, iy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    inner = (slice(iy1 - y1, iy2 - y1), slice(ix1 - x1, ix2 - x1))
    weight = mask[inner]
    background = image[iy1:iy2, ix1:ix2].astype(np.float32)
    for chunk in chunks:
        out = np.repeat(image[None], len(chunk), axis=0)
        for frame, crop in zip(out, chunk):
            interpolation = cv2.INTER_AREA if side < crop.shape[0] else cv2.INTER_CUBIC
            resized = cv2.resize(crop, (side, side), interpolation=interpolation)[inner].astype(np.float32)
            frame[iy1:iy2, ix1:ix2] = np.clip(background + (resized - background) * weight, 0, 255).astype(np.uint8)
        yield out
