"""The driving video's motion: shots, the driver's face track, one crop box per shot, and per-frame
keypoints, landmarks and head pose in that crop's pixels; then the windows the animators consume.

Head pose is the landmark fit (`centred_head_pose`) except on profiles (`models.face.pose.profile_pose`:
the detector keypoints say the head is turned past `PROFILE_KEYPOINT_YAW`), where the landmarks lie
like a frontal face: there the yaw is the keypoints' and pitch and roll are filled from the frames
around. A driver mostly in profile is still used: HunyuanPortrait takes its motion from the
driving crops themselves, and the warp preview gets a head turned the right way.

`extract_driving_motion` decodes the video once in bounded chunks and keeps only small per-frame
arrays; `iter_driving_windows` decodes it again to cut the crops, window by window. Both decode
in order with PyAV (decord holds on to frames it decoded, more the longer the video) at most
FULL_RES_CHUNK_BYTES (decode.py) of full-resolution frames at once, so memory depends on neither the video's
length nor, beyond that budget, its resolution.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from portraitflow.models.animators.base import DrivingWindow
from portraitflow.models.face.align import crop_square, square_crop_box
from portraitflow.models.face.base import Face, FaceAnalyzer
from portraitflow.models.face.pose import profile_pose
from portraitflow.operators.atomic import reading
from portraitflow.operators.decode import (FULL_RES_CHUNK_BYTES, FrameChunk, VideoInfo, VideoUnreadable, frames_per_chunk,
                                           iter_frame_chunks, probe_video)
from portraitflow.operators.reference_portrait import NoFace, centred_head_pose, to_crop
from portraitflow.operators.shots import ShotDetector
from portraitflow.operators.face_tracking import Track, box_iou, fill_pose, fill_within_shots, track_faces

#: faces smaller than this fraction of a frame's largest face get no landmarks (bystanders).
MIN_RELATIVE_SIDE = 0.5
#: frames decoded and detected at a time, fewer where FULL_RES_CHUNK_BYTES would be passed
DETECT_CHUNK_FRAMES = 32
#: bumped when extraction gives other motion for the same driver and settings, so cached motion is
#: made again (2: shots are split as curation splits them, a histogram cut confirmed by the hash;
#: 3: a frame coded after an mp4 edit list's end is not shown, nor counted in the driver's rate;
#: 4: on profiles the yaw is the detector keypoints', not the landmark fit's; a non-square-pixel
#: driver is read at its shown width, joined MPEG-TS segments in decoding order; 5: the keypoints
#: before smoothing are kept too; 6: a shot is at least half a second at the driver's own rate, as
#: curation's at its rate, not 12 frames; 7: a driver that dropped frames is read at its own rate, not
#: its average, and Matroska's millisecond times pick each frame once; 8: HDR and BT.2020 drivers are
#: read in SDR colours)
EXTRACTION_VERSION = 8


@dataclass
class DrivingMotion:
    """Per-frame motion of the driver on the resampled timeline, in crop pixels."""

    fps: float
    size: int
    shot: np.ndarray  # (T,) shot index of each frame
    boxes: np.ndarray  # (num_shots, 4) square crop box of each shot, in video pixels
    face_boxes: np.ndarray  # (num_shots, 4) the driver's face box on the shot's first detection, crop pixels
    kps: np.ndarray  # (T, 5, 2) smoothed in time (`smooth_sigma`)
    raw_kps: np.ndarray  # (T, 5, 2) as detected (gaps interpolated): what HunyuanPortrait reads
    landmarks: np.ndarray  # (T, 68, 2)
    pose: np.ndarray  # (T, 3) yaw, pitch, roll in degrees
    detected: np.ndarray  # (T,) bool: the driver's face was detected (else interpolated)

    @property
    def num_frames(self) -> int:
        return len(self.shot)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, fps=self.fps, size=self.size, shot=self.shot, boxes=self.boxes,
                 face_boxes=self.face_boxes, kps=self.kps, raw_kps=self.raw_kps,
                 landmarks=self.landmarks, pose=self.pose, detected=self.detected)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "DrivingMotion":
        """The motion `to_bytes` wrote; `UnreadableFile` when the bytes are cut short or damaged."""
        with reading("driving motion"), np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(float(npz["fps"]), int(npz["size"]), npz["shot"], npz["boxes"], npz["face_boxes"], npz["kps"],
                       npz["raw_kps"], npz["landmarks"], npz["pose"], npz["detected"])


def _main_track(tracks: list[Track], start: int, end: int) -> Track | None:
    """The shot's driver: the track detected on most frames of [start, end), larger on ties."""
    parts = [t.between(start, end) for t in tracks]
    parts = [p for p in parts if p.detected.any()]
    if not parts:
        return None
    return max(parts, key=lambda p: (int(p.detected.sum()), float(np.median(p.sides))))


def _detect_and_measure(chunk: FrameChunk, analyzer: FaceAnalyzer, detections: list[tuple[int, list[Face]]],
                        measured: dict[int, list[tuple[Face, np.ndarray]]]) -> None:
    """Each frame's faces (bystanders dropped) into `detections`, with their landmarks into `measured`."""
    for position, frame, faces in zip(chunk.positions, chunk.frames, analyzer.detect(list(chunk.frames))):
        kept = [f for f in faces if f.side >= MIN_RELATIVE_SIDE * faces[0].side]
        detections.append((int(position), kept))
        if kept:
            marks = analyzer.landmarks([frame] * len(kept), np.stack([f.box for f in kept]))
            measured[int(position)] = list(zip(kept, marks))


def extract_driving_motion(
    path: str,
    analyzer: FaceAnalyzer,
    size: int = 512,
    fps: float | None = None,
    min_face_fraction: float = 0.5,
    smooth_sigma: float = 0.8,
    min_face_px: int = 0,
) -> DrivingMotion:
    """Detect, track and measure the driver's face on every frame of the resampled timeline.

    Raises VideoUnreadable for a video that cannot be decoded and NoFace when the driver's face is
    found on fewer than `min_face_fraction` of the frames, or is smaller than `min_face_px` (the
    longer side of its box, median over the frames it is found on): a 30-px face's landmarks are
    noise, which an animator turns into grimaces.
    """
    info = probe_video(path)
    fps = float(fps or info.output_fps)  # PySceneDetect's timecodes refuse an int frame rate
    detections: list[tuple[int, list[Face]]] = []
    measured: dict[int, list[tuple[Face, np.ndarray]]] = {}

    shots = ShotDetector(fps)
    chunk_size = frames_per_chunk(DETECT_CHUNK_FRAMES, info.width, info.height, FULL_RES_CHUNK_BYTES)
    for chunk in iter_frame_chunks(path, fps, chunk_size=chunk_size, in_order=True):
        shots.update(chunk.positions, chunk.frames)
        _detect_and_measure(chunk, analyzer, detections, measured)
        del chunk  # not alive while the next one decodes
    num_frames = shots.num_frames
    if num_frames == 0:
        raise VideoUnreadable("no frames on the resampled timeline")
    measures = _measure_shots(shots, track_faces(detections, num_frames, step=1), measured, info, size)
    shot, detected = measures.shot, measures.detected
    _check_driver_face(detected, measures.face_sides, min_face_fraction, min_face_px)
    kps, landmarks = fill_within_shots(measures.kps, detected, shot), fill_within_shots(measures.landmarks, detected, shot)
    face_track = fill_within_shots(measures.face_track, detected, shot)
    raw_kps = kps.copy()
    have = [i for i, b in enumerate(measures.shot_boxes) if b is not None]
    nearest = [min(have, key=lambda j: abs(j - i)) for i in range(len(measures.shot_boxes))]
    boxes = np.stack([measures.shot_boxes[j] for j in nearest])
    face_boxes = np.stack([measures.first_faces[j] for j in nearest])
    kps, landmarks, face_track = (_smoothed_in_shots(track, shot, smooth_sigma) for track in (kps, landmarks, face_track))
    pose, profile = profile_pose(centred_head_pose(analyzer, landmarks, size), kps, face_track)
    if not (np.isfinite(pose).all(axis=1) | profile).any():
        raise NoFace("no head pose fits the driver's landmarks")
    return DrivingMotion(float(fps), size, shot, boxes, face_boxes, kps, raw_kps, landmarks, fill_pose(pose, shot),
                         detected)


@dataclass
class _ShotMeasures:
    """Per frame of the resampled timeline: its shot, and its main face in the crop of that shot
    (zeros where it was not detected); per shot, its crop box and first face box (None: no face)."""

    shot: np.ndarray
    kps: np.ndarray
    landmarks: np.ndarray
    face_track: np.ndarray  # each frame's face box, crop pixels: tells profiles
    face_sides: np.ndarray  # the longer side of each detected face box, video pixels
    detected: np.ndarray
    shot_boxes: list[np.ndarray | None]
    first_faces: list[np.ndarray | None]


def _measure_shots(shots: ShotDetector, tracks: list[Track], measured: dict[int, list[tuple[Face, np.ndarray]]],
                   info: VideoInfo, size: int) -> _ShotMeasures:
    """Each shot's main track, its crop box, and the track's face measured in that crop."""
    num_frames = shots.num_frames
    out = _ShotMeasures(np.zeros(num_frames, np.int64), np.zeros((num_frames, 5, 2), np.float32),
                        np.zeros((num_frames, 68, 2), np.float32), np.zeros((num_frames, 4), np.float32),
                        np.zeros(num_frames, np.float32), np.zeros(num_frames, bool), [], [])
    for index, (start, end) in enumerate(shots.shots()):
        out.shot[start:end] = index
        track = _main_track(tracks, start, end)
        if track is None:  # no face in this shot: it borrows a neighbour's boxes
            out.shot_boxes.append(None)
            out.first_faces.append(None)
            continue
        centre = np.median((track.boxes[:, :2] + track.boxes[:, 2:]) / 2, axis=0)
        side = np.percentile(track.boxes[:, 2:] - track.boxes[:, :2], 90, axis=0)
        box = square_crop_box(np.concatenate([centre - side / 2, centre + side / 2]), (info.height, info.width))
        out.shot_boxes.append(box)
        out.first_faces.append(None)
        for position, track_box, hit in zip(track.positions, track.boxes, track.detected):
            if not hit:
                continue
            faces = measured[int(position)]
            face, marks = faces[int(np.argmax(box_iou(track_box, np.stack([f.box for f, _ in faces]))[0]))]
            face_box = to_crop(face.box.reshape(2, 2), box, size).reshape(4)
            if out.first_faces[-1] is None:
                out.first_faces[-1] = face_box
            out.kps[position] = to_crop(face.kps, box, size)
            out.landmarks[position] = to_crop(marks, box, size)
            out.face_track[position] = face_box
            out.face_sides[position] = max(face.box[2:] - face.box[:2])
            out.detected[position] = True
    return out


def _check_driver_face(detected: np.ndarray, face_sides: np.ndarray, min_face_fraction: float,
                       min_face_px: int) -> None:
    """NoFace for a driver whose face is found on too few frames, or too small to read."""
    if not detected.any():
        raise NoFace("no face in the driving video")
    if detected.mean() < min_face_fraction:
        raise NoFace(f"the driver's face is found on {detected.mean():.0%} of the driving frames "
                     f"(at least {min_face_fraction:.0%} needed: animate.min_face_fraction={min_face_fraction:g})")
    if (side := float(np.median(face_sides[detected]))) < min_face_px:
        raise NoFace(f"the driver's face is too small ({side:.0f} px, the median over its frames; "
                     f"animate.min_face_px={min_face_px})")


def _smoothed_in_shots(track: np.ndarray, shot: np.ndarray, sigma: float) -> np.ndarray:
    """`track` (T, ...) smoothed in time within each shot (0: as it is): a cut is never blurred across."""
    if sigma <= 0:
        return track
    smoothed = track.copy()
    for index in np.unique(shot):
        in_shot = shot == index
        smoothed[in_shot] = gaussian_filter1d(track[in_shot], sigma, axis=0, mode="nearest")
    return smoothed


def iter_driving_windows(path: str, motion: DrivingMotion, window: int = 25) -> Iterator[DrivingWindow]:
    """The driving video as windows of `window` frames: crops cut with their shot's box, and the
    motion of those frames. `meta` carries each frame's shot.

    Frames are decoded in chunks of at most FULL_RES_CHUNK_BYTES (of a 4K driver 5 frames, not a
    window's 25) and each is cropped at once, so only crops are held until a window is full."""
    info = probe_video(path)
    chunk_size = frames_per_chunk(window, info.width, info.height, FULL_RES_CHUNK_BYTES)
    positions: list[int] = []
    crops: list[np.ndarray] = []
    for chunk in iter_frame_chunks(path, motion.fps, chunk_size=chunk_size, in_order=True):
        ended = int(chunk.positions[-1]) + 1 >= motion.num_frames
        _cut_crops(chunk, motion, positions, crops)
        del chunk  # not alive while the next one decodes, nor while the animator runs
        while len(crops) >= window:
            yield _driving_window(motion, positions[:window], crops[:window])
            del positions[:window], crops[:window]
        if ended:
            break
    if crops:
        yield _driving_window(motion, positions, crops)


def _cut_crops(chunk: FrameChunk, motion: DrivingMotion, positions: list[int], crops: list[np.ndarray]) -> None:
    """The crops of the chunk's frames on the motion's timeline, with their positions, appended."""
    for position, rgb in zip(chunk.positions, chunk.frames):
        if position >= motion.num_frames:
            return
        positions.append(int(position))
        crops.append(crop_square(rgb, motion.boxes[motion.shot[position]], motion.size))


def _driving_window(motion: DrivingMotion, positions: list[int], crops: list[np.ndarray]) -> DrivingWindow:
    frames = np.asarray(positions, dtype=np.int64)
    return DrivingWindow(
        start=int(frames[0]), crops=np.stack(crops), kps=motion.kps[frames], raw_kps=motion.raw_kps[frames],
        landmarks=motion.landmarks[frames], pose=motion.pose[frames],
        face_boxes=motion.face_boxes[motion.shot[frames]], meta={"shot": motion.shot[frames]},
    )
