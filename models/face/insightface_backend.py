"""insightface backend: SCRFD detector + ArcFace-style recogniser from a local model pack."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from portraitflow.models.face import model_files
from portraitflow.models.face.align import align_arcface
from portraitflow.models.face.base import Face, FaceAnalyzer, faces_from_detections, l2_normalise
from portraitflow.models.face.landmarks import DlibLandmarker

logger = logging.getLogger(__name__)

#: sha256 of the recogniser `same_person_threshold` was measured with (mobilefacenet_128d.onnx of
#: ../shared/models/insightface); another recogniser gets a warning to measure its own.
MEASURED_RECOGNISER_SHA256 = "e72a5710cce378dc46472b6b845cb90647634f2738d8c3e581735cf195b9866f"

#: SCRFD scores faces that fill the whole frame low or misses them; every frame is detected with a
#: black border of this fraction of its shorter side (the pack's README asks for about a third).
DETECT_BORDER = 1.0 / 3.0


class InsightFaceAnalyzer(FaceAnalyzer):
    """SCRFD + recogniser of an insightface pack (model_zoo.get_model) + dlib landmarks.

    Needs the pack on disk: raises model_files.ModelFilesMissing naming the expected layout.
    """

    name = "insightface"
    #: measured on ../shared/media by benchmarks/face_thresholds.py (docs/face.md) with the shared
    #: test pack's recogniser (MEASURED_RECOGNISER_SHA256): midway between the highest
    #: different-people cosine (0.46) and the 1st percentile of same-video ones (0.61).
    same_person_threshold = 0.53

    def __init__(self, root: str | None, pack: str, det_score_threshold: float = 0.6, det_size: int = 640,
                 num_threads: int = 0) -> None:
        files = model_files.insightface_models(root, pack)
        import onnxruntime
        from insightface.model_zoo import model_zoo  # heavy import, only for this backend

        options = onnxruntime.SessionOptions()
        if num_threads > 0:  # 0: ONNX Runtime's default, a thread per core of the machine
            options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
        session = {"providers": ["CPUExecutionProvider"], "sess_options": options}
        self._detector = model_zoo.get_model(str(files["detector"]), **session)
        self._recogniser = model_zoo.get_model(str(files["recogniser"]), **session)
        if self._detector is None or getattr(self._detector, "taskname", "") != "detection":
            raise model_files.ModelFilesMissing(f"{files['detector']} is not an SCRFD detector")
        if self._recogniser is None or getattr(self._recogniser, "taskname", "") != "recognition":
            raise model_files.ModelFilesMissing(f"{files['recogniser']} is not a 112x112 recogniser")
        self.det_size = det_size
        self._detector.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=det_score_threshold)
        self.embedding_dim = int(self._recogniser.output_shape[-1])
        self._batched_recogniser = self._recogniser.input_shape[0] != 1
        self._landmarker = DlibLandmarker()
        if model_files.file_sha256(files["recogniser"]) != MEASURED_RECOGNISER_SHA256:
            logger.warning("same_person_threshold %.2f was measured with another recogniser than %s; run "
                           "benchmarks/face_thresholds.py to measure it for this pack",
                           self.same_person_threshold, files["recogniser"])

    def _detect_one(self, frame: np.ndarray) -> list[Face]:
        border = max(1, round(min(frame.shape[:2]) * DETECT_BORDER))
        padded = cv2.copyMakeBorder(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), border, border, border, border,
                                    cv2.BORDER_CONSTANT, value=0)
        rows, kps = self._detector.detect(padded, input_size=(self.det_size, self.det_size))
        if len(rows) == 0:
            return []
        return faces_from_detections(rows[:, :4] - border, rows[:, 4], kps - border)

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self._detect_one(frame) for frame in frames]

    def embed(self, frames: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        if len(frames) != len(faces):
            raise ValueError(f"{len(frames)} frames but {len(faces)} faces")
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        size = int(self._recogniser.input_size[0])
        # get_feat takes BGR crops (it swaps to RGB itself); packs exported with a fixed batch of
        # one (like the shared test pack) are run crop by crop, the others in one batch.
        crops = [cv2.cvtColor(align_arcface(frame, face.kps, size), cv2.COLOR_RGB2BGR)
                 for frame, face in zip(frames, faces)]
        batch = len(crops) if self._batched_recogniser else 1
        features = [self._recogniser.get_feat(crops[i:i + batch]) for i in range(0, len(crops), batch)]
        return l2_normalise(np.concatenate(features).reshape(len(crops), -1))

    def landmarks(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        return self._landmarker(frames, boxes)
