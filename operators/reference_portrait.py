"""The reference portrait of a generation job: largest face, square crop, landmarks, pose, identity.

Everything is expressed in the pixels of the square crop the animators work in; the crop box in
the original image is kept so the animated crop can be pasted back.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from portraitflow.models.animators.base import ReferenceInput
from portraitflow.models.face.align import align_arcface, crop_square, square_crop_box
from portraitflow.models.face.base import Face, FaceAnalyzer
from portraitflow.models.face.pose import profile_pose


class NoFace(ValueError):
    """The image or video holds no usable face; the message is the job's failure reason."""


class UnreadableImage(ValueError):
    """The reference is not a decodable image; the message carries models/face/images.py's reason."""


@dataclass
class PreparedReference:
    reference: ReferenceInput
    box: np.ndarray  # (4,) int square crop box (x1, y1, x2, y2) in the original image
    image_size: tuple[int, int]  # (H, W) of the original image

    def to_bytes(self) -> bytes:
        """npz bytes (no pickle), so the prepared reference travels in a Ray Data column."""
        ref = self.reference
        arrays = {"crop": ref.crop, "kps": ref.kps, "landmarks": ref.landmarks, "pose": ref.pose,
                  "aligned_face": ref.aligned_face, "box": self.box, "image_size": np.array(self.image_size)}
        if ref.embedding is not None:
            arrays["embedding"] = ref.embedding
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "PreparedReference":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            reference = ReferenceInput(
                crop=npz["crop"], kps=npz["kps"], landmarks=npz["landmarks"], pose=npz["pose"],
                aligned_face=npz["aligned_face"], embedding=npz["embedding"] if "embedding" in npz else None,
            )
            return cls(reference, npz["box"], tuple(int(v) for v in npz["image_size"]))


def to_crop(points: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Image pixels -> pixels of the `size` x `size` crop of `box` (any leading shape)."""
    box = np.asarray(box, np.float32)
    return ((np.asarray(points, np.float32) - box[:2]) * (size / float(box[2] - box[0]))).astype(np.float32)


def centred_head_pose(analyzer: FaceAnalyzer, landmarks: np.ndarray, size: int) -> np.ndarray:
    """(N, 3) head pose with each face moved to the crop's centre first.

    The pose fit assumes a camera at the image centre, so a face high in the frame reads as
    looking up; centring makes the angles depend on the head alone, not on where it sits (its
    position is transferred separately, as translation).
    """
    landmarks = np.asarray(landmarks, np.float32)
    centred = landmarks - landmarks.mean(axis=1, keepdims=True) + size / 2.0
    return analyzer.head_pose(centred, [(size, size)] * len(landmarks))


#: side of the square crop space `crop_head_pose` measures in (only the face's size in it matters)
POSE_SIZE = 512


def crop_head_pose(analyzer: FaceAnalyzer, landmarks: np.ndarray, face_boxes: list[np.ndarray],
                   image_sizes: list[tuple[int, int]]) -> np.ndarray:
    """(N, 3) head pose of each face as generation measures it: landmarks moved into the face's
    square crop (`square_crop_box` of its box, at `POSE_SIZE`) and centred there
    (`centred_head_pose`), so the angles depend on the head, not on where it sits in the frame or
    how much of the frame it fills."""
    if not len(landmarks):
        return np.zeros((0, 3), np.float32)
    in_crop = np.stack([to_crop(points, square_crop_box(box, size), POSE_SIZE)
                        for points, box, size in zip(landmarks, face_boxes, image_sizes)])
    return centred_head_pose(analyzer, in_crop, POSE_SIZE)


def reference_face(image: np.ndarray, analyzer: FaceAnalyzer) -> tuple[Face, tuple[int, int, int, int]]:
    """The largest face of an RGB reference and the square box generation crops around it; raises
    NoFace without one. Generation (every animator, the `still` baseline included) and evaluation's
    self protocol both frame the reference this way, so the scores compare the crop generation made."""
    faces = analyzer.detect([image])[0]
    if not faces:
        raise NoFace("no face in the reference image")
    return faces[0], square_crop_box(faces[0].box, image.shape[:2])


def prepare_reference(image: np.ndarray, analyzer: FaceAnalyzer, size: int, min_face_px: int = 0) -> PreparedReference:
    """The largest face of an RGB image, cropped square at `size`; raises NoFace without one, or
    with one smaller than `min_face_px` (the longer side of its box). A portrait in profile takes
    its yaw from the detector's keypoints (`profile_pose`: the landmark fit reads it as frontal or
    turned the other way) and, with no frame around to take them from, pitch and roll 0."""
    face, box = reference_face(image, analyzer)
    side = float(max(face.box[2] - face.box[0], face.box[3] - face.box[1]))
    if side < min_face_px:
        raise NoFace(f"face too small ({side:.0f} px; animate.min_face_px={min_face_px})")
    landmarks = to_crop(analyzer.landmarks([image], face.box[None])[0], box, size)
    reference = ReferenceInput(
        crop=crop_square(image, box, size),
        kps=to_crop(face.kps, box, size),
        landmarks=landmarks,
        pose=np.nan_to_num(profile_pose(centred_head_pose(analyzer, landmarks[None], size), face.kps[None],
                                        face.box[None])[0][0]),
        aligned_face=align_arcface(image, face.kps),
        embedding=analyzer.embed([image], [face])[0],
    )
    return PreparedReference(reference, box, (int(image.shape[0]), int(image.shape[1])))
