"""Head pose (yaw, pitch, roll in degrees) from iBUG-68 landmarks by cv2.solvePnP.

Sign convention, for a face looking straight into the camera at (0, 0, 0):
- yaw > 0: the face turns toward the image's right (its nose points to larger x);
- pitch > 0: the face looks up (its nose points to smaller y, image up);
- roll > 0: the face's left-to-right axis (image-left eye to image-right eye) rotates clockwise
  on screen, i.e. the eye on the image's right is lower.
Pitch 0 is the head whose outer eye corners and mouth corners lie at one depth (that plane faces
the camera).

The fit uses only the rigid points, whose layout does not change with expression: the nose
(bridge 27-30, base 31-35) and the four eye corners (36, 39, 42, 45). The mouth corners and the
chin, which a smile, a pout or an open mouth move by a good part of the eye span, are left out.
The 3D positions of those points are a mean face: insightface's `meanshape_68` (the mean 3D
68-landmark shape of its 3D morphable-model fits), made mirror-symmetric and levelled to the
pitch-0 convention above, scaled to an outer eye-corner span of 90 (about millimetres).

The pinhole camera has focal length max(H, W) pixels and its centre in the middle of the image;
angles are robust to that guess at the accuracy a curation filter needs (a few degrees).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: iBUG-68 indices used for the fit: nose bridge (27-30, 30 the tip), nose base (31-35, image
#: left to right), eye corners (36 outer and 39 inner on the image's left, 42 inner and 45 outer
#: on its right).
POSE_LANDMARKS = np.array([27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])

#: The mean face at those points, in camera axes for a frontal face (x right, y down, z away from
#: the camera; outer eye-corner span 90, nose tip at the origin). See the module docstring.
POSE_TEMPLATE = np.array(
    [
        [0.0, -24.1, 11.4],
        [0.0, -15.2, 7.4],
        [0.0, -7.6, 3.9],
        [0.0, 0.0, 0.0],
        [-16.4, 15.3, 24.8],
        [-8.7, 17.9, 18.5],
        [0.0, 19.0, 14.1],
        [8.7, 17.9, 18.5],
        [16.4, 15.3, 24.8],
        [-45.0, -27.9, 34.8],
        [-17.3, -26.5, 28.4],
        [17.3, -26.5, 28.4],
        [45.0, -27.9, 34.8],
    ],
    dtype=np.float64,
)
_NOSE_TIP, _OUTER_LEFT, _OUTER_RIGHT = 3, 9, 12  # rows of POSE_LANDMARKS / POSE_TEMPLATE
_EYE_SPAN = POSE_TEMPLATE[_OUTER_RIGHT, 0] - POSE_TEMPLATE[_OUTER_LEFT, 0]


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
    eye_span_px = max(float(np.linalg.norm(image_points[_OUTER_RIGHT] - image_points[_OUTER_LEFT])), 1.0)
    depth = focal * _EYE_SPAN / eye_span_px
    nose = image_points[_NOSE_TIP]
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


#: `yaw_from_keypoints` past which a frame counts as a profile and its landmark fit is not trusted:
#: dlib lays a profile's 68 landmarks out like a near-frontal face, so the fit reads it as about
#: frontal or turned the other way. Measured on `lia_ted_driving3.mp4` (10 fps, the driver turning
#: to her left): up to a keypoint yaw of 40 (nose 0.33 of the box width off its centre) the fit
#: follows the turn (-22 to -30); from 48 on (0.37) it reads -14 to +51, +32 to +46 across the
#: near-profile frames 84-114 whose keypoints read -50 to -90.
PROFILE_KEYPOINT_YAW = 45.0
#: the gain that puts keypoint yaw on the landmark fit's scale: asin(gain x offset). Fitted on the
#: shared media's scans (41 clips, 6982 frames, landmark fit on the face centred in its crop):
#: binned by the offset, the median landmark yaw is 5.6, 10.6, 14.1, 19.7 and 20.9 degrees where
#: asin(1.5 x offset) reads 5.8, 10.4, 14.9, 19.8 and 23.6 (and asin(2 x offset) 7.8, 14.0,
#: 20.0, 26.9 and 32.3). It cannot read past about 55 (the nose at the box's edge).
LANDMARK_SCALE_GAIN = 1.5
#: share of a clip's frames in profile past which curation rejects it (`extreme_pose`): its
#: landmarks, and the expression and pose taken from them, would be mostly a frontal shape laid
#: over a profile
MAX_PROFILE_SHARE = 0.5


def nose_offset(kps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) the detector's nose keypoint's offset from its box's centre over the box width: 0
    frontal, about +-0.5 in full profile (signs as yaw); keypoints (N, 5, 2), boxes (N, 4)."""
    kps = np.asarray(kps, np.float64).reshape(-1, 5, 2)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    width = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    return (kps[:, 2, 0] - (boxes[:, 0] + boxes[:, 2]) / 2) / width


def yaw_from_keypoints(kps: np.ndarray, boxes: np.ndarray, gain: float = 2.0) -> np.ndarray:
    """(N,) float32 yaw in degrees (signs as above) from detector keypoints (N, 5, 2) and boxes (N, 4).

    The 68-point landmarks are fitted to a near-frontal shape and carry no yaw on profiles; the
    detectors' keypoints are trained on profiles too and keep the nose where it is. The yaw is
    asin(gain x `nose_offset`). The default gain 2 reads a full profile as +-90 (YuNet: -90 and -77
    degrees on `inspireface_pose_left_face.jpeg` and `deca_AFLW2000_image00181.jpg`) and is what
    tells profiles (`PROFILE_KEYPOINT_YAW`), but it overshoots the landmark fit past about 10
    degrees (27 where the fit reads 20, 32 where it reads 21); `LANDMARK_SCALE_GAIN` reads on the fit's
    scale (`landmark_scale_yaw`).
    """
    offset = nose_offset(kps, boxes)
    return np.degrees(np.arcsin(np.clip(gain * offset, -1.0, 1.0))).astype(np.float32)


def landmark_scale_yaw(keypoint_yaw: np.ndarray | float) -> np.ndarray:
    """Keypoint yaw of the default gain (asin(2 x offset)) on the landmark fit's scale
    (asin(`LANDMARK_SCALE_GAIN` x offset)), for comparing it with limits meant for the fit
    (`max_abs_yaw`): a keypoint yaw of 70.5 is 45 there, and 90 is 48.6."""
    sine = np.sin(np.radians(np.asarray(keypoint_yaw, np.float64))) * LANDMARK_SCALE_GAIN / 2.0
    return np.degrees(np.arcsin(np.clip(sine, -1.0, 1.0)))


def profile_pose(pose: np.ndarray, kps: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pose, profile): landmark-fit poses (N, 3) with the profile frames' rows replaced, and which
    frames are profiles (N,) bool: `yaw_from_keypoints` of the frame's detector keypoints (N, 5, 2)
    and face box (N, 4) beyond `PROFILE_KEYPOINT_YAW`.

    On a profile the fit is not trusted: its pitch and roll become NaN (callers fill them from the
    frames around, or leave the frame out) and its yaw is the keypoints' on the fit's scale
    (`LANDMARK_SCALE_GAIN`), whose sign is right where the fit's often is not.
    """
    pose = np.array(pose, dtype=np.float32).reshape(-1, 3)
    profile = np.abs(yaw_from_keypoints(kps, boxes)) > PROFILE_KEYPOINT_YAW
    pose[profile] = np.nan
    pose[profile, 0] = yaw_from_keypoints(np.asarray(kps).reshape(-1, 5, 2)[profile],
                                          np.asarray(boxes).reshape(-1, 4)[profile], LANDMARK_SCALE_GAIN)
    return pose, profile
