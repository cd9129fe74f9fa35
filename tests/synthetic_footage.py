"""Made-up footage as the near-duplicate checks see it: (frames, 16, 16) uint8 grey thumbnails
(`overlap.frame_thumbnails`) at the curation fps."""
from __future__ import annotations

import numpy as np


def footage(seed: int, frames: int, background_seed: int | None = None) -> np.ndarray:
    """A still set (its own, or that of `background_seed`) and a pattern moving smoothly over it,
    like a speaker before a wall; different for every seed."""
    from scipy.ndimage import gaussian_filter1d

    set_seed = seed if background_seed is None else background_seed
    background = np.random.default_rng(set_seed).uniform(40, 200, (16, 16))
    moving = gaussian_filter1d(np.random.default_rng(seed + 1000).normal(0, 60, (frames, 16, 16)), 3, axis=0)
    return np.clip(background + moving, 0, 255).round().astype(np.uint8)


def re_encoded(thumbnails: np.ndarray, seed: int = 7) -> np.ndarray:
    """The same footage with the small differences a re-encode makes."""
    noise = np.random.default_rng(seed).normal(0, 1.5, thumbnails.shape)
    return np.clip(thumbnails + noise, 0, 255).round().astype(np.uint8)
