"""Shot boundaries with PySceneDetect, fed frame by frame while another stage decodes.

Two detectors vote: ContentDetector (HSV change) catches most hard cuts; HistogramDetector catches
cuts between scenes of the same colours (two people before the same grey wall), which the first
misses. A cut found by either splits the shot, so a clip never spans a cut.
"""
from __future__ import annotations

import cv2
import numpy as np


class ShotDetector:
    """Accumulates cuts over frames of the resampled timeline, in order."""

    def __init__(
        self,
        fps: float,
        content_threshold: float = 27.0,
        histogram_threshold: float = 0.2,
        min_shot_frames: int = 12,
        scan_side: int = 128,
    ) -> None:
        from scenedetect import ContentDetector, HistogramDetector

        self.fps = fps
        self.min_shot_frames = min_shot_frames
        self.scan_side = scan_side
        self._detectors = [
            ContentDetector(threshold=content_threshold, min_scene_len=min_shot_frames),
            HistogramDetector(threshold=histogram_threshold, min_scene_len=min_shot_frames),
        ]
        self._cuts: set[int] = set()
        self.num_frames = 0

    def update(self, positions: np.ndarray, frames: np.ndarray) -> None:
        """Feed RGB frames (any size; they are shrunk to `scan_side` first)."""
        from scenedetect.common import FrameTimecode

        for position, rgb in zip(positions, frames):
            small = cv2.resize(rgb, (self.scan_side, self.scan_side), interpolation=cv2.INTER_AREA)
            bgr = np.ascontiguousarray(small[:, :, ::-1])  # PySceneDetect expects OpenCV's BGR
            timecode = FrameTimecode(int(position), fps=self.fps)
            for detector in self._detectors:
                self._cuts.update(round(cut.seconds * self.fps) for cut in detector.process_frame(timecode, bgr))
            self.num_frames = int(position) + 1

    def cuts(self) -> list[int]:
        """Positions where a new shot starts; reports of both detectors within a shot merge."""
        merged: list[int] = []
        for cut in sorted(c for c in self._cuts if 0 < c < self.num_frames):
            if not merged or cut - merged[-1] >= self.min_shot_frames:
                merged.append(cut)
        return merged

    def shots(self) -> list[tuple[int, int]]:
        """[start, end) frame ranges of the shots."""
        edges = [0, *self.cuts(), self.num_frames]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
