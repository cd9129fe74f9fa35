"""Face crops shared by curation, generation and evaluation.

- `align_arcface`: the 112x112 ArcFace template alignment every recogniser here expects.
- `square_crop_box` + `crop_square`: HunyuanPortrait's square crop around a face (`process_bbox`
  with expand ratio 1.0), cut out with zero padding and resized to 256 or 512.
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

#: ArcFace 112x112 template: left eye, right eye, nose tip, left and right mouth corner (as seen in
#: the image), the order of `Face.kps`. The release's (SPEC section 2, `align_face`) is the 96x112
#: one with every x shifted by +8: these points.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def arcface_matrix(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """(2, 3) least-squares similarity transform taking the 5 keypoints onto the scaled template."""
    transform = SimilarityTransform.from_estimate(
        np.asarray(kps, dtype=np.float64).reshape(5, 2), ARCFACE_TEMPLATE.astype(np.float64) * (size / 112.0)
    )
    if not transform:
        raise ValueError(f"cannot align degenerate keypoints {np.asarray(kps).tolist()}")
    return transform.params[:2].astype(np.float32)


def align_arcface(frame: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """The face warped onto the ArcFace template: (size, size, C), same dtype and channel order as
    `frame`, zero outside the image. `size` is 112 for every recogniser here."""
    return cv2.warpAffine(frame, arcface_matrix(kps, size), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def square_crop_box(box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """HunyuanPortrait's square crop box (`process_bbox`, expand ratio 1.0) as int (x1, y1, x2, y2),
    exactly square (x2 - x1 == y2 - y1).

    The face box grows by its own width and height on every side (3x), is clamped to the image
    (H, W), a square with the clamped box's shorter side is centred on it and then shifted along
    the long axis toward the face centre by at most half the side difference, so it stays inside
    the image and keeps the face as central as the borders allow.
    """
    height, width = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    box_w, box_h = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - box_w, 0.0), max(y1 - box_h, 0.0)
    ex2, ey2 = min(x2 + box_w, float(width)), min(y2 + box_h, float(height))
    exp_w, exp_h = ex2 - ex1, ey2 - ey1
    side = min(exp_w, exp_h)
    centre_x, centre_y = (ex1 + ex2) / 2.0, (ey1 + ey2) / 2.0
    slack = abs(exp_w - exp_h) / 2.0
    if exp_w > exp_h:
        centre_x += float(np.clip((x1 + x2) / 2.0 - centre_x, -slack, slack))
    else:
        centre_y += float(np.clip((y1 + y2) / 2.0 - centre_y, -slack, slack))
    # one integer side for both axes, so the box is exactly square: rounding the four corners
    # independently would leave about a third of the boxes a pixel wider than tall or vice versa.
    # The side never exceeds the image's shorter side, so the clip only undoes rounding overshoot.
    side_px = int(round(side))
    x1 = int(np.clip(round(centre_x - side_px / 2.0), 0, width - side_px))
    y1 = int(np.clip(round(centre_y - side_px / 2.0), 0, height - side_px))
    return np.array([x1, y1, x1 + side_px, y1 + side_px], dtype=np.int64)


def crop_square(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Cut `box` (x1, y1, x2, y2, rounded to pixels) out of `frame`, zero-padding whatever lies
    outside the image, and resize to (size, size): area filter when shrinking, bicubic when
    enlarging."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty crop box {[x1, y1, x2, y2]}")
    height, width = frame.shape[:2]
    crop = np.zeros((y2 - y1, x2 - x1) + frame.shape[2:], dtype=frame.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        crop[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    shrinking = (x2 - x1) > size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
