"""Motion descriptors of a face over time: per-frame intensity and HunyuanPortrait's buckets.

Pure numpy, shared by curation (clip tags and the `too_static` / `too_shaky` filters) and the
generation flow (driving-video conditioning).
"""
from __future__ import annotations

import numpy as np

from portraitflow.models.hunyuan.buckets import head_exp_motion_buckets

WINDOW = 25  # frames per motion chunk (SPEC 3: n_sample_frames)


def face_scale(landmarks: np.ndarray) -> np.ndarray:
    """(T,) diagonal of each frame's landmark box: the size motion is normalised by."""
    extent = landmarks.max(axis=1) - landmarks.min(axis=1)
    return np.maximum(np.hypot(extent[:, 0], extent[:, 1]), 1e-6)


def motion_intensity(landmarks: np.ndarray) -> np.ndarray:
    """(T,) mean landmark displacement from the previous frame over the face size; 0 for frame 0.

    Scale-free, so a value means the same on a 256 px and a 1080 px face.
    """
    points = np.asarray(landmarks, np.float64)
    if len(points) < 2:
        return np.zeros(len(points), np.float32)
    speed = np.linalg.norm(np.diff(points, axis=0), axis=-1).mean(axis=1) / face_scale(points)[1:]
    return np.concatenate([[0.0], speed]).astype(np.float32)


def window_buckets(kps: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(ceil(T / window), 2) int32 (head, expression) buckets of each window of 5-point keypoints."""
    kps = np.asarray(kps)
    return np.array(
        [head_exp_motion_buckets(kps[i : i + window]) for i in range(0, len(kps), window)], dtype=np.int32
    ).reshape(-1, 2)


def motion_table(landmarks: np.ndarray, kps: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(T, 3) float32 per frame: intensity, and the head and expression buckets of its window."""
    buckets = np.repeat(window_buckets(kps, window), window, axis=0)[: len(kps)]
    return np.column_stack([motion_intensity(landmarks), buckets]).astype(np.float32)
