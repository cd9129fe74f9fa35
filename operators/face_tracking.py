"""Face tracks from detections on every Nth frame: IoU association, then linear interpolation.

Pure numpy on `Face` lists, so curation and the generation flow's driving-video motion extraction
share it. One track per face; a track ends when its face is missed for more than `max_gap`
detection frames.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from portraitflow.models.face.base import Face


@dataclass(frozen=True)
class Track:
    """A face over consecutive frames of the resampled timeline."""

    positions: np.ndarray  # (T,) consecutive frame positions
    boxes: np.ndarray  # (T, 4) x1, y1, x2, y2 (interpolated between detections)
    kps: np.ndarray  # (T, 5, 2)
    detected: np.ndarray  # (T,) bool: a detector ran and found this face on the frame

    @property
    def sides(self) -> np.ndarray:
        return np.minimum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])

    def between(self, start: int, end: int) -> "Track":
        """The part of the track within frame positions [start, end)."""
        keep = (self.positions >= start) & (self.positions < end)
        return Track(self.positions[keep], self.boxes[keep], self.kps[keep], self.detected[keep])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1, y1, x2, y2 boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def track_faces(
    detections: Sequence[tuple[int, list[Face]]],
    end: int,
    step: int,
    iou_threshold: float = 0.3,
    max_gap: int = 3,
) -> list[Track]:
    """Tracks from (position, faces) pairs sorted by position, covering frames up to `end`.

    Between two detections of a track, boxes and keypoints are interpolated linearly; after its
    last detection a track holds its box for the `step - 1` frames no detector looked at.
    """
    open_tracks: list[list[tuple[int, Face]]] = []
    closed: list[list[tuple[int, Face]]] = []
    for position, faces in detections:
        still_open = []
        for track in open_tracks:
            (closed if position - track[-1][0] > max_gap * step else still_open).append(track)
        open_tracks = still_open
        unmatched = list(range(len(faces)))
        if open_tracks and faces:
            iou = box_iou(np.stack([t[-1][1].box for t in open_tracks]), np.stack([f.box for f in faces]))
            for flat in np.argsort(-iou, axis=None):
                ti, fi = np.unravel_index(flat, iou.shape)
                if iou[ti, fi] < iou_threshold:
                    break
                if fi in unmatched and open_tracks[ti][-1][0] != position:
                    open_tracks[ti].append((position, faces[fi]))
                    unmatched.remove(fi)
        open_tracks.extend([(position, faces[fi])] for fi in unmatched)
    return [_interpolate(track, end, step) for track in sorted(closed + open_tracks, key=lambda t: t[0][0])]


def interpolate_rows(x: np.ndarray, xp: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Linear interpolation of (N, ...) values known at `xp` onto `x`, per column; held at the ends."""
    flat = np.asarray(rows).reshape(len(rows), -1)
    filled = np.stack([np.interp(x, xp, flat[:, i]) for i in range(flat.shape[1])], axis=1)
    return filled.reshape((len(x), *np.shape(rows)[1:]))


def fill_within_shots(values: np.ndarray, known: np.ndarray, shot: np.ndarray) -> np.ndarray:
    """(T, ...) values with the frames that are not `known` filled within their shot: linear
    interpolation between the shot's known frames, held at the shot's ends, never across a cut
    (each shot's values are in its own crop's pixels).

    A shot without a known frame borrows the nearest shot that has one (the lower on ties, as for
    the crop boxes) and holds that shot's value on the side facing it.
    """
    filled = np.asarray(values, dtype=np.float32).copy()
    positions = np.arange(len(values))
    indices = np.unique(shot)
    have = [int(i) for i in indices if known[shot == i].any()]
    for index in indices:
        in_shot = shot == index
        where = np.flatnonzero(in_shot & known)
        if len(where):
            filled[in_shot] = interpolate_rows(positions[in_shot], where, values[where])
            continue
        donor = min(have, key=lambda j: abs(j - int(index)))
        donor_known = np.flatnonzero((shot == donor) & known)
        filled[in_shot] = values[donor_known[-1] if donor < index else donor_known[0]]
    return filled


def fill_pose(pose: np.ndarray, shot: np.ndarray) -> np.ndarray:
    """(T, 3) yaw, pitch, roll with the frames no landmark fit found (NaN) and the profiles
    `profile_pose` left without pitch and roll filled within their shot (`fill_within_shots`) from
    the fitted frames; a profile keeps its keypoints' yaw, which has the right sign. Where only
    profiles give a pose, pitch and roll are 0 (as a profile portrait's); where none does, it stays NaN."""
    pose = np.asarray(pose, np.float32)
    fitted = np.isfinite(pose).all(axis=1)
    profile = np.isfinite(pose[:, 0]) & ~fitted
    if fitted.any():
        filled = fill_within_shots(pose, fitted, shot)
    elif profile.any():
        filled = np.nan_to_num(fill_within_shots(pose, profile, shot))
    else:
        return pose.copy()
    filled[profile, 0] = pose[profile, 0]
    return filled


def _interpolate(track: list[tuple[int, Face]], end: int, step: int) -> Track:
    known = np.array([p for p, _ in track])
    last = min(int(known[-1]) + step, end)
    positions = np.arange(int(known[0]), max(last, int(known[-1]) + 1))
    boxes = np.stack([f.box for _, f in track]).astype(np.float32)
    kps = np.stack([f.kps for _, f in track]).reshape(len(track), 10).astype(np.float32)
    boxes_out = interpolate_rows(positions, known, boxes)
    kps_out = interpolate_rows(positions, known, kps).reshape(-1, 5, 2)
    return Track(positions, boxes_out.astype(np.float32), kps_out.astype(np.float32), np.isin(positions, known))
