"""Head pose (yaw, pitch, roll in degrees) from iBUG-68 landmarks by cv2.solvePnP.

Sign convention, for a face looking straight into the camera at (0, 0, 0):
- yaw > 0: the face turns toward the image's right (its nose points to larger x);
- pitch > 0: the face looks up (its nose points to smaller y, image up);
- roll > 0: the face's left-to-right axis (image-left eye to image-right eye) rotates clockwise
  on screen, i.e. the eye on the image's right is lower.

The pinhole camera has focal length max(H, W) pixels and its centre in the middle of the image;
angles are robust to that guess at the accuracy a curation filter needs (a few degrees).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: iBUG-68 indices used for the fit: nose tip, chin, outer eye corners (image left, image right),
#: mouth corners (image left, image right).
POSE_LANDMARKS = np.array([30, 8, 36, 45, 48, 54])

#: A generic adult head for those points, in camera axes for a frontal face (x right, y down,
#: z away from the camera; arbitrary units, nose tip at the origin).
POSE_TEMPLATE = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.0, 330.0, 65.0],
        [-225.0, -170.0, 135.0],
        [225.0, -170.0, 135.0],
        [-150.0, 150.0, 125.0],
        [150.0, 150.0, 125.0],
    ],
    dtype=np.float64,
)
_EYE_SPAN = POSE_TEMPLATE[3, 0] - POSE_TEMPLATE[2, 0]


def angles_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of a head rotation given in camera axes (module docstring)."""
    nose_x, nose_y, nose_z = rotation @ np.array([0.0, 0.0, -1.0])  # the face's forward direction
    right_x, right_y, _ = rotation @ np.array([1.0, 0.0, 0.0])  # the face's image-right direction
    yaw = np.degrees(np.arctan2(nose_x, -nose_z))
    pitch = np.degrees(np.arctan2(-nose_y, np.hypot(nose_x, nose_z)))
    roll = np.degrees(np.arctan2(right_y, right_x))
    return np.array([yaw, pitch, roll])


def _one_pose(points: np.ndarray, height: int, width: int) -> np.ndarray:
    focal = float(max(height, width))
    camera = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    image_points = points[POSE_LANDMARKS].astype(np.float64)
    if not np.all(np.isfinite(image_points)) or np.ptp(image_points, axis=0).min() < 1.0:
        return np.full(3, np.nan)  # missing or collapsed landmarks have no pose
    # Start from a frontal head at the distance that matches the observed eye span, so the
    # iterative solver does not settle on the mirror solution behind the camera.
    eye_span_px = max(float(np.linalg.norm(image_points[3] - image_points[2])), 1.0)
    depth = focal * _EYE_SPAN / eye_span_px
    nose = image_points[0]
    tvec = np.array([[(nose[0] - width / 2.0) * depth / focal], [(nose[1] - height / 2.0) * depth / focal], [depth]])
    rvec = np.zeros((3, 1))
    ok, rvec, tvec = cv2.solvePnP(POSE_TEMPLATE, image_points, camera, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or not np.all(np.isfinite(rvec)):
        return np.full(3, np.nan)
    return angles_from_rotation(cv2.Rodrigues(rvec)[0])


def head_pose_from_landmarks(landmarks: np.ndarray, image_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N, 3) float32 yaw, pitch, roll in degrees; landmarks (N, 68, 2), image_sizes (H, W) each.

    A row is NaN where there is no pose to fit: non-finite landmarks, landmarks collapsed onto a
    point or a line, or a failed solve.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)
    if len(image_sizes) != len(landmarks):
        raise ValueError(f"{len(landmarks)} landmark sets but {len(image_sizes)} image sizes")
    poses = [_one_pose(points, int(h), int(w)) for points, (h, w) in zip(landmarks, image_sizes)]
    return np.array(poses, dtype=np.float32).reshape(-1, 3)
