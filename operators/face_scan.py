"""Scan one video into candidate clips: shots, face tracks, per-frame motion, filter decisions.

Two passes over frames decoded at analysis resolution (never the whole video at once):
1. shot detection on every frame, face detection on every Nth frame;
2. per candidate clip that survived the cheap filters: 68 landmarks and head pose on every frame,
   sharpness on detected frames, identity embeddings on a few sampled frames.
Coordinates in the result are source-video pixels. The scan file an input's result is saved to is
operators/scan_store.py; the choice of a kept clip's reference frame, operators/reference_frame.py.
"""
from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.align import square_crop_box
from portraitflow.models.face.base import Face, FaceAnalyzer, l2_normalise
from portraitflow.models.face.pose import (MAX_PROFILE_SHARE, PROFILE_KEYPOINT_YAW, landmark_scale_yaw, profile_pose,
                                          yaw_from_keypoints)
from portraitflow.operators import filters
from portraitflow.operators.atomic import UnreadableFile
from portraitflow.operators.decode import VideoInfo, iter_frame_chunks
from portraitflow.operators.face_tracking import Track, fill_pose, track_faces
from portraitflow.operators.identity import identity_link, load_gallery, matches_gallery, switch_index
from portraitflow.operators.ledger import FAILED
from portraitflow.operators.motion import motion_intensity, motion_table
from portraitflow.operators.overlap import content_signature, frame_thumbnails
from portraitflow.operators.probe import error_text, probe_input
from portraitflow.operators.reference_frame import reference_index
from portraitflow.operators.reference_portrait import crop_head_pose
from portraitflow.operators.scan_store import (GALLERY_SETTINGS, load_scan_meta, save_scan, scan_fingerprint, scan_path,
                                               source_identity)
from portraitflow.operators.shots import ShotDetector
from portraitflow.operators.timing import Progress, StageTimer

MIN_TRACK_DETECTIONS = 3  # a face seen once is more often a false detection than a clip
#: the first pass's decoding time: in an input's timings only when it was scanned by this run (a reused
#: scan records none, and renders time theirs as `render_decode`)
SCAN_DECODE = "decode"
#: the largest share of a face box a clip's fixed crop may leave out on a frame: the 68 clips kept
#: from the shared media in review s14 leave out at most 0.016 (a face box touching the edge of a
#: tightly cropped source), while a speaker leaning out of the crop (`skyreels_driving_2`) went from
#: 0.004 to 0.13 in one frame and on to 0.56, with up to 78% of the landmarks outside the crop
MAX_CROP_OUTSIDE = 0.1


@dataclass
class Candidate:
    """A candidate clip [start, end) of the resampled timeline and its decision."""

    start: int
    end: int
    reason: str | None
    measures: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # only for clips still kept


#: prefixes of the `arrays` of a clip being scanned that only its decisions read, never stored:
#: the sampled frames' embeddings, and per-frame values the measures of each part of a split clip
#: are taken from (`_track_frames`, sharpness)
DECISION_ONLY = ("sample_", "measure_")


@dataclass(frozen=True)
class Galleries:
    allow: np.ndarray
    deny: np.ndarray
    threshold: float  # the cosine from which two faces are one person (`CurateConfig.same_person_similarity`)


def analysis_size(info: VideoInfo, max_side: int) -> tuple[int, int]:
    """(width, height) frames are decoded at for analysis: the longer side at most `max_side`."""
    scale = min(1.0, max_side / max(info.width, info.height)) if max_side else 1.0
    return max(2, round(info.width * scale / 2) * 2), max(2, round(info.height * scale / 2) * 2)


def scan_video(
    analyzer: FaceAnalyzer, path: str, info: VideoInfo, cfg: CurateConfig, galleries: Galleries, timer: StageTimer,
    progress: Callable[[float], None] = lambda seconds: None,
) -> list[Candidate]:
    """All candidate clips of a video, in time order, each kept (reason None) or rejected;
    `progress` is told the seconds of video scanned after each chunk."""
    width, height = analysis_size(info, cfg.analysis_max_side)
    size = None if (width, height) == (info.width, info.height) else (width, height)
    to_source = np.array([info.width / width, info.height / height], np.float32)
    step = max(1, cfg.detect_every)
    shots = ShotDetector(cfg.fps, cfg.shot_content_threshold, cfg.shot_histogram_threshold,
                         scan_side=cfg.shot_scan_side, hash_threshold=cfg.shot_hash_threshold)
    detections: list[tuple[int, list[Face]]] = []
    for chunk in timer.iterate(SCAN_DECODE, iter_frame_chunks(path, cfg.fps, chunk_size=cfg.chunk_frames, size=size)):
        with timer.time("shots"):
            shots.update(chunk.positions, chunk.frames)
        chosen = chunk.positions % step == 0
        with timer.time("detect"):
            detections.extend(zip(chunk.positions[chosen].tolist(), analyzer.detect(list(chunk.frames[chosen]))))
        progress((chunk.positions[-1] + 1) / cfg.fps)

    candidates: list[Candidate] = []
    positions = [p for p, _ in detections]  # ascending: the chunks come in order
    for shot_start, shot_end in shots.shots():
        with timer.time("track"):
            shot_detections = detections[bisect_left(positions, shot_start):bisect_left(positions, shot_end)]
            tracks = track_faces(shot_detections, shot_end, step, cfg.track_iou, cfg.track_max_gap)
        for start, end, main in _clip_ranges(tracks, shot_start, shot_end, step, cfg):
            if main is None:
                candidates.append(Candidate(start, end, filters.NO_FACE))
                continue
            candidate = _cheap_checks(main, tracks, start, end, info, to_source, step, cfg)
            if candidate.reason is None:
                candidates.extend(_measure(analyzer, path, size, (height, width), main, candidate, to_source,
                                           info, galleries, cfg, timer))
            else:
                candidates.append(candidate)
    return sorted(candidates, key=lambda c: c.start)


def _clip_ranges(tracks: list[Track], shot_start: int, shot_end: int, step: int, cfg: CurateConfig):
    """(start, end, track or None) clip ranges of a shot, at most `max_clip_seconds` long.

    Main tracks are faces seen on at least MIN_TRACK_DETECTIONS detection frames (fewer in a shot
    too short for that), taken largest first (frames x face size) where they do not overlap one
    taken already; stretches of at least the minimum clip length without one become `no_face`.
    """
    needed = min(MIN_TRACK_DETECTIONS, _detection_frames(shot_start, shot_end, step))
    chosen: list[Track] = []
    stable = [t for t in tracks if t.detected.sum() >= needed]
    for track in sorted(stable, key=lambda t: -len(t.positions) * float(np.median(t.sides))):
        if all(_overlap(track, c.positions[0], c.positions[-1] + 1) < 0.1 * len(track.positions) for c in chosen):
            chosen.append(track)
    chosen.sort(key=lambda t: t.positions[0])
    min_frames = round(cfg.min_clip_seconds * cfg.fps)
    max_frames = max(1, round(cfg.max_clip_seconds * cfg.fps))
    cursor = shot_start
    ranges = []
    for track in chosen:
        start, end = max(int(track.positions[0]), cursor), int(track.positions[-1]) + 1
        if start - cursor >= min_frames:
            ranges.append((cursor, start, None))
        ranges.extend((int(a), int(b), track) for a, b in _split(start, end, min_frames, max_frames))
        cursor = end
    if shot_end - cursor >= min_frames or not chosen:
        ranges.append((cursor, shot_end, None))
    return ranges


def _split(start: int, end: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """[start, end) in pieces of at most `max_frames`: equal pieces, or, where equal pieces would
    all be shorter than `min_frames` (a stretch a little over `max_frames` long with `max_frames`
    under twice `min_frames`), whole `max_frames` pieces and the short rest."""
    pieces = int(np.ceil((end - start) / max_frames))
    if pieces > 1 and (end - start) / pieces < min_frames:
        edges = [*range(start, end, max_frames), end]
    else:
        edges = np.linspace(start, end, pieces + 1).round().astype(int).tolist()
    return list(zip(edges[:-1], edges[1:]))


def _detection_frames(start: int, end: int, step: int) -> int:
    """How many frames of [start, end) the detector looked at (positions divisible by step), >= 1."""
    return max(1, len(range(start + (-start) % step, end, step)))


def _overlap(track: Track, start: int, end: int) -> int:
    return int(((track.positions >= start) & (track.positions < end)).sum())


def _cheap_checks(main: Track, tracks: list[Track], start: int, end: int, info: VideoInfo,
                  to_source: np.ndarray, step: int, cfg: CurateConfig) -> Candidate:
    """First pass on a clip's tracks; a clip it keeps carries their per-frame values on to `_measure`."""
    frames = _track_frames(main, tracks, start, end, to_source)
    measures = _track_measures(frames, _detection_frames(start, end, step), cfg)
    reason = _track_reason(measures, end - start, info, cfg)
    return Candidate(start, end, reason, measures, {} if reason else frames)


def _track_frames(main: Track, tracks: list[Track], start: int, end: int,
                  to_source: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame of [start, end), what the first-pass measures summarise: kept (not stored, see
    DECISION_ONLY) so that each part of a clip split at an identity switch is measured on its own frames.
    `measure_other_sides` holds a column per other track on the clip, NaN where it is not."""
    part = main.between(start, end)
    scale = to_source.min()
    others = [t.between(start, end) for t in tracks if t is not main and _overlap(t, start, end)]
    other_sides = np.full((end - start, len(others)), np.nan, np.float32)
    for column, other in enumerate(others):
        other_sides[other.positions - start, column] = other.sides * scale
    return {"measure_face_side": part.sides * scale, "measure_detected": part.detected.astype(bool),
            "measure_keypoint_yaw": np.abs(yaw_from_keypoints(part.kps, part.boxes)),
            "measure_other_sides": other_sides}


def _track_measures(frames: dict[str, np.ndarray], detection_frames: int, cfg: CurateConfig) -> dict[str, float]:
    """The first-pass measures of a clip, or of a part of one, from its `_track_frames`."""
    seen, sides, others = frames["measure_detected"], frames["measure_face_side"], frames["measure_other_sides"]
    present = ~np.isnan(others)
    secondary = sum(1 for column, on in zip(others.T, present.T)
                    if on.sum() >= 0.25 * len(sides)
                    and np.median(column[on]) >= cfg.secondary_face_ratio * np.median(sides))
    profile = frames["measure_keypoint_yaw"][seen] > PROFILE_KEYPOINT_YAW
    return {"face_side_px": float(np.median(sides)), "detected_ratio": float(seen.sum() / detection_frames),
            "secondary_faces": float(secondary), "keypoint_yaw": _detected_median(frames["measure_keypoint_yaw"], seen),
            "profile_share": float(profile.mean()) if len(profile) else np.nan}


def _detected_median(values: np.ndarray, seen: np.ndarray) -> float:
    """The median over the frames the detector found the face on; NaN for none (unmeasured, where 0
    read as a wholly blurred or frontal face). Every filter keeps a NaN (a comparison with it is false)."""
    return float(np.median(values[seen])) if seen.any() else np.nan


def _track_reason(measures: dict[str, float], frames: int, info: VideoInfo, cfg: CurateConfig) -> str | None:
    """The first-pass filters on a clip's (or part's) `_track_measures`, in docs/curation.md's order."""
    return filters.first_reason(
        filters.face_presence(measures["detected_ratio"], cfg),
        filters.single_face(int(measures["secondary_faces"])),
        filters.resolution(info.width, info.height, cfg),
        filters.frame_rate(info.fps, cfg),
        filters.face_size(measures["face_side_px"], cfg),
        filters.duration(frames / cfg.fps, cfg),
        # profiles, which the landmark fit reads as frontal: a clip mostly in profile whatever
        # `max_abs_yaw`, and the keypoints' median yaw on the fit's scale, which the limit means
        filters.EXTREME_POSE if measures.get("profile_share", 0.0) > MAX_PROFILE_SHARE else None,
        filters.pose(float(landmark_scale_yaw(measures["keypoint_yaw"])), 0.0, cfg),
    )


def _measure(analyzer: FaceAnalyzer, path: str, size, frame_hw: tuple[int, int], main: Track, candidate: Candidate,
             to_source: np.ndarray, info: VideoInfo, galleries: Galleries, cfg: CurateConfig,
             timer: StageTimer) -> list[Candidate]:
    """Second pass over a clip: per-frame landmarks, pose, sharpness and sampled embeddings."""
    start, end = candidate.start, candidate.end
    part = main.between(start, end)
    spaced = int(np.ceil((end - start) / (cfg.identity_sample_seconds * cfg.fps))) + 1
    samples = identity_sample_frames(part.detected, max(cfg.identity_samples, spaced))
    landmarks, poses, sharp, embeddings, thumbnails = [], [], [], [], []
    chunks = iter_frame_chunks(path, cfg.fps, start / cfg.fps, end / cfg.fps, cfg.chunk_frames, size)
    for chunk in timer.iterate(SCAN_DECODE, chunks):
        index = chunk.positions - start
        boxes = part.boxes[index]
        with timer.time("landmarks"):
            marks = analyzer.landmarks(list(chunk.frames), boxes)
            landmarks.append(marks)
        with timer.time("pose"):
            poses.append(scan_pose(analyzer, marks, boxes, part.kps[index], frame_hw))
        with timer.time("sharpness"):  # on detected frames: NaN on the others
            sharp.extend(filters.laplacian_sharpness(f, b) if d else np.nan
                         for f, b, d in zip(chunk.frames, boxes, part.detected[index]))
        with timer.time("signature"):
            thumbnails.append(frame_thumbnails(chunk.frames))
        picked = np.flatnonzero(np.isin(index, samples))
        if len(picked):
            with timer.time("embed"):
                faces = [Face(box=part.boxes[index[i]], score=1.0, kps=part.kps[index[i]]) for i in picked]
                embeddings.append(analyzer.embed([chunk.frames[i] for i in picked], faces))
    pose = np.concatenate(poses)
    arrays = {
        "boxes": part.boxes * np.tile(to_source, 2),
        "kps": part.kps * to_source,
        "landmarks": np.concatenate(landmarks) * to_source,
        "pose": fill_pose(pose, np.zeros(len(pose), np.int64)),  # the clip is one shot
        "thumbnails": np.concatenate(thumbnails),
        "sample_index": samples,
        "sample_embedding": np.concatenate(embeddings),
        "measure_sharpness": np.array(sharp, np.float64),
        **candidate.arrays,  # `_track_frames`
    }
    with timer.time("filters"):
        return _decide(arrays, 0, end - start, start, info, galleries, cfg)


def identity_sample_frames(detected: np.ndarray, count: int) -> np.ndarray:
    """Frames of a clip to embed: `count` spread over it, each moved to the nearest frame the detector
    found the face on, duplicates dropped. An interpolated box can be a detection step off a moving
    face: on a shaking camera's clip, crops missing the face read as another person (`identity_switch`)."""
    spread = np.linspace(0, len(detected) - 1, count).round().astype(int)
    found = np.flatnonzero(detected)
    if len(found):  # none only where `min_face_frames_ratio` is 0
        spread = found[np.abs(found[None, :] - spread[:, None]).argmin(axis=1)]
    return np.unique(spread)


def scan_pose(analyzer: FaceAnalyzer, landmarks: np.ndarray, boxes: np.ndarray, kps: np.ndarray,
              frame_hw: tuple[int, int]) -> np.ndarray:
    """(N, 3) per-frame head pose of a clip as generation and evaluation measure it
    (`reference_portrait.crop_head_pose`: the landmarks centred in the face's square crop, so where the
    face sits in the frame and how much of it it fills do not tilt it; fitted on the whole frame it
    read 5-9 degrees more pitch), and on profiles the keypoints' yaw with pitch and roll NaN
    (`profile_pose`; `face_tracking.fill_pose` fills them)."""
    pose = crop_head_pose(analyzer, landmarks, list(boxes), [frame_hw] * len(landmarks))
    return profile_pose(pose, kps, boxes)[0]


def _decide(arrays: dict[str, np.ndarray], first: int, last: int, offset: int, info: VideoInfo,
            galleries: Galleries, cfg: CurateConfig) -> list[Candidate]:
    """Filter frames [first, last) of a measured clip; an identity switch splits it in two, and frames
    where the face leaves the clip's crop are cut out (`face_leaves_crop`), the parts around them kept.

    Every measure is taken on these frames, first pass included, so each part of a split clip is
    judged and reported on its own person's frames, not on the whole clip's.
    """
    start, end = offset + first, offset + last
    frames = _frames(arrays, first, last)
    in_range = (arrays["sample_index"] >= first) & (arrays["sample_index"] < last)
    sample_index = arrays["sample_index"][in_range]
    sample_embedding = arrays["sample_embedding"][in_range]
    measures = _part_measures(frames, start, end, cfg)
    # the whole clip passed `duration` in the first pass, so a part shorter is the rest of a split:
    # `too_short` first, whatever else it fails (a rest of one undetected frame had read `no_face`)
    reason = filters.duration((last - first) / cfg.fps, cfg) or _track_reason(measures, last - first, info, cfg)
    if reason or len(sample_index) == 0:
        return [Candidate(start, end, reason or filters.TOO_SHORT, measures)]
    measures = dict(measures, identity_link=identity_link(sample_embedding))
    switch = switch_index(sample_embedding, galleries.threshold)
    if switch is not None:
        margin = round(cfg.identity_switch_margin_seconds * cfg.fps)  # a dissolve's blended frames go too
        before = max(first, int(sample_index[switch - 1]) + 1 - margin)
        after = min(last, int(sample_index[switch]) + margin)
        between = []  # the frames between the two people's samples show either: a row of their own
        if after > before:
            gap = dict(_part_measures(_frames(arrays, before, after), offset + before, offset + after, cfg),
                       identity_link=measures["identity_link"])
            between = [Candidate(offset + before, offset + after, filters.IDENTITY_SWITCH, gap)]
        return ((_decide(arrays, first, before, offset, info, galleries, cfg) if before > first else []) + between
                + (_decide(arrays, after, last, offset, info, galleries, cfg) if last > after else []))
    crop_box = square_crop_box(np.median(frames["boxes"], axis=0), (info.height, info.width))
    outside = outside_share(frames["boxes"], crop_box)
    leaving = _crop_exit(outside, max(1, round(cfg.min_clip_seconds * cfg.fps)))
    if leaving is not None:  # each part around the frames cut out gets its own crop
        cut, back = first + leaving[0], first + leaving[1]
        out = dict(_part_measures(_frames(arrays, cut, back), offset + cut, offset + back, cfg),
                   face_outside_crop=float(outside[leaving[0]:leaving[1]].max()))
        before, after = (_decide(arrays, a, b, offset, info, galleries, cfg) if b > a else []
                         for a, b in ((first, cut), (back, last)))
        return [*before, Candidate(offset + cut, offset + back, filters.FACE_LEAVES_CROP, out), *after]
    motion = motion_table(frames["landmarks"], frames["kps"])
    embedding = l2_normalise(sample_embedding.mean(axis=0))
    yaw, pitch = np.median(np.abs(frames["pose"][:, :2]), axis=0)  # what `extreme_pose` tests
    shake = motion_intensity(frames["landmarks"], smooth_frames=0)
    measures = dict(measures, face_outside_crop=float(outside.max()), yaw=float(yaw), pitch=float(pitch),
                    motion=float(motion[1:, 0].mean() if len(motion) > 1 else 0.0),
                    shake=float(shake[1:].mean() if len(shake) > 1 else 0.0))
    reason = filters.first_reason(
        filters.pose(measures["yaw"], measures["pitch"], cfg),
        filters.sharpness(measures["sharpness"], cfg),
        filters.motion(measures["motion"], measures["shake"], cfg),
        filters.IDENTITY_DENIED if matches_gallery(sample_embedding, galleries.deny, galleries.threshold) else None,
        filters.IDENTITY_NOT_ALLOWED
        if len(galleries.allow) and not matches_gallery(embedding, galleries.allow, galleries.threshold) else None,
    )
    if reason:
        return [Candidate(start, end, reason, measures)]
    embedded = np.isin(np.arange(first, last), sample_index)  # the frames whose person was checked
    frontal = reference_index(frames["pose"], frames["landmarks"], frames["measure_detected"], frames["boxes"],
                              (info.height, info.width), embedded)
    stored = {k: v for k, v in frames.items() if not k.startswith(DECISION_ONLY)}
    thumbnails = stored.pop("thumbnails")
    kept = dict(stored, motion=motion, embedding=embedding, signature=content_signature(thumbnails),
                thumbnails=thumbnails.astype(np.uint8),  # INTER_AREA of uint8 frames: whole grey levels already
                crop_box=crop_box.astype(np.float32),
                ref_index=np.array(frontal))
    return [Candidate(start, end, None, measures, kept)]


def _frames(arrays: dict[str, np.ndarray], first: int, last: int) -> dict[str, np.ndarray]:
    """The per-frame arrays of frames [first, last) of a measured clip (all but its samples')."""
    return {k: v[first:last] for k, v in arrays.items() if not k.startswith("sample_")}


def _part_measures(frames: dict[str, np.ndarray], start: int, end: int, cfg: CurateConfig) -> dict[str, float]:
    """The first-pass measures and the sharpness of a measured clip's frames [start, end) (`_frames`)."""
    return dict(_track_measures(frames, _detection_frames(start, end, max(1, cfg.detect_every)), cfg),
                sharpness=_detected_median(frames["measure_sharpness"], frames["measure_detected"]))


def outside_share(boxes: np.ndarray, crop_box: np.ndarray) -> np.ndarray:
    """(T,) share of each face box (x1, y1, x2, y2) outside the crop box: what of the face the
    clip's crop cuts off on that frame."""
    boxes, crop_box = np.asarray(boxes, np.float64), np.asarray(crop_box, np.float64)
    overlap = np.minimum(boxes[:, 2:], crop_box[2:]) - np.maximum(boxes[:, :2], crop_box[:2])
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return 1.0 - np.prod(np.clip(overlap, 0, None), axis=1) / np.maximum(area, 1e-9)


def _crop_exit(outside: np.ndarray, min_frames: int) -> tuple[int, int] | None:
    """[cut, back): from the first frame with more than MAX_CROP_OUTSIDE of its face box outside the
    crop (`outside_share`) to the first of `min_frames` frames in a row back inside, or to the end (a
    shorter stretch inside could not be a clip of its own); None when the face stays inside."""
    leaves = outside > MAX_CROP_OUTSIDE
    if not leaves.any():
        return None
    cut, inside_run = int(np.argmax(leaves)), 0
    for index in range(cut, len(leaves)):
        inside_run = 0 if leaves[index] else inside_run + 1
        if inside_run == min_frames:
            return cut, index + 1 - min_frames
    return cut, len(leaves)


def check_galleries(cfg: PortraitFlowConfig) -> None:
    """Load the allow and deny galleries as the scan will, so a folder that is missing or holds no
    photo with a face stops the run before anything is written, with the setting that names it (in
    the curation actors it would kill each one as it starts); raises ValueError."""
    folders = {name: getattr(cfg.curate, name) for name in GALLERY_SETTINGS if getattr(cfg.curate, name)}
    for name, folder in folders.items():
        if not Path(folder).is_dir():
            raise ValueError(f"curate.{name}: {folder} is not a folder")
    if folders:
        from portraitflow.models.face.factory import create_analyzer

        analyzer = create_analyzer(cfg.face)
        for name, folder in folders.items():
            try:
                load_gallery(analyzer, folder, warn_skipped=True)
            except ValueError as exc:
                raise ValueError(f"curate.{name}: {exc}") from exc


#: the status of an input whose scan is saved (made now, or reused: `FaceScanStage.scan`)
SCANNED = "scanned"


class FaceScanStage:
    """Holds the face analyser and the galleries; scans one input per call (operators/curate_input.py)."""

    def __init__(self, config: dict[str, Any], scan_dir: str) -> None:
        from portraitflow.models.face.factory import create_analyzer

        cfg = PortraitFlowConfig.model_validate(config)
        self.cfg = cfg.curate
        self.fingerprint = scan_fingerprint(cfg)
        self.analyzer = create_analyzer(cfg.face, threads=cfg.curate.actor_cpus)  # as many as the CPUs reserved
        self.scan_dir = Path(scan_dir)
        self.galleries = Galleries(load_gallery(self.analyzer, self.cfg.allow_dir),
                                   load_gallery(self.analyzer, self.cfg.deny_dir),
                                   self.cfg.same_person_similarity(self.analyzer.same_person_threshold))

    def scan(self, row: dict[str, Any], path: str) -> dict[str, Any]:
        """Probe and scan one input (`path`: its local copy) into `scan_dir/{input_key}.npz`; a
        finished scan is reused while the settings it depends on and the file it was made of
        (`source_identity`) are unchanged."""
        cpu = time.process_time()
        row = probe_input(row, path)
        if row["status"] == FAILED:
            return row
        scan_file = scan_path(self.scan_dir, row["input_key"])
        timings = json.loads(row["timings"])
        source = source_identity(path, row)
        if scan_file.exists():
            try:
                meta = load_scan_meta(scan_file)
            except UnreadableFile:  # cut short or damaged (an interrupted copy, a full disk): scanned again
                meta = {}
            if meta.get("fingerprint") == self.fingerprint and meta.get("source") == source:
                return dict(row, status=SCANNED)
        timer = StageTimer()
        try:
            info = VideoInfo(row["width"], row["height"], row["src_fps"], round(row["duration_s"] * row["src_fps"]))
            progress = Progress(f"{row['uri']}: scanned", info.duration_s, "s")
            candidates = scan_video(self.analyzer, path, info, self.cfg, self.galleries, timer, progress)
            save_scan(scan_file, {"fingerprint": self.fingerprint, "source": source, "face_backend": self.analyzer.name,
                                   "same_person": self.analyzer.same_person_threshold}, candidates)
        except Exception as exc:  # damaged mid-stream, odd frames: this input fails, the run goes on
            return dict(row, status=FAILED, error=error_text(exc),
                        timings=json.dumps(timings | dict(timer.seconds)))
        timings |= dict(timer.seconds, worker_cpu=time.process_time() - cpu)
        return dict(row, status=SCANNED, timings=json.dumps(timings))
