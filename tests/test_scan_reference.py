"""The clip's reference frame (`ref.jpg`, `ref_face.jpg`, training's identity image): frontal, and
also detected, whole, and with open eyes."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.operators.reference_frame import eye_aspect_ratio, inside_frame, reference_index

FRAME_HW = (400, 400)
INSIDE = [100.0, 100.0, 300.0, 300.0]
AT_LEFT_EDGE = [0.0, 100.0, 200.0, 300.0]


def _landmarks(eye_gap: float) -> np.ndarray:
    """68 points whose eyes (36-47) are 30 px wide with lids `eye_gap` apart: EAR eye_gap / 30."""
    points = np.zeros((68, 2))
    points[:, 0] = np.linspace(100, 300, 68)
    points[:, 1] = 200
    for first, x in ((36, 140.0), (42, 230.0)):
        half = eye_gap / 2
        points[first:first + 6] = [(x, 150), (x + 10, 150 - half), (x + 20, 150 - half), (x + 30, 150),
                                   (x + 20, 150 + half), (x + 10, 150 + half)]
    return points


def _clip(frames: list[tuple[tuple[float, float], bool, bool, list[float]]]):
    """(pose, landmarks, detected, boxes) from per-frame ((yaw, pitch), eyes open, detected, box)."""
    pose = np.array([[yaw, pitch, 0.0] for (yaw, pitch), *_ in frames], np.float32)
    landmarks = np.stack([_landmarks(9.0 if open_ else 2.0) for _, open_, _, _ in frames])
    detected = np.array([seen for *_, seen, _ in frames])
    boxes = np.array([box for *_, box in frames], np.float32)
    return pose, landmarks, detected, boxes


def test_eye_aspect_ratio_falls_as_the_eyes_close() -> None:
    ratios = eye_aspect_ratio(np.stack([_landmarks(9.0), _landmarks(2.0)]))
    np.testing.assert_allclose(ratios, [0.3, 2 / 30])


def test_a_box_at_the_edge_is_not_inside() -> None:
    assert inside_frame(np.array([INSIDE, AT_LEFT_EDGE, [100, 100, 400, 300]]), FRAME_HW).tolist() == [True, False, False]


def test_the_reference_is_the_most_frontal_detected_whole_open_eyed_frame() -> None:
    pose, landmarks, detected, boxes = _clip([
        ((np.nan, np.nan), True, True, INSIDE),  # no pose: argmin took the first NaN
        ((0.0, 0.0), False, True, INSIDE),  # the most frontal, but a blink
        ((1.0, 0.0), True, False, INSIDE),  # interpolated, not detected
        ((2.0, 0.0), True, True, AT_LEFT_EDGE),  # the frame may cut the face off
        ((5.0, 0.0), True, True, INSIDE),  # the one
        ((10.0, 5.0), True, True, INSIDE),
    ])
    assert reference_index(pose, landmarks, detected, boxes, FRAME_HW, np.ones(len(pose), bool)) == 4


@pytest.mark.parametrize("change, expected", [
    ("nothing detected", 2),  # the detection condition is dropped, the others kept
    ("no pose", 4),  # the first frame that meets every other condition
    ("all at the edge", 3),
])
def test_a_condition_no_frame_meets_is_dropped(change: str, expected: int) -> None:
    pose, landmarks, detected, boxes = _clip([
        ((0.0, 0.0), False, True, INSIDE),
        ((0.5, 0.0), False, False, INSIDE),
        ((1.0, 0.0), True, False, INSIDE),
        ((2.0, 0.0), True, True, AT_LEFT_EDGE),
        ((5.0, 0.0), True, True, INSIDE),
        ((10.0, 5.0), True, True, INSIDE),
    ])
    if change == "nothing detected":
        detected[:] = False
    elif change == "no pose":
        pose[:] = np.nan
    else:
        boxes[:] = AT_LEFT_EDGE
    assert reference_index(pose, landmarks, detected, boxes, FRAME_HW, np.ones(len(pose), bool)) == expected


def test_the_reference_is_a_frame_the_identity_checks_embedded() -> None:
    """A second of another person between two identity samples was the clip's most frontal stretch,
    and became its reference (`ref.jpg`, training's identity image): a person no check had seen."""
    pose, landmarks, detected, boxes = _clip([((float(yaw), 0.0), True, True, INSIDE) for yaw in (9, 8, 0, 1, 7, 6)])
    embedded = np.array([True, False, False, False, True, True])
    assert reference_index(pose, landmarks, detected, boxes, FRAME_HW, np.ones(6, bool)) == 2
    assert reference_index(pose, landmarks, detected, boxes, FRAME_HW, embedded) == 5
    pose[:] = np.nan  # no pose at all: still an embedded frame
    assert reference_index(pose, landmarks, detected, boxes, FRAME_HW, ~embedded) == 1
