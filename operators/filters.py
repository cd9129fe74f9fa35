"""Clip quality filters: each returns None to keep, or a reason code to reject.

Every code is documented in docs/curation.md; the manifest and MLflow count clips per code.
"""
from __future__ import annotations

import cv2
import numpy as np

from portraitflow.jobs.config.curate import CurateConfig

NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
LOW_RESOLUTION = "low_resolution"
LOW_FRAME_RATE = "low_frame_rate"
FACE_TOO_SMALL = "face_too_small"
TOO_SHORT = "too_short"
EXTREME_POSE = "extreme_pose"
TOO_BLURRY = "too_blurry"
TOO_STATIC = "too_static"
TOO_SHAKY = "too_shaky"
IDENTITY_SWITCH = "identity_switch"
FACE_LEAVES_CROP = "face_leaves_crop"
IDENTITY_NOT_ALLOWED = "identity_not_allowed"
IDENTITY_DENIED = "identity_denied"
IDENTITY_OVER_CAP = "identity_over_cap"
DUPLICATE = "duplicate"
PARTIAL_DUPLICATE = "partial_duplicate"
RENDER_FAILED = "render_failed"

#: faces are compared at this side: small enough that every kept face is downsampled, so the
#: measure does not depend on face size (blurred faces score ~40, sharp ones > 100 on ../shared)
SHARPNESS_SIDE = 64


def face_presence(detected_ratio: float, cfg: CurateConfig) -> str | None:
    return NO_FACE if detected_ratio < cfg.min_face_frames_ratio else None


def single_face(secondary_faces: int) -> str | None:
    return MULTIPLE_FACES if secondary_faces > 0 else None


def resolution(width: int, height: int, cfg: CurateConfig) -> str | None:
    return LOW_RESOLUTION if min(width, height) < cfg.min_resolution else None


def frame_rate(source_fps: float, cfg: CurateConfig) -> str | None:
    return LOW_FRAME_RATE if source_fps < cfg.min_source_fps else None


def face_size(median_side_px: float, cfg: CurateConfig) -> str | None:
    return FACE_TOO_SMALL if median_side_px < cfg.min_face_px else None


def duration(seconds: float, cfg: CurateConfig) -> str | None:
    return TOO_SHORT if seconds < cfg.min_clip_seconds - 1e-6 else None


def pose(abs_yaw: float, abs_pitch: float, cfg: CurateConfig) -> str | None:
    """On a clip's median |yaw| and |pitch| (degrees), the `yaw`/`pitch` measures its row shows."""
    return EXTREME_POSE if abs_yaw > cfg.max_abs_yaw or abs_pitch > cfg.max_abs_pitch else None


def sharpness(median_laplacian_var: float, cfg: CurateConfig) -> str | None:
    return TOO_BLURRY if median_laplacian_var < cfg.min_sharpness else None


def motion(mean_intensity: float, mean_shake: float, cfg: CurateConfig) -> str | None:
    """On a clip's `motion` (landmarks smoothed in time: how much the face moves) and `shake` (raw:
    that plus the frame-to-frame jitter of the fit and of a shaking camera)."""
    if mean_intensity < cfg.min_motion:
        return TOO_STATIC
    return TOO_SHAKY if mean_shake > cfg.max_motion else None


def laplacian_sharpness(frame: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face box, grey and resized to SHARPNESS_SIDE px."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = np.clip(np.round(box).astype(int), 0, [width, height, width, height])
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    grey = cv2.cvtColor(frame[y1:y2, x1:x2], cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def first_reason(*reasons: str | None) -> str | None:
    """The first reject reason of filters given in order, or None when all keep."""
    return next((r for r in reasons if r), None)
