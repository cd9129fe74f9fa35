"""Head pose from 68 landmarks: exact recovery on projected templates, its sign convention, that
expression does not move it, and frontal / mirrored real frames."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from portraitflow.models.face.pose import POSE_LANDMARKS, POSE_TEMPLATE, angles_from_rotation, head_pose_from_landmarks

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
        nose, nose_base = landmarks[30], landmarks[33]
        left_eye, right_eye = landmarks[36], landmarks[45]
        eye_mid = (left_eye + right_eye) / 2
        if axis == 0:  # yaw > 0 <=> the nose tip moves to the image's right of the eyes' midpoint
            assert np.sign(yaw) == np.sign(nose[0] - eye_mid[0])
        if axis == 1:  # pitch > 0 <=> looking up: the tip (nearer the camera) rises above the base
            frontal = _project(np.zeros(3))
            frontal_ratio = (frontal[30, 1] - frontal[36, 1]) / (frontal[33, 1] - frontal[36, 1])
            ratio = (nose[1] - eye_mid[1]) / (nose_base[1] - eye_mid[1])
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


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation vector of a head at these angles (degrees) in the module's convention."""
    # yaw turns the nose toward +x (about -y), pitch raises it (about -x, y pointing down), roll
    # lowers the image-right eye (about +z); applied roll first, then pitch, then yaw.
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("YXZ", [-yaw, -pitch, roll], degrees=True)
    return rotation.as_rotvec()


@pytest.mark.parametrize("angles", [(30.0, 0.0, 0.0), (-30.0, 10.0, 0.0), (20.0, -15.0, 8.0), (-45.0, 5.0, -5.0),
                                    (10.0, 20.0, -10.0), (60.0, 0.0, 0.0)])
def test_combined_known_rotations_are_recovered(angles):
    """A template head turned by known yaw, pitch and roll at once, off the image centre."""
    vector = _rotation(*angles)
    focal = float(max(HEIGHT, WIDTH))
    camera = np.array([[focal, 0, WIDTH / 2], [0, focal, HEIGHT / 2], [0, 0, 1]])
    points, _ = cv2.projectPoints(POSE_TEMPLATE, vector, np.array([60.0, -40.0, 600.0]), camera, None)
    landmarks = np.zeros((68, 2))
    landmarks[:] = points.reshape(-1, 2).mean(axis=0)
    landmarks[POSE_LANDMARKS] = points.reshape(-1, 2)
    pose = head_pose_from_landmarks(landmarks[None], [(HEIGHT, WIDTH)])[0]
    # yaw and pitch are the nose's direction, which roll (applied first) does not move; roll is the
    # on-screen angle of the eye line, which yaw and pitch foreshorten a little
    expected = angles_from_rotation(cv2.Rodrigues(vector)[0])
    np.testing.assert_allclose(expected[:2], angles[:2], atol=1e-6)
    assert abs(expected[2] - angles[2]) < 2.5
    np.testing.assert_allclose(pose, expected, atol=1.0)


def test_expression_does_not_move_the_pose():
    """A smile (mouth corners out and up), an open mouth (chin down) and a pout leave the head
    where it was: the fit uses the nose and eye corners only. The six-point fit with the mouth
    corners and chin read a smile on a frontal template as about 20 degrees of pitch."""
    frontal = _project(np.zeros(3), distance=600.0)
    span = np.linalg.norm(frontal[45] - frontal[36])
    mouth_y, chin_y = frontal[33, 1] + 0.3 * span, frontal[33, 1] + 0.8 * span
    frontal[48] = frontal[33] + (-0.3 * span, 0.3 * span)
    frontal[54] = frontal[33] + (0.3 * span, 0.3 * span)
    frontal[8] = (frontal[33, 0], chin_y)
    smile, open_mouth, pout = frontal.copy(), frontal.copy(), frontal.copy()
    smile[48] += (-0.12 * span, -0.08 * span)
    smile[54] += (0.12 * span, -0.08 * span)
    open_mouth[8, 1] += 0.35 * span
    pout[48, 0] += 0.12 * span
    pout[54, 0] += 0.05 * span  # lopsided
    assert mouth_y > 0
    poses = head_pose_from_landmarks(np.stack([frontal, smile, open_mouth, pout]), [(HEIGHT, WIDTH)] * 4)
    np.testing.assert_allclose(poses, 0.0, atol=0.5)


def test_mirrored_landmarks_negate_yaw_and_roll():
    """Mirroring the image is a head turned and tilted the other way: yaw and roll change sign,
    pitch stays (iBUG-68 points swap sides under the mirror)."""
    mirror = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
                      + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
                      + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
    landmarks = _project(_rotation(25.0, 10.0, 7.0), distance=700.0)
    flipped = landmarks[mirror].copy()
    flipped[:, 0] = WIDTH - flipped[:, 0]
    pose, mirrored = head_pose_from_landmarks(np.stack([landmarks, flipped]), [(HEIGHT, WIDTH)] * 2)
    np.testing.assert_allclose(mirrored, pose * np.array([-1, 1, -1]), atol=0.5)


@pytest.fixture(scope="module")
def opencv_analyzer():
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.models.face.model_files import ModelFilesMissing
    from portraitflow.jobs.config import FaceConfig

    try:
        return create_analyzer(FaceConfig(backend="opencv"))
    except ModelFilesMissing as missing:
        pytest.skip(str(missing))


def _video_frame(path: Path, index: int) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise IndexError(index)


@pytest.mark.parametrize("clip, index", [("liveportrait_d0.mp4", 0), ("liveportrait_d18.mp4", 10),
                                         ("derived_scenecut_liveportrait_d18_to_d19.mp4", 10)])
def test_frontal_real_frames_read_near_zero_and_mirror(opencv_analyzer, media_dir: Path, clip, index):
    """MANIFEST: frontal faces. Their nose tips are 2-3% of the eye span off the eyes' midpoint
    (a few degrees); the six-point fit read d0 frame 0 as yaw -15 and its mirror as +26."""
    frame = _video_frame(media_dir / clip, index)
    frames = [frame, np.ascontiguousarray(frame[:, ::-1])]
    boxes = np.stack([opencv_analyzer.detect([f])[0][0].box for f in frames])
    landmarks = opencv_analyzer.landmarks(frames, boxes)
    pose, mirrored = opencv_analyzer.head_pose(landmarks, [f.shape[:2] for f in frames])
    assert np.all(np.abs(pose[:2]) < 7.0) and np.all(np.abs(mirrored[:2]) < 7.0)
    assert abs(pose[0] + mirrored[0]) < 2.5  # yaw changes sign, at about the same size
    assert abs(pose[2] + mirrored[2]) < 1.5  # so does roll
    assert abs(pose[1] - mirrored[1]) < 2.0  # pitch stays


def _keypoints_with_nose_at(offsets: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Detector keypoints and boxes (a 200-px box at 100..300) with the nose `offset` box widths
    right of the box centre."""
    boxes = np.tile(np.array([100, 100, 300, 300], np.float32), (len(offsets), 1))
    kps = np.tile(np.array([[170, 170], [230, 170], [200, 210], [175, 250], [225, 250]], np.float32),
                  (len(offsets), 1, 1))
    kps[:, 2, 0] = 200 + 200 * np.asarray(offsets, np.float32)
    return kps, boxes


def test_a_profile_frame_takes_the_keypoints_yaw_not_the_landmark_fits():
    """dlib lays profiles out like a near-frontal face: `inspireface_pose_left_face.jpeg` (about -80)
    read -22.8 and +1.9, `lia_ted_driving3.mp4`'s left profile +32..+46."""
    from portraitflow.models.face.pose import PROFILE_KEYPOINT_YAW, profile_pose, yaw_from_keypoints

    kps, boxes = _keypoints_with_nose_at([0.1, -0.3, -0.45, 0.48])
    assert np.abs(yaw_from_keypoints(kps, boxes))[1] < PROFILE_KEYPOINT_YAW < np.abs(yaw_from_keypoints(kps, boxes))[2]
    fitted = np.array([[8.0, 3.0, 1.0], [-25.0, 2.0, 0.0], [30.0, -9.0, 12.0], [-2.0, 5.0, 4.0]], np.float32)
    pose, profile = profile_pose(fitted, kps, boxes)
    assert profile.tolist() == [False, False, True, True]
    np.testing.assert_array_equal(pose[:2], fitted[:2])  # turned less: the fit stands
    np.testing.assert_allclose(pose[2:, 0], np.degrees(np.arcsin([-0.675, 0.72])), atol=1e-3)  # asin(1.5 x offset)
    assert np.isnan(pose[2:, 1:]).all()  # pitch and roll are left to the frames around


def test_keypoint_yaw_on_the_landmark_scale_puts_45_degrees_where_the_fit_reads_45():
    """asin(2 x offset) read 27 where the landmark fit read 20 on the shared media, so `max_abs_yaw`
    45 rejected clips at about 30-35 degrees of landmark yaw; on the fit's scale (gain 1.5) 45 is 45."""
    from portraitflow.models.face.pose import LANDMARK_SCALE_GAIN, landmark_scale_yaw, yaw_from_keypoints

    kps, boxes = _keypoints_with_nose_at([0.0, 0.1, -0.25, np.sin(np.radians(45)) / LANDMARK_SCALE_GAIN])
    raw = yaw_from_keypoints(kps, boxes)
    np.testing.assert_allclose(landmark_scale_yaw(raw), yaw_from_keypoints(kps, boxes, LANDMARK_SCALE_GAIN), atol=1e-3)
    np.testing.assert_allclose(landmark_scale_yaw(raw)[2:], [np.degrees(np.arcsin(-0.375)), 45.0], atol=1e-3)
    assert raw[3] == pytest.approx(70.5, abs=0.1)


@pytest.mark.parametrize("photo", ["inspireface_pose_left_face.jpeg", "deca_AFLW2000_image00181.jpg"])
def test_profile_photos_read_as_turned_left_and_leave_apd(opencv_analyzer, media_dir: Path, photo):
    """MANIFEST: near and full left profiles. The landmark fit read -22.6 and +2.7 (opencv)."""
    from portraitflow.models.face.images import load_image
    from portraitflow.models.face.pose import profile_pose
    from portraitflow.operators.evaluate_video import analyse_faces
    from portraitflow.operators.reference_portrait import crop_head_pose

    image = load_image(str(media_dir / photo)).rgb
    face = opencv_analyzer.detect([image])[0][0]
    fitted = crop_head_pose(opencv_analyzer, opencv_analyzer.landmarks([image], face.box[None]), [face.box],
                            [image.shape[:2]])
    pose, profile = profile_pose(fitted, face.kps[None], face.box[None])
    assert profile[0] and pose[0, 0] < -40.0
    assert np.isnan(analyse_faces(opencv_analyzer, image[None], embed=False)["pose"]).all()
