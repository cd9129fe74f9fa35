"""Render one accepted clip into its WebDataset sample: 512 crop mp4, reference images, arrays.

The crop box is fixed per clip (HunyuanPortrait's square box, zero-padded at borders) and the
frames are decoded at source resolution, in order with PyAV, at most FULL_RES_CHUNK_BYTES at a
time, so memory depends on neither the clip's length nor, beyond that, the source's resolution. Landmarks, keypoints
and poses in the sample are in the pixels of the crop (0..crop_size), aligned with the mp4. The scan
fits landmarks on frames at most `analysis_max_side` wide; where the crop shows the face finer than
that (`REFIT_ABOVE`), the sample's landmarks, keypoints, pose and motion intensity are fitted again
on the crop.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.align import align_arcface, crop_square
from portraitflow.models.face.base import FaceAnalyzer
from portraitflow.operators.decode import FULL_RES_CHUNK_BYTES, VideoInfo, frames_per_chunk, iter_frame_chunks
from portraitflow.operators.face_scan import analysis_size, scan_pose
from portraitflow.operators.face_tracking import fill_pose
from portraitflow.operators.motion import WINDOW, motion_table
from portraitflow.operators.probe import error_text
from portraitflow.operators.reference_portrait import to_crop
from portraitflow.operators.scan_store import load_clip_arrays
from portraitflow.operators.shards import npy_bytes, stage_sample
from portraitflow.operators.timing import StageTimer
from portraitflow.operators.unique_footage import cut_arrays
from portraitflow.operators.video_writer import audio_seconds, write_h264

FORMAT_VERSION = 1
#: how much more of the source's detail than the scan's analysis frame the crop must hold for its
#: landmarks to be fitted again on the crop: a 1080x1920 phone video's face (39 px between the eyes
#: at 640 px, 107 in the 512 crop) had 1.51x the frame-to-frame landmark jitter and 1.2-1.4x the
#: pose noise of a fit on the crop; a 512-px source's crop is its analysis frame, and gains nothing
REFIT_ABOVE = 1.25
#: a face detected on the crop is the tracked one when its box overlaps the track's this much
SAME_FACE_IOU = 0.3


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def analysis_gain(clip: dict, crop_scale: float, cfg: CurateConfig) -> float:
    """How much more of the source's detail the crop holds than the scan's analysis frame (above 1:
    the crop is finer). A crop that enlarges its source (`crop_scale` above 1) adds no detail."""
    width, _ = analysis_size(VideoInfo(clip["width"], clip["height"], 1.0, 1), cfg.analysis_max_side)
    return min(crop_scale, 1.0) * clip["width"] / width


def render_sample(
    path: str, clip: dict, arrays: dict[str, np.ndarray], cfg: CurateConfig, face_backend: str, timer: StageTimer,
    analyzer: Callable[[], FaceAnalyzer] | None = None,
) -> dict[str, bytes]:
    """The fields of one sample (mp4, ref.jpg, ref_face.jpg, json, *.npy) for a kept clip; with
    `analyzer` (called once a clip needs it: loading the models takes about a second), landmarks
    fitted and keypoints detected again on the crop where it is finer than the analysis frame."""
    crop_box = arrays["crop_box"]
    ref_index = int(arrays["ref_index"])
    size = cfg.crop_size
    crop_scale = size / float(crop_box[2] - crop_box[0])  # above 1: the source's pixels are enlarged
    reference: dict[str, np.ndarray] = {}
    kps = to_crop(arrays["kps"], crop_box, size)
    boxes = to_crop(arrays["boxes"].reshape(-1, 2, 2), crop_box, size).reshape(-1, 4)
    fitter = analyzer() if analyzer is not None and analysis_gain(clip, crop_scale, cfg) > REFIT_ABOVE else None
    landmarks = [] if fitter else [to_crop(arrays["landmarks"], crop_box, size)]

    def crops():
        chunks = iter_frame_chunks(path, cfg.fps, clip["start"] / cfg.fps, clip["end"] / cfg.fps,
                                   frames_per_chunk(cfg.chunk_frames, clip["width"], clip["height"],
                                                    FULL_RES_CHUNK_BYTES), in_order=True)
        for chunk in timer.iterate("render_decode", chunks):
            rows = chunk.positions - clip["start"]
            with timer.time("crop"):
                out = np.stack([crop_square(frame, crop_box, size) for frame in chunk.frames])
            if fitter:
                with timer.time("render_landmarks"):
                    landmarks.append(fitter.landmarks(list(out), boxes[rows]))
                    kps[rows] = detected_kps(fitter, out, boxes[rows], kps[rows])
            hit = np.flatnonzero(rows == ref_index)
            if len(hit):  # aligned on the source's pixels, at the keypoints the sample holds
                source_kps = kps[ref_index] / crop_scale + crop_box[:2] if fitter else arrays["kps"][ref_index]
                reference["crop"] = out[hit[0]]
                reference["face"] = align_arcface(chunk.frames[hit[0]], source_kps)
            yield out

    with tempfile.TemporaryDirectory() as tmp:
        mp4 = Path(tmp) / "clip.mp4"
        with timer.time("encode"):
            frames = write_h264(mp4, crops(), cfg.fps, audio_from=path if cfg.keep_audio else None,
                                audio_start_s=clip["start"] / cfg.fps, crf=cfg.crf,
                                keyframe_interval=cfg.keyframe_interval or None, threads=cfg.actor_cpus)
        video, audio_s = mp4.read_bytes(), audio_seconds(mp4)
    if frames != clip["end"] - clip["start"]:
        raise ValueError(f"decoded {frames} frames for a clip of {clip['end'] - clip['start']}")
    landmarks = np.concatenate(landmarks)
    if fitter:
        with timer.time("render_pose"):
            pose = fill_pose(scan_pose(fitter, landmarks, boxes, kps, (size, size)), np.zeros(len(kps), np.int64))
        motion = motion_table(landmarks, kps)
    else:
        pose, motion = arrays["pose"], arrays["motion"]
    meta = _sample_meta(clip, arrays, cfg, face_backend, crop_box, frames, audio_s, refit=fitter is not None,
                        motion=motion)
    members = {
        "mp4": video,
        "ref.jpg": _jpeg(reference["crop"]),
        "ref_face.jpg": _jpeg(reference["face"]),
        **_array_members(arrays, landmarks, kps, boxes, pose, motion),
    }
    # readers check a member against it before decoding: damage a decoder does not report, or crashes on
    meta["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    return {**members, "json": json.dumps(meta, sort_keys=True).encode()}


def _sample_meta(clip: dict, arrays: dict[str, np.ndarray], cfg: CurateConfig, face_backend: str,
                 crop_box: np.ndarray, frames: int, audio_s: float, refit: bool, motion: np.ndarray) -> dict[str, Any]:
    """The sample's json, but for the members' checksums."""
    size = cfg.crop_size
    return {
        "format_version": FORMAT_VERSION,
        "key": clip["key"],
        "source": clip["uri"],
        "start_s": clip["start"] / cfg.fps,
        "end_s": clip["end"] / cfg.fps,
        "fps": cfg.fps,
        "source_fps": round(float(clip["src_fps"]), 3),  # below `fps`, frames were repeated; above, dropped
        "num_frames": frames,
        "audio_s": round(audio_s, 3),  # less than the clip's length where the source's audio stops early
        "source_size": [clip["width"], clip["height"]],
        "crop_box": [float(v) for v in crop_box],
        "crop_size": size,
        "crop_scale": round(size / float(crop_box[2] - crop_box[0]), 4),
        "landmarks_refit": refit,  # fitted on the crop, not on the scan's analysis frame
        "kps_refit": refit,  # detected on the crop too (absent: curated before they were)
        "ref_frame": int(arrays["ref_index"]),
        "face_backend": face_backend,
        "embedding_dim": int(arrays["embedding"].shape[0]),
        "scores": {k: round(float(v), 4) for k, v in clip["measures"].items()},
        "motion_buckets": motion[::WINDOW, 1:].astype(int).tolist(),  # (head, expression) per window
        **({"cut_from": clip["cut_from"]} if "cut_from" in clip else {}),  # a partial duplicate's own footage
    }


def _array_members(arrays: dict[str, np.ndarray], landmarks: np.ndarray, kps: np.ndarray, boxes: np.ndarray,
                   pose: np.ndarray, motion: np.ndarray) -> dict[str, bytes]:
    """The sample's .npy members, in the dtypes readers expect."""
    return {
        "landmarks.npy": npy_bytes(landmarks.astype(np.float32)),
        "kps.npy": npy_bytes(kps),
        "boxes.npy": npy_bytes(boxes),
        "pose.npy": npy_bytes(pose.astype(np.float32)),
        "id.npy": npy_bytes(arrays["embedding"].astype(np.float32)),
        "motion.npy": npy_bytes(motion.astype(np.float32)),
        "signature.npy": npy_bytes(arrays["signature"].astype(np.float16)),
        "thumbnails.npy": npy_bytes(arrays["thumbnails"].astype(np.uint8)),
    }


def detected_kps(detector: FaceAnalyzer, crops: np.ndarray, boxes: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """Keypoints detected on each crop, of the face overlapping its tracked box (IoU at least
    `SAME_FACE_IOU`): the scan detects on its analysis frame, where a phone video's small face put
    the eyes 0.15-0.19 of the eye distance off the crop's landmarks. A frame without such a face
    keeps the scan's `kps` moved by the median offset of the crops' detections from them, so the
    points do not jump by that offset where a detection is missed (none found: the scan's)."""
    from portraitflow.operators.face_tracking import box_iou

    found = np.zeros(len(kps), bool)
    detected = kps.copy()
    for index, faces in enumerate(detector.detect(list(crops))):
        if faces:
            overlap = box_iou(boxes[index], np.stack([face.box for face in faces]))[0]
            if overlap.max() >= SAME_FACE_IOU:
                detected[index], found[index] = faces[int(overlap.argmax())].kps, True
    if found.any():
        detected[~found] = kps[~found] + np.median(detected[found] - kps[found], axis=0)
    return detected


def render_clip(row: dict[str, Any], path: str, cfg: CurateConfig, staging_dir: Path,
                analyzer: Callable[[], FaceAnalyzer]) -> dict[str, Any]:
    """Render one kept clip (`row`: the clip, its input's uri and size, its scan file; `path`: the
    input's local copy) and stage its sample; never raises: an error is returned with the clip's key."""
    cpu = time.process_time()
    timer = StageTimer()
    error = ""
    try:
        arrays = load_clip_arrays(Path(row["scan_path"]), row["index"])
        if "cut" in row:  # a partial duplicate's own footage (operators/unique_footage.py)
            arrays = cut_arrays(arrays, *row["cut"], (row["height"], row["width"]))
        fields = render_sample(path, row, arrays, cfg, row["face_backend"], timer, analyzer)
        with timer.time("stage"):
            stage_sample(staging_dir, row["key"], fields)
    except Exception as exc:  # one clip that cannot be rendered is recorded, the run goes on
        error = error_text(exc)
    return {"key": row["key"], "error": error, "timings": dict(timer.seconds, worker_cpu=time.process_time() - cpu)}
