"""Motion descriptors of a face over time: per-frame intensity and HunyuanPortrait's buckets.

Pure numpy and scipy, shared by curation (clip tags and the `too_static` / `too_shaky` filters) and the
generation flow (driving-video conditioning).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from portraitflow.models.hunyuan.buckets import head_exp_motion_buckets

WINDOW = 25  # frames per motion chunk (SPEC 3: n_sample_frames)
#: sigma, in frames, of the smoothing in time before `motion_intensity`: it takes out the landmark
#: fit's frame-to-frame jitter, which on a still face reads as much as a talking face's motion
#: (the numbers behind `min_motion` are in docs/curation.md)
SMOOTH_FRAMES = 2.0


def face_scale(landmarks: np.ndarray) -> np.ndarray:
    """(T,) diagonal of each frame's landmark box: the size motion is normalised by."""
    extent = landmarks.max(axis=1) - landmarks.min(axis=1)
    return np.maximum(np.hypot(extent[:, 0], extent[:, 1]), 1e-6)


def motion_intensity(landmarks: np.ndarray, smooth_frames: float = SMOOTH_FRAMES) -> np.ndarray:
    """(T,) mean displacement from the previous frame of the landmarks smoothed in time (Gaussian,
    sigma `smooth_frames`; 0: raw) over the face size; 0 for frame 0.

    Scale-free, so a value means the same on a 256 px and a 1080 px face. Smoothed, because the
    frame-to-frame jitter of the landmark fit on a still face is as large as a talking face's
    motion; raw, it keeps the frame-to-frame shake of a handheld camera, which smoothing takes out.
    """
    points = np.asarray(landmarks, np.float64)
    if len(points) < 2:
        return np.zeros(len(points), np.float32)
    if smooth_frames > 0:
        points = gaussian_filter1d(points, smooth_frames, axis=0, mode="nearest")
    speed = np.linalg.norm(np.diff(points, axis=0), axis=-1).mean(axis=1) / face_scale(points)[1:]
    return np.concatenate([[0.0], speed]).astype(np.float32)


def window_buckets(kps: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(ceil(T / window), 2) int32 (head, expression) buckets of each window of 5-point keypoints."""
    kps = np.asarray(kps)
    return np.array(
        [head_exp_motion_buckets(kps[i : i + window]) for i in range(0, len(kps), window)], dtype=np.int32
    ).reshape(-1, 2)


def motion_table(landmarks: np.ndarray, kps: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(T, 3) float32 per frame: intensity, and the head and expression buckets of its window. The
    frames after a clip's last whole window take the buckets of its last `window` frames: a few
    frames' buckets read as nearly still (9 frames of a talking head (0, 1), its whole windows'
    (2-9, 11-20)), which a sampler filtering on them would take for a still face."""
    kps = np.asarray(kps)
    buckets = np.repeat(window_buckets(kps, window), window, axis=0)[: len(kps)]
    whole = len(kps) // window * window
    if 0 < whole < len(kps):
        try:
            buckets[whole:] = head_exp_motion_buckets(kps[-window:])
        except ValueError:  # its first frame's keypoints are degenerate: the partial window's stand
            pass
    return np.column_stack([motion_intensity(landmarks), buckets]).astype(np.float32)
