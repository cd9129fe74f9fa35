"""The `warp` animator on a synthetic face: still drivers keep the reference, motion moves it."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.models.animators.base import DrivingWindow, ReferenceInput
from portraitflow.models.animators.warp import (
    INNER_MOUTH,
    PiecewiseAffineRenderer,
    WarpAnimator,
    _MotionTransfer,
    head_frame,
    lift,
    rotate_project,
)
from portraitflow.operators.paste_back import feathered_mask, paste_back

SIZE = 256


def synthetic_landmarks(cx: float = 128, eye_y: float = 110, half: float = 55, mouth_open: float = 0.0) -> np.ndarray:
    """A frontal iBUG-68 layout: jaw, brows, nose, eyes, lips (inner lips `mouth_open` apart)."""
    points = np.zeros((68, 2))
    theta = np.pi - np.arange(17) * np.pi / 16
    points[0:17] = np.column_stack([cx + half * np.cos(theta), eye_y + 1.3 * half * np.sin(theta)])
    for start, side in ((17, -1), (22, 1)):
        xs = cx + side * half * np.linspace(0.75, 0.15, 5)[:: -side]
        points[start : start + 5] = np.column_stack([xs, eye_y - 0.4 * half - 0.08 * half * np.sin(np.linspace(0, np.pi, 5))])
    points[27:31] = np.column_stack([np.full(4, cx), eye_y + np.linspace(0.05, 0.55, 4) * half])
    points[31:36] = np.column_stack([cx + np.linspace(-0.2, 0.2, 5) * half, np.full(5, eye_y + 0.65 * half)])
    hexagon = np.array([[-1, 0], [-0.5, -1], [0.5, -1], [1, 0], [0.5, 1], [-0.5, 1]])
    for start, side in ((36, -1), (42, 1)):
        points[start : start + 6] = [cx + side * 0.42 * half, eye_y] + hexagon * [0.15 * half, 0.06 * half]
    mouth_y = eye_y + 0.95 * half
    outer = np.linspace(np.pi, -np.pi, 13)[:-1]  # 48 left corner, upper lip, 54 right corner, lower lip
    points[48:60] = np.column_stack([cx + 0.45 * half * np.cos(outer), mouth_y - 0.18 * half * np.sin(outer) + 0.3 * mouth_open * half * (np.sin(outer) < 0)])
    inner = np.linspace(np.pi, -np.pi, 9)[:-1]
    gap = (0.01 + 0.3 * mouth_open) * half
    points[60:68] = np.column_stack([cx + 0.3 * half * np.cos(inner), mouth_y - np.sign(np.round(np.sin(inner), 6)) * gap / 2])
    points[4:13, 1] += 0.3 * mouth_open * half * np.sin(theta[4:13])  # the jaw drops with the mouth
    return points.astype(np.float32)


def textured_crop(seed: int = 0) -> np.ndarray:
    """Smooth random texture, so any displacement of pixels shows in the image."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (SIZE // 8, SIZE // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def reference(landmarks: np.ndarray | None = None) -> ReferenceInput:
    landmarks = synthetic_landmarks() if landmarks is None else landmarks
    return ReferenceInput(crop=textured_crop(), kps=landmarks[[36, 45, 30, 48, 54]], landmarks=landmarks,
                          pose=np.zeros(3, np.float32), aligned_face=np.zeros((112, 112, 3), np.uint8))


def window(landmarks: list[np.ndarray], poses: list[tuple[float, float, float]], start: int = 0) -> DrivingWindow:
    marks = np.stack(landmarks).astype(np.float32)
    return DrivingWindow(start=start, crops=np.zeros((len(marks), SIZE, SIZE, 3), np.uint8), kps=marks[:, [36, 45, 30, 48, 54]],
                         landmarks=marks, pose=np.array(poses, np.float32))


def animate(ref: ReferenceInput, windows: list[DrivingWindow], **params) -> np.ndarray:
    return np.concatenate(list(WarpAnimator().animate(ref, iter(windows), params)))


def turned(landmarks: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """The landmarks of the same face turned on the generic head, as a driver would show them."""
    centre, half = head_frame(landmarks)
    return rotate_project(lift(landmarks, centre, half, relief=True), centre, half, yaw, pitch).astype(np.float32)


def test_the_identity_warp_reproduces_the_image() -> None:
    ref = reference()
    motion = _MotionTransfer(ref, "relative", 1.0, 1.0)
    renderer = PiecewiseAffineRenderer(ref.crop, motion.source_points)
    assert np.abs(renderer.render(motion.source_points).astype(int) - ref.crop).max() <= 1


def test_a_still_driver_keeps_the_reference_whatever_its_face() -> None:
    driver = synthetic_landmarks(cx=140, eye_y=100, half=40)  # another face, smaller and elsewhere
    out = animate(reference(), [window([driver] * 3, [(10.0, -5.0, 3.0)] * 3)])
    assert out.shape == (3, SIZE, SIZE, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference().crop).mean() < 1.0


def test_an_opening_mouth_opens_the_reference_mouth_and_darkens_it() -> None:
    ref = reference()
    driver = [synthetic_landmarks(cx=140, half=40), synthetic_landmarks(cx=140, half=40, mouth_open=1.0)]
    out = animate(ref, [window(driver, [(0.0, 0.0, 0.0)] * 2)])
    transfer = _MotionTransfer(ref, "relative", 1.0, 1.0)
    transfer.step(driver[0].astype(float), np.zeros(3), 0)
    lips = transfer.step(driver[1].astype(float), np.zeros(3), 0)[0][INNER_MOUTH]
    assert lips[5:8, 1].mean() - lips[1:4, 1].mean() > 0.25 * 55  # scaled to the reference's face size
    cx, cy = np.round(lips.mean(axis=0)).astype(int)
    assert out[1, cy - 2 : cy + 3, cx - 4 : cx + 5].mean() < 0.6 * ref.crop[cy - 2 : cy + 3, cx - 4 : cx + 5].mean()
    still = animate(ref, [window(driver, [(0.0, 0.0, 0.0)] * 2)], expression_multiplier=0.0)
    assert np.abs(still[1].astype(int) - ref.crop).mean() < 1.0


@pytest.mark.parametrize("yaw, pitch", [(15.0, 0.0), (-15.0, 0.0), (0.0, 12.0), (0.0, -12.0)])
def test_head_turns_move_the_nose_the_way_the_pose_says(yaw: float, pitch: float) -> None:
    ref = reference()
    driver = synthetic_landmarks(cx=140, half=40)
    transfer = _MotionTransfer(ref, "relative", 1.0, 1.0)
    transfer.step(driver.astype(float), np.zeros(3), 0)
    moved, _ = transfer.step(turned(driver, yaw, pitch).astype(float), np.array([yaw, pitch, 0.0]), 0)
    nose_shift = (moved[30] - moved[[0, 16]].mean(axis=0)) - (ref.landmarks[30] - ref.landmarks[[0, 16]].mean(axis=0))
    assert np.sign(nose_shift[0]) == np.sign(yaw) or yaw == 0
    assert np.sign(nose_shift[1]) == -np.sign(pitch) or pitch == 0  # looking up moves the nose up
    assert np.abs(nose_shift[[0, 1][pitch != 0]]) > 5
    frozen = _MotionTransfer(ref, "relative", 0.0, 1.0)
    frozen.step(driver.astype(float), np.zeros(3), 0)
    still, _ = frozen.step(turned(driver, yaw, pitch).astype(float), np.array([yaw, pitch, 0.0]), 0)
    assert np.abs(still - ref.landmarks).max() < 0.3 * np.abs(moved - ref.landmarks).max()


def test_a_driver_crossing_its_crop_moves_the_reference_head_a_bounded_way() -> None:
    """A singer walking across a stage (`face_recognition_short_hamilton_clip.mp4`) and a pedestrian
    walking up to the camera moved the driver's face far in its shot's fixed crop: followed one for
    one, the portrait's head was pushed into a corner and cut along the crop's edge."""
    from portraitflow.models.animators.warp import MAX_SCALE, MAX_SHIFT

    ref = reference()
    _, half = head_frame(ref.landmarks)
    start = synthetic_landmarks(cx=90, half=30)

    def moved(driver: np.ndarray) -> np.ndarray:
        transfer = _MotionTransfer(ref, "relative", 1.0, 0.0)
        transfer.step(start.astype(float), np.zeros(3), 0)
        return transfer.step(driver.astype(float), np.zeros(3), 0)[0]

    def size(marks: np.ndarray) -> float:
        return float(np.ptp(marks[:, 0]))

    far = moved(synthetic_landmarks(cx=200, half=60))  # across the crop, twice as large
    assert size(far) / size(ref.landmarks) <= MAX_SCALE + 0.01
    assert np.linalg.norm(far.mean(axis=0) - ref.landmarks.mean(axis=0)) <= MAX_SHIFT * half * MAX_SCALE + 1.0
    assert 0 < far.min() and far.max() < SIZE  # the head whole inside the crop
    near = moved(start + np.float32([2.0, -1.0]))  # a talking head's sway: followed as it is
    sway = (near - ref.landmarks).mean(axis=0)  # 2 px of a 30-px half-width, on the reference's
    np.testing.assert_allclose(sway, np.array([2.0, -1.0]) * half / 30, rtol=0.02)


def test_relative_motion_restarts_at_each_shot() -> None:
    ref = reference()
    first, second = synthetic_landmarks(cx=140, half=40), synthetic_landmarks(cx=100, half=50, mouth_open=0.6)
    shots = window([first, second], [(0.0, 0.0, 0.0)] * 2)
    shots.meta["shot"] = np.array([0, 1])
    out = animate(ref, [shots])
    assert np.abs(out[1].astype(int) - ref.crop).mean() < 1.0  # a new shot's first frame is its anchor


def test_absolute_motion_takes_the_drivers_expression() -> None:
    ref = reference()
    open_driver = synthetic_landmarks(cx=140, half=40, mouth_open=1.0)
    relative = _MotionTransfer(ref, "relative", 1.0, 1.0).step(open_driver.astype(float), np.zeros(3), 0)[0]
    absolute = _MotionTransfer(ref, "absolute", 1.0, 1.0).step(open_driver.astype(float), np.zeros(3), 0)[0]
    gap = lambda marks: marks[65:68, 1].mean() - marks[61:64, 1].mean()  # noqa: E731
    assert abs(gap(relative) - gap(ref.landmarks)) < 1.0
    assert gap(absolute) > gap(ref.landmarks) + 0.2 * 55


def test_windows_stream_in_order_and_keep_their_lengths() -> None:
    driver = [synthetic_landmarks(cx=140, half=40, mouth_open=m) for m in np.linspace(0, 1, 7)]
    chunks = list(WarpAnimator().animate(reference(), iter([window(driver[:4], [(0, 0, 0)] * 4),
                                                             window(driver[4:], [(0, 0, 0)] * 3, start=4)]), {}))
    assert [len(c) for c in chunks] == [4, 3]
    darkness = [c[i].mean() for c in chunks for i in range(len(c))]
    assert darkness[0] > darkness[-1]  # the mouth keeps opening across the window boundary


def test_bad_motion_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="relative or absolute"):
        animate(reference(), [window([synthetic_landmarks()], [(0, 0, 0)])], motion="sideways")


def test_paste_back_blends_the_crop_into_the_full_image() -> None:
    mask = feathered_mask(100, 0.1)
    assert mask[50, 50, 0] == 1.0 and mask[0, 50, 0] < 0.05 and mask[5, 50, 0] < mask[9, 50, 0]
    image = np.full((120, 160, 3), 50, np.uint8)
    crop = np.full((1, 64, 64, 3), 200, np.uint8)
    box = np.array([100, -20, 200, 80])  # reaches past the right and top edges
    (frames,) = list(paste_back(image, [crop], box, 0.1))
    assert frames.shape == (1, 120, 160, 3)
    assert frames[0, 30, 150, 0] == 200 and frames[0, 100, 20, 0] == 50 and frames[0, 79, 150, 0] < 120
