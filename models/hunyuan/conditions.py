"""The UNet's token conditions from the condition modules: motion tokens (SPEC 3.5) and
appearance tokens (SPEC 4.2).

Small functions over already-loaded modules, so the sampler can compute each condition once per
job or chunk, in whatever dtype and device the modules live in. (The DINO input and the pose
features are prepared in `pipeline.py`.)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from portraitflow.models.face.align import crop_square
from portraitflow.models.hunyuan.buckets import head_exp_motion_buckets
from portraitflow.models.hunyuan.dino import DinoV2WithIdAdapters
from portraitflow.models.hunyuan.expression import HeadExpression
from portraitflow.models.hunyuan.headpose import HeadPose, headpose_input
from portraitflow.models.hunyuan.image_proj import ImageProjector
from portraitflow.models.hunyuan.motion_proj import IntensityAwareMotionRefiner

#: the release computes intensity buckets and motion tokens over consecutive chunks of 25 frames
MOTION_CHUNK_FRAMES = 25
#: each side of a frame's 5-point box moves this far toward the anchor face box (SPEC 2, expression input)
EXPRESSION_PULL = 0.45


def image_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> [T, 3, size, size] float in [0, 1], bilinear with antialiasing
    (torchvision's Resize on tensors, which the release uses)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return tensor


def expression_boxes(kps: np.ndarray, anchor_boxes: ArrayLike) -> np.ndarray:
    """(T, 4) int square boxes of HeadExpression's input: each frame's 5-point box [T, 5, 2] pulled
    toward its anchor face box ((4,) or (T, 4): the release's frame-0 detector box), squared on its
    integer centre with the integer half of its larger side."""
    box = np.concatenate([kps.min(axis=1), kps.max(axis=1)], axis=1).astype(np.float64)
    box += EXPRESSION_PULL * (np.asarray(anchor_boxes, np.float64).reshape(-1, 4) - box)
    centre = ((box[:, :2] + box[:, 2:]) / 2).astype(np.int64)
    half = (np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) / 2).astype(np.int64)
    return np.concatenate([centre - half[:, None], centre + half[:, None]], axis=1)


def expression_crops(frames: np.ndarray, kps: np.ndarray, anchor_boxes: ArrayLike, size: int = 256) -> torch.Tensor:
    """[T, 3, size, size] in [0, 1]: HeadExpression's input cut from (T, H, W, 3) uint8 frames at
    `expression_boxes`, black outside the frame, then resized."""
    boxes = expression_boxes(kps, anchor_boxes)
    if (boxes[:, 2] <= boxes[:, 0]).any():
        raise ValueError("degenerate keypoints: an empty expression crop box")
    squares = [crop_square(frame, box, int(box[2] - box[0])) for frame, box in zip(frames, boxes)]
    return torch.cat([image_tensor(square[None], size) for square in squares])


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def motion_tokens_per_frame(
    refined: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor
) -> torch.Tensor:
    """[n, L, 1018] refiner tokens, [n, 3] rotation, [n, 3] translation -> [n, L, 1024].

    Each token is [refined | rotation | 0 * translation]: the release zeroes the translation
    (multiplies it by 0) but keeps its 3 slots, so the width matches the UNet's 1024.
    """
    pose = torch.cat([rotation, translation * 0], dim=-1).to(refined.dtype)
    return torch.cat([refined, pose[:, None].expand(-1, refined.shape[1], -1)], dim=-1)


def encode_motion_chunk(
    expression: HeadExpression,
    headpose: HeadPose,
    refiner: IntensityAwareMotionRefiner,
    face_images: torch.Tensor,
    pose_images: torch.Tensor,
    landmarks: ArrayLike,
) -> torch.Tensor:
    """Motion tokens [n, 64, 1024] of one chunk of n <= 25 driving frames.

    face_images: [n, 3, 256, 256] expression crops in [0, 1]; pose_images: [n, 3, 256, 256] head
    crops in [0, 1]; landmarks: [n, 5, 2], which set the chunk's one pair of intensity buckets.
    """
    head_bucket, exp_bucket = head_exp_motion_buckets(landmarks)
    device, dtype = _placement(refiner)
    features = expression(face_images.to(*_placement(expression)))
    pose = headpose(headpose_input(pose_images.to(*_placement(headpose))))
    refined = refiner(
        features.to(device, dtype),
        torch.tensor([head_bucket], dtype=torch.int32, device=device),
        torch.tensor([exp_bucket], dtype=torch.int32, device=device),
    )
    return motion_tokens_per_frame(refined, pose.rotation.to(device), pose.translation.to(device))


def appearance_tokens(
    dino: DinoV2WithIdAdapters, image_proj: ImageProjector, dino_image: torch.Tensor, id_embedding: torch.Tensor
) -> torch.Tensor:
    """Appearance tokens [B, 64, D] of the reference: DINO with identity adapters, then the projector.

    dino_image: [B, 3, 224, 224] ImageNet-normalised; id_embedding: [B, 512] or [B, 1, 512]
    L2-normalised ArcFace vector (zeros when no face or no ArcFace, as in the release). The tokens
    are the same for every frame (the release repeats them per frame; the UNet broadcasts them).
    """
    device, dtype = _placement(dino)
    identity = id_embedding.reshape(len(id_embedding), 1, -1).to(device, dtype)
    tokens = dino(dino_image.to(device, dtype), identity)
    return image_proj(tokens.to(*_placement(image_proj)))
