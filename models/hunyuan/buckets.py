"""Head-motion and expression intensity buckets of one driving chunk (SPEC 3.1).

A pure numpy function, so that curation can tag clips with the same intensity the motion
refiner is conditioned on, without loading any model.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

NOSE = 2  # index of the nose in the 5-point (eyes, nose, mouth corners) layout
NUM_BUCKETS = 128
EXPRESSION_GAIN = 1024.0
HEAD_GAIN = 256.0


def head_exp_motion_buckets(landmarks: ArrayLike) -> tuple[int, int]:
    """(head_bucket_id, exp_bucket_id), each in [0, 127], of a chunk's landmarks [n, 5, 2] (x, y).

    Both are mean landmark displacements normalised by the face size of the chunk's first frame
    (the diagonal of its nose-relative landmark box): the expression bucket measures how far the
    nose-relative landmarks move around their mean, the head bucket how far the nose moves.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (5, 2) or len(points) == 0:
        raise ValueError(f"landmarks must have shape [n, 5, 2] with n >= 1, got {points.shape}")
    relative = points - points[:, NOSE : NOSE + 1]
    extent = relative[0].max(axis=0) - relative[0].min(axis=0)
    scale = float(np.hypot(extent[0], extent[1]))
    if scale == 0.0:
        raise ValueError("degenerate landmarks: the first frame's landmark box has no extent")
    expression_motion = np.linalg.norm(relative - relative.mean(axis=0), axis=-1).mean() / scale
    nose = points[:, NOSE]
    head_motion = np.linalg.norm(nose - nose.mean(axis=0), axis=-1).mean() / scale
    return _bucket(head_motion * HEAD_GAIN), _bucket(expression_motion * EXPRESSION_GAIN)


def _bucket(value: float) -> int:
    return int(np.clip(int(value), 0, NUM_BUCKETS - 1))
