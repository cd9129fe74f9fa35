"""The `Animator` interface: one object holds a model once and animates many jobs.

Both the CPU `warp` animator and the HunyuanPortrait model implement it, so the generation
pipeline's actors never know which backend they hold.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class ReferenceInput:
    """A prepared reference portrait."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB square face crop (S = 512 by default)
    kps: np.ndarray  # (5, 2) keypoints in crop pixels
    landmarks: np.ndarray  # (68, 2) landmarks in crop pixels
    pose: np.ndarray  # (3,) yaw, pitch, roll in degrees
    aligned_face: np.ndarray  # (112, 112, 3) uint8 ArcFace-aligned face
    embedding: np.ndarray | None = None  # (D,) identity embedding of the face layer


@dataclass
class DrivingWindow:
    """A chunk of consecutive driving frames with their per-frame motion (crop coordinates)."""

    start: int  # index of the first frame in the whole driving video
    crops: np.ndarray  # (T, S, S, 3) uint8 RGB square crops, one box per shot
    kps: np.ndarray  # (T, 5, 2)
    landmarks: np.ndarray  # (T, 68, 2)
    pose: np.ndarray  # (T, 3)
    meta: dict[str, Any] = field(default_factory=dict)
    face_boxes: np.ndarray | None = None  # (T, 4) the face box each frame's shot starts with (crop pixels)
    #: (T, 5, 2) the keypoints before any smoothing in time: HunyuanPortrait's intensity buckets and
    #: expression crops read them as the release does (its detector's per-frame points); None: `kps`
    raw_kps: np.ndarray | None = None


class Animator(ABC):
    """Animates a reference with the motion of a driving video, window by window."""

    name: str
    #: the animate settings this animator reads besides every backend's (`PIPELINE_FIELDS`): a setting
    #: in neither is refused for this backend (in a sweep config, a jobs file's column, a flag), not ignored.
    params: ClassVar[tuple[str, ...]] = ()
    #: settings of every backend's (`PIPELINE_FIELDS`) that this animator's output does not depend on:
    #: refused like any other setting it does not read, and left out of its output names
    unread: ClassVar[tuple[str, ...]] = ()
    #: bumped when the same inputs and settings make another video (this animator's code, or the
    #: driving motion it reads, `EXTRACTION_VERSION`), so outputs made before get new names
    #: (`output_settings`) instead of being taken for done; 0 is left out of names, so outputs
    #: made before the field existed kept theirs
    output_version: ClassVar[int] = 0

    @abstractmethod
    def animate(
        self,
        reference: ReferenceInput,
        windows: Iterator[DrivingWindow],
        params: dict[str, Any],
    ) -> Iterator[np.ndarray]:
        """Yield (T, S, S, 3) uint8 RGB output crops for each driving window, in order.

        Memory stays bounded by the window size, whatever the length of the driving video.
        """

    def describe(self, reference: ReferenceInput) -> dict[str, Any]:
        """What produced a job's output, for its result row (`model`): at least the animator's name.
        Backends with weights add where they came from and what they fell back to."""
        return {"animator": self.name}
