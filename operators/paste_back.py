"""Composite animated square crops back onto the full reference image with a feathered mask."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import cv2
import numpy as np


def feathered_mask(side: int, feather: float) -> np.ndarray:
    """(side, side, 1) float32 weights: 1 inside, falling smoothly to 0 over `feather` * side at the edges."""
    ramp_px = max(feather * side, 1.0)
    distance = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32)
    ramp = np.clip((distance + 0.5) / ramp_px, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible band where the ramp ends
    return np.minimum(ramp[:, None], ramp[None, :])[..., None]


def paste_back(image: np.ndarray, chunks: Iterable[np.ndarray], box: np.ndarray, feather: float) -> Iterator[np.ndarray]:
    """Yield (T, H, W, 3) frames of `image` with each animated crop blended into `box`.

    The box (x1, y1, x2, y2) may reach outside the image (crops are zero-padded there); only the
    part inside the image is composited.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    side = x2 - x1
    mask = feathered_mask(side, feather)
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
