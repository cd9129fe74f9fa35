"""Head pose from 68 landmarks: exact recovery on projected templates, and its sign convention."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from portraitflow.models.face.pose import POSE_LANDMARKS, POSE_TEMPLATE, head_pose_from_landmarks

HEIGHT, WIDTH = 480, 640


def _project(rotation_vector: np.ndarray, distance: float = 3000.0) -> np.ndarray:
    """68 landmarks (only the pose points filled, the rest at the nose) of the rotated template."""
    focal = float(max(HEIGHT, WIDTH))
    camera = np.array([[focal, 0, WIDTH / 2], [0, focal, HEIGHT / 2], [0, 0, 1]])
    points, _ = cv2.projectPoints(POSE_TEMPLATE, np.asarray(rotation_vector, float), np.array([0.0, 0.0, distance]),
                                  camera, None)
    landmarks = np.repeat(points.reshape(-1, 2)[:1], 68, axis=0)
    landmarks[POSE_LANDMARKS] = points.reshape(-1, 2)
    return landmarks


def test_frontal_template_gives_zero_pose():
    pose = head_pose_from_landmarks(_project(np.zeros(3))[None], [(HEIGHT, WIDTH)])
    np.testing.assert_allclose(pose, 0.0, atol=0.5)


@pytest.mark.parametrize("degrees", [-40.0, -15.0, 15.0, 40.0])
def test_single_axis_rotations_are_recovered_with_the_documented_signs(degrees):
    angle = np.radians(degrees)
    cases = {
        0: np.array([0.0, angle, 0.0]),  # about the vertical axis
        1: np.array([angle, 0.0, 0.0]),  # about the horizontal axis
        2: np.array([0.0, 0.0, angle]),  # about the optical axis
    }
    for axis, rotation in cases.items():
        landmarks = _project(rotation)
        yaw, pitch, roll = head_pose_from_landmarks(landmarks[None], [(HEIGHT, WIDTH)])[0]
        estimated = (yaw, pitch, roll)[axis]
        assert abs(abs(estimated) - abs(degrees)) < 1.0
        others = [v for i, v in enumerate((yaw, pitch, roll)) if i != axis]
        assert np.all(np.abs(others) < 1.0)
        nose, chin = landmarks[30], landmarks[8]
        left_eye, right_eye = landmarks[36], landmarks[45]
        eye_mid = (left_eye + right_eye) / 2
        if axis == 0:  # yaw > 0 <=> the nose tip moves to the image's right of the eyes' midpoint
            assert np.sign(yaw) == np.sign(nose[0] - eye_mid[0])
        if axis == 1:  # pitch > 0 <=> looking up: the nose tip moves up toward the eye line
            frontal = _project(np.zeros(3))
            frontal_ratio = (frontal[30, 1] - frontal[36, 1]) / (frontal[8, 1] - frontal[36, 1])
            ratio = (nose[1] - eye_mid[1]) / (chin[1] - eye_mid[1])
            assert np.sign(pitch) == np.sign(frontal_ratio - ratio)
        if axis == 2:  # roll > 0 <=> the eye on the image's right is lower (clockwise on screen)
            assert np.sign(roll) == np.sign(right_eye[1] - left_eye[1])


def test_batch_of_poses_and_size_mismatch():
    landmarks = np.stack([_project(np.array([0.0, 0.3, 0.0])), _project(np.array([0.0, -0.3, 0.0]))])
    poses = head_pose_from_landmarks(landmarks, [(HEIGHT, WIDTH)] * 2)
    assert poses.shape == (2, 3) and poses.dtype == np.float32
    np.testing.assert_allclose(poses[0], -poses[1], atol=0.5)
    with pytest.raises(ValueError):
        head_pose_from_landmarks(landmarks, [(HEIGHT, WIDTH)])


def test_empty_batch():
    assert head_pose_from_landmarks(np.zeros((0, 68, 2)), []).shape == (0, 3)


def test_missing_or_collapsed_landmarks_give_nan_not_a_pose():
    collapsed = np.zeros((68, 2))
    on_a_line = _project(np.zeros(3))
    on_a_line[:, 1] = 100.0
    missing = np.full((68, 2), np.nan)
    valid = _project(np.zeros(3))
    poses = head_pose_from_landmarks(np.stack([collapsed, on_a_line, missing, valid]), [(HEIGHT, WIDTH)] * 4)
    assert np.isnan(poses[:3]).all() and np.isfinite(poses[3]).all()
