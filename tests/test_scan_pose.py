"""Curation's per-frame head pose and its pose filter: the convention generation and evaluation use
(landmarks centred in the face's square crop), keypoint yaw on the landmark fit's scale, profiles."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.pose import POSE_LANDMARKS, POSE_TEMPLATE, head_pose_from_landmarks

FRAME_HW = (720, 1280)


class _PoseOnly:
    def head_pose(self, landmarks: np.ndarray, image_sizes: list) -> np.ndarray:
        return head_pose_from_landmarks(landmarks, image_sizes)


def _face_at(centre: tuple[float, float], yaw: float = 10.0, pitch: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (68, 2) of the mean face turned by `yaw` and `pitch` (a weak-perspective view: the
    same picture wherever it sits), its nose at `centre`, and its detector box."""
    head = Rotation.from_euler("yx", [-yaw, -pitch], degrees=True).apply(POSE_TEMPLATE)
    image = head[:, :2] * 1.2 + np.array(centre)
    landmarks = np.repeat(image[3:4], 68, axis=0)
    landmarks[POSE_LANDMARKS] = image
    low, high = image.min(axis=0) - 40, image.max(axis=0) + 40
    return landmarks.astype(np.float32), np.concatenate([low, high]).astype(np.float32)


def test_the_scan_pose_does_not_depend_on_where_the_face_sits_and_is_evaluations():
    """The scan fitted the pose on the whole frame, whose camera is at the frame's centre: the same
    face high in the frame read more pitch there (5-9 degrees on the shared media) than generation
    and evaluation, which centre it in its crop, ever measure."""
    from portraitflow.operators.reference_portrait import crop_head_pose
    from portraitflow.operators.face_scan import scan_pose

    (middle, middle_box), (high, high_box) = _face_at((640, 360)), _face_at((640, 200))
    landmarks, boxes = np.stack([middle, high]), np.stack([middle_box, high_box])
    kps = np.zeros((2, 5, 2), np.float32)
    kps[:, :, 0] = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None]  # the nose at the box centre: frontal
    whole_frame = head_pose_from_landmarks(landmarks, [FRAME_HW] * 2)
    assert abs(whole_frame[1, 1] - whole_frame[0, 1]) > 5.0  # what the scan stored
    pose = scan_pose(_PoseOnly(), landmarks, boxes, kps, FRAME_HW)
    np.testing.assert_allclose(pose[1], pose[0], atol=0.1)
    np.testing.assert_allclose(pose, crop_head_pose(_PoseOnly(), landmarks, list(boxes), [FRAME_HW] * 2), atol=1e-4)


def test_profile_rows_keep_the_keypoints_yaw_and_take_pitch_and_roll_from_the_frames_around():
    from portraitflow.operators.face_tracking import fill_pose

    pose = np.array([[10, 4, 1], [-44, np.nan, np.nan], [np.nan, np.nan, np.nan], [20, 8, 3]], np.float32)
    np.testing.assert_allclose(fill_pose(pose, np.zeros(4, np.int64)),
                               [[10, 4, 1], [-44, 16 / 3, 5 / 3], [50 / 3, 20 / 3, 7 / 3], [20, 8, 3]], atol=1e-4)


def test_a_pose_only_profiles_give_has_their_yaw_and_level_pitch_and_roll_and_none_stays_unknown():
    from portraitflow.operators.face_tracking import fill_pose

    profiles = np.array([[-50, np.nan, np.nan], [np.nan, np.nan, np.nan], [-46, np.nan, np.nan]], np.float32)
    np.testing.assert_allclose(fill_pose(profiles, np.zeros(3, np.int64)), [[-50, 0, 0], [-48, 0, 0], [-46, 0, 0]])
    assert np.isnan(fill_pose(np.full((2, 3), np.nan, np.float32), np.zeros(2, np.int64))).all()


def _first_pass(nose_offset: float, cfg: CurateConfig):
    from portraitflow.operators.decode import VideoInfo
    from portraitflow.operators.face_scan import _cheap_checks
    from portraitflow.operators.face_tracking import Track

    frames = 100
    kps = np.tile(np.array([[170, 170], [230, 170], [200 + 200 * nose_offset, 210], [175, 250], [225, 250]],
                           np.float32), (frames, 1, 1))
    track = Track(np.arange(frames), np.tile(np.array([100, 100, 300, 300], np.float32), (frames, 1)), kps,
                  np.ones(frames, bool))
    return _cheap_checks(track, [track], 0, frames, VideoInfo(512, 512, 25.0, frames), np.ones(2, np.float32), 1, cfg)


@pytest.mark.parametrize(("nose_offset", "max_abs_yaw", "reason"), [
    (0.30, 30.0, None),  # asin(0.6) = 36.9 read as 36.9 > 30; on the fit's scale asin(0.45) = 26.7
    (0.34, 25.0, "extreme_pose"),  # 30.7 on the fit's scale
    (0.30, 45.0, None),
    (0.40, 45.0, "extreme_pose"),  # a profile: its landmark fit is not trusted
    (0.45, 90.0, "extreme_pose"),  # whatever the yaw limit, a clip mostly in profile has no usable landmarks
])
def test_the_first_pass_compares_keypoint_yaw_on_the_landmark_scale_and_refuses_profiles(
        nose_offset: float, max_abs_yaw: float, reason: str | None) -> None:
    candidate = _first_pass(nose_offset, CurateConfig(max_abs_yaw=max_abs_yaw))
    assert candidate.reason == reason
    assert candidate.measures["profile_share"] == (1.0 if nose_offset >= 0.4 else 0.0)
