"""Shot boundaries with PySceneDetect, fed frame by frame while another stage decodes.

Two detectors vote: ContentDetector (HSV change) catches most hard cuts; HistogramDetector catches
cuts between scenes of the same colours (two people before the same grey wall), which the first
misses. A cut found by either splits the shot, so a clip never spans a cut.

The histogram alone over-splits dim footage: a dark wall fills a few luma bins, so an auto-exposure
step of a few levels moves it into others and reads as a cut (an 18 s low-light talking head came out
as 9 shots). A histogram cut therefore counts only where HashDetector (a perceptual hash of the
frame's layout, normalised by its brightest pixel and thresholded at its median, so blind to global
brightness) sees the picture change too; a new person or place changes the layout, exposure does not.
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
        histogram_threshold: float = 0.1,
        min_shot_frames: int | None = None,
        scan_side: int = 128,
        hash_threshold: float = 0.25,
    ) -> None:
        """The defaults are curation's (`curate.shot_*`), so a driver is split as a curated clip is.
        `min_shot_frames`: None is half a second of frames at `fps`. `hash_threshold`: the HashDetector distance (0-1) a histogram cut must also reach; 0 lets
        every histogram cut count, as before the check existed."""
        from scenedetect import ContentDetector, HashDetector, HistogramDetector

        self.fps = fps
        min_shot_frames = round(fps / 2) if min_shot_frames is None else min_shot_frames
        self.min_shot_frames = min_shot_frames
        self.scan_side = scan_side
        self._content = ContentDetector(threshold=content_threshold, min_scene_len=min_shot_frames)
        # both report every frame over their threshold; the confirmed ones are spaced below, as the
        # histogram's own min_scene_len would, so an unconfirmed report cannot hide a real cut after it
        self._histogram = HistogramDetector(threshold=histogram_threshold, min_scene_len=0)
        self._hash = HashDetector(threshold=hash_threshold, min_scene_len=0)
        self._last_histogram_cut: int | None = None
        self._cuts: set[int] = set()
        self.num_frames = 0

    def update(self, positions: np.ndarray, frames: np.ndarray) -> None:
        """Feed RGB frames (any size; they are shrunk to `scan_side` first)."""
        from scenedetect.common import FrameTimecode

        for position, rgb in zip(positions, frames):
            position = int(position)
            small = cv2.resize(rgb, (self.scan_side, self.scan_side), interpolation=cv2.INTER_AREA)
            bgr = np.ascontiguousarray(small[:, :, ::-1])  # PySceneDetect expects OpenCV's BGR
            timecode = FrameTimecode(position, fps=self.fps)
            self._cuts.update(round(cut.seconds * self.fps) for cut in self._content.process_frame(timecode, bgr))
            histogram_cut = bool(self._histogram.process_frame(timecode, bgr))
            layout_changed = bool(self._hash.process_frame(timecode, bgr))
            if self._last_histogram_cut is None:
                self._last_histogram_cut = position
            if histogram_cut and layout_changed and position - self._last_histogram_cut >= self.min_shot_frames:
                self._cuts.add(position)
                self._last_histogram_cut = position
            self.num_frames = position + 1

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
