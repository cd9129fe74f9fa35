"""Which frame of a kept clip is its reference (`ref_index`, stored by the scan: operators/face_scan.py).

The most frontal frame alone is often a blink or a look down; these pure functions on the clip's
per-frame arrays also ask for a detected, whole face with open eyes, on a frame the identity checks embedded.
"""
from __future__ import annotations

import numpy as np

#: how near (a share of the frame's shorter side) a face box may come to the frame's edge and still
#: show the whole face, for the reference frame's choice
REF_BORDER_MARGIN = 0.01


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(T,) mean eye aspect ratio of the two eyes of iBUG-68 landmarks (T, 68, 2): eyelid gaps over
    eye width, so it falls as the eyes close (a blink or a look down) whatever the face size."""
    points = np.asarray(landmarks, np.float64)
    ratios = []
    for eye in (points[:, 36:42], points[:, 42:48]):
        lids = np.linalg.norm(eye[:, [1, 2]] - eye[:, [5, 4]], axis=-1).sum(axis=1)
        ratios.append(lids / np.maximum(2 * np.linalg.norm(eye[:, 0] - eye[:, 3], axis=-1), 1e-6))
    return (ratios[0] + ratios[1]) / 2


def inside_frame(boxes: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """(T,) whether each face box (x1, y1, x2, y2) keeps REF_BORDER_MARGIN of the frame's shorter
    side from every edge: a box at the edge may hold a face the frame cuts off."""
    height, width = frame_hw
    gap = REF_BORDER_MARGIN * min(height, width)
    x1, y1, x2, y2 = np.asarray(boxes, np.float64).T
    return (x1 > gap) & (y1 > gap) & (x2 < width - gap) & (y2 < height - gap)


def reference_index(pose: np.ndarray, landmarks: np.ndarray, detected: np.ndarray, boxes: np.ndarray,
                    frame_hw: tuple[int, int], embedded: np.ndarray) -> int:
    """The clip's reference frame (`ref.jpg`, `ref_face.jpg`, training's identity image): among the
    `embedded` frames (those whose person the identity checks compared: any other could show
    someone else, a second of another person had become a clip's reference), the smallest
    |yaw| + |pitch| among frames with a finite pose that were detected (not interpolated), show the
    whole face (`inside_frame`) and have their eyes open (eye aspect ratio at least the clip's median).

    The most frontal frame alone is often a blink or a look down, which the pose fit reads as
    frontal. Where no frame meets a condition together with those before it, that condition is
    dropped, so a clip always gets the best frame it has.
    """
    embedded = np.asarray(embedded, bool)
    if not embedded.any():
        raise ValueError("no embedded frame to take the reference from")
    turn = np.abs(np.asarray(pose, np.float64)[:, :2]).sum(axis=1)
    usable = np.isfinite(turn) & embedded
    if not usable.any():  # no pose at all: choose on the other conditions alone
        turn, usable = np.zeros(len(turn)), embedded.copy()
    ratio = eye_aspect_ratio(landmarks)
    eyes_open = ratio >= np.nanmedian(ratio) if np.isfinite(ratio).any() else np.ones(len(ratio), bool)
    for wanted in (np.asarray(detected, bool), inside_frame(boxes, frame_hw), eyes_open):
        if (usable & wanted).any():
            usable = usable & wanted
    candidates = np.flatnonzero(usable)
    return int(candidates[np.argmin(turn[candidates])])
