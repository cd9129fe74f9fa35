"""The one interface every face-analysis backend implements.

All calls take batches (many frames per call) so a Ray actor that holds the models amortises
their load over whole shots. Frames are RGB uint8 arrays of shape (H, W, 3).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) in pixels, detector score, 5 keypoints (x, y).

    Keypoint order is insightface's: left eye, right eye, nose tip, left mouth corner, right
    mouth corner (left/right as seen in the image).
    """

    box: np.ndarray  # (4,) float32
    score: float
    kps: np.ndarray  # (5, 2) float32

    @property
    def side(self) -> float:
        """The shorter side of the box, the size every face-size threshold uses."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def faces_from_detections(boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray) -> list[Face]:
    """Faces from (M, 4) x1y1x2y2 boxes, (M,) scores and (M, 5, 2) keypoints, largest box first."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return [
        Face(box=boxes[i].astype(np.float32), score=float(scores[i]), kps=kps[i].astype(np.float32))
        for i in np.argsort(-areas, kind="stable")
    ]


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Vectors (last axis) scaled to unit length in float32, so cosine similarity is a dot product."""
    vectors = np.asarray(embeddings, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class FaceAnalyzer(ABC):
    """Detector + recogniser + landmarks + head pose behind one batch API."""

    #: backend name, recorded in metadata and metric names (e.g. `csim_opencv`).
    name: str
    #: length of the identity embedding.
    embedding_dim: int
    #: cosine similarity at or above which two embeddings are taken as the same person,
    #: measured per backend on real media (docs/face.md).
    same_person_threshold: float

    @abstractmethod
    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per frame, sorted by decreasing box area."""

    @abstractmethod
    def embed(self, frames: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """(N, D) L2-normalised identity embeddings, one per (frame, face) pair."""

    @abstractmethod
    def landmarks(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """(N, 68, 2) iBUG-68 landmarks, one set per (frame, box) pair; boxes is (N, 4)."""

    def head_pose(self, landmarks: np.ndarray, image_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
        """(N, 3) yaw, pitch, roll in degrees from 68 landmarks; image_sizes are (H, W)."""
        from portraitflow.models.face.pose import head_pose_from_landmarks

        return head_pose_from_landmarks(landmarks, image_sizes)
