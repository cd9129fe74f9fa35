"""`warp` pasted back: the band that paste-back blends with the still photo is left as it was (no
second, half-transparent shoulder along the seam), while the face keeps its motion."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import Delaunay
from test_warp import SIZE, animate, reference, synthetic_landmarks, turned, window

from portraitflow.models.animators.warp import WarpAnimator, _MotionTransfer, still_band
from portraitflow.operators.paste_back import feathered_mask

#: the driver's head: (yaw, pitch, shift in driver pixels) per frame, the first the anchor
HEAD_MOTION = [(0.0, 0.0, (0.0, 0.0)), (18.0, 0.0, (7.0, 3.0)), (-18.0, 8.0, (-7.0, 5.0)),
               (0.0, -12.0, (3.0, -4.0)), (12.0, 10.0, (-5.0, -3.0))]


def driving(motion: list[tuple[float, float, tuple[float, float]]] = HEAD_MOTION):
    """A driver that turns, nods and moves its head (and opens its mouth on the last frame)."""
    face = synthetic_landmarks(cx=140, half=40)
    marks = [turned(face, yaw, pitch) + np.array(shift, np.float32) for yaw, pitch, shift in motion]
    marks[-1] = marks[-1] + (synthetic_landmarks(cx=140, half=40, mouth_open=1.0) - face)
    return window(marks, [(yaw, pitch, 0.0) for yaw, pitch, _ in motion])


def blended(feather: float) -> np.ndarray:
    """(SIZE, SIZE) bool: where paste-back mixes the crop with the still photo (its mask below 1)."""
    return feathered_mask(SIZE, feather)[..., 0] < 1.0


def inner_face(landmarks: np.ndarray) -> tuple[slice, slice]:
    """Eyes to mouth, eye corner to eye corner: the face's middle, far from the ring and the band."""
    x1, x2 = int(landmarks[36, 0]), int(landmarks[45, 0]) + 1
    y1, y2 = int(landmarks[37, 1]), int(landmarks[57, 1]) + 1
    return slice(y1, y2), slice(x1, x2)


@pytest.mark.parametrize("feather", [None, 0.05])
def test_pasted_back_the_blended_band_stays_still_while_the_face_moves(feather: float | None) -> None:
    ref = reference(synthetic_landmarks(half=45))
    params = {"paste_back": True} if feather is None else {"paste_back": True, "feather": feather}
    out = animate(ref, [driving()], **params).astype(int)
    band = blended(0.1 if feather is None else feather)
    for frame in out[1:]:
        assert np.abs(frame - ref.crop)[band].max() <= 1  # the still photo's pixels, nothing moved in
    face = inner_face(ref.landmarks)
    assert min(np.abs(frame - ref.crop)[face].mean() for frame in out[1:]) > 8.0  # the face moves


def test_pasted_back_the_face_moves_as_in_the_crop() -> None:
    """The frame holds the band, not the face: its middle is warped exactly as without paste-back."""
    ref = reference(synthetic_landmarks(half=45))
    pasted = animate(ref, [driving()], paste_back=True).astype(int)
    crop = animate(ref, [driving()], paste_back=False).astype(int)
    face = inner_face(ref.landmarks)
    assert np.abs(pasted - crop)[:, face[0], face[1]].max() <= 1
    moving = _MotionTransfer(ref, "relative", 1.0, 1.0)
    held = _MotionTransfer(ref, "relative", 1.0, 1.0, still_band(SIZE, 0.1, 4))
    win = driving()
    for t in range(len(win.landmarks)):
        args = win.landmarks[t].astype(float), win.pose[t].astype(float), 0
        assert np.array_equal(moving.step(*args)[0], held.step(*args)[0])


def test_without_paste_back_the_crop_moves_out_to_its_edge() -> None:
    """Crop-only outputs have no seam: the motion still reaches the crop's edge there."""
    ref = reference(synthetic_landmarks(half=45))
    out = animate(ref, [driving()]).astype(int)
    assert max(np.abs(frame - ref.crop)[blended(0.1)].max() for frame in out[1:]) > 20


@pytest.mark.parametrize("paste_back", [False, True])
def test_a_still_driver_keeps_a_face_that_fills_the_crop(paste_back: bool) -> None:
    """A head outline grown past the crop's edge is held inside it: a still driver moves nothing."""
    ref = reference(synthetic_landmarks(eye_y=115, half=80))
    driver = synthetic_landmarks(cx=140, half=40)
    out = animate(ref, [window([driver] * 2, [(5.0, -3.0, 0.0)] * 2)], paste_back=paste_back)
    assert np.abs(out.astype(int) - ref.crop).max() <= 1


@pytest.mark.parametrize("half, eye_y", [(45, 110), (62, 120), (70, 105)])
def test_pasted_back_no_triangle_beside_the_face_folds(half: float, eye_y: float) -> None:
    """Large moves of faces that leave room to the band, or nearly touch it (a chin that rises off
    it, a forehead pushed into it): the frame and the ring give way before anything folds."""
    ref = reference(synthetic_landmarks(eye_y=eye_y, half=half))
    transfer = _MotionTransfer(ref, "relative", 1.0, 1.0, still_band(SIZE, 0.1, WarpAnimator().map_step))
    triangles = Delaunay(transfer.source_points, qhull_options="QJ").simplices
    face, ring, border = len(transfer.ref_face), transfer.ring_kept.sum(), len(transfer.border)
    held = np.zeros(len(transfer.source_points), dtype=bool)
    held[face : face + ring] = held[face + ring + border :] = True  # the ring's points, the frame
    beside = triangles[held[triangles].any(axis=1)]  # (the face pressed on the crop's edge folds anyway)

    def orientation(points: np.ndarray) -> np.ndarray:
        a, b, c = points[beside[:, 0]], points[beside[:, 1]], points[beside[:, 2]]
        return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))

    rest = orientation(transfer.source_points)
    moves = [(yaw, pitch, (dx, dy)) for yaw in (-20.0, 0.0, 20.0) for pitch in (-15.0, 15.0)
             for dx, dy in ((0.0, 0.0), (12.0, 0.0), (-12.0, 0.0), (0.0, 12.0), (0.0, -12.0))]
    win = driving([(0.0, 0.0, (0.0, 0.0))] + moves)
    for t in range(len(win.landmarks) - 1):  # the last frame opens the mouth: the face's own matter
        points = transfer.step(win.landmarks[t].astype(float), win.pose[t].astype(float), 0)[1]
        assert (orientation(points) == rest).all(), moves[t - 1]
