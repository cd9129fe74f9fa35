"""The two generation stages on Ray Data rows, one row per job.

- `prepare_job` (a CPU task): the reference's face crop and the driving video's motion. Any bad
  input (missing file, unreadable image or video, no face) turns the row `failed` with a reason,
  and so does a job that crashed its worker on every allowed start (operators/quarantine.py).
- `AnimateJobs` (an actor): holds one animator, streams the driving video through it window by
  window and encodes the result with the driver's audio. Failed rows pass through untouched.

Both return rows of the results table; the large intermediate columns are dropped once used.
"""
from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.animators.base import ReferenceInput
from portraitflow.models.animators.registry import animator_params, create_animator
from portraitflow.models.face.factory import worker_analyzer
from portraitflow.models.face.images import load_image
from portraitflow.operators.atomic import UnreadableFile, atomic_write
from portraitflow.operators.decode import VideoUnreadable
from portraitflow.operators.driving_motion import (EXTRACTION_VERSION, DrivingMotion, extract_driving_motion,
                                                   iter_driving_windows)
from portraitflow.operators.generation_jobs import input_fingerprint
from portraitflow.operators.generation_results import failed_row, write_record
from portraitflow.operators.job_status import OK
from portraitflow.operators.paste_back import fit_within, paste_back
from portraitflow.operators.paths import hashed_name
from portraitflow.operators.probe import error_text
from portraitflow.operators.ray_rows import batch_rows, rows_batch
from portraitflow.operators.quarantine import crashed_reason, start_attempt
from portraitflow.operators.reference_portrait import NoFace, PreparedReference, UnreadableImage, prepare_reference
from portraitflow.operators.timing import StageTimer
from portraitflow.operators.video_writer import has_audio, write_h264

#: columns only carried from the preparation task to the animation actor (empty when it failed).
INTERMEDIATE = {"reference": b"", "motion": b""}


def _failed(row: dict[str, Any], stage: str, exc: Exception) -> dict[str, Any]:
    """The job's row as `failed` (`failed_row`). Known bad input (NoFace, VideoUnreadable, ...) gives
    its own message; anything else its type too, since a job boundary must never stop the flow."""
    known = (NoFace, UnreadableImage, VideoUnreadable, FileNotFoundError, IsADirectoryError)
    return failed_row(row, f"{stage}: {error_text(exc, known)}")


def _crashed_too_often(row: dict[str, Any], stage: str, attempts_dir: str, max_attempts: int) -> bool:
    """Record a start of `stage` on the job; True once it has crashed its worker `max_attempts` times."""
    return start_attempt(Path(attempts_dir), f"{stage}-{Path(row['output']).stem}") > max_attempts


def _driving_motion(path: str, face_cfg_json: str, cfg: AnimateConfig, motion_dir: Path) -> bytes:
    """The driver's motion as npz bytes, extracted once per folder for every job that shares the
    driver (a portrait grid on one driving video pays its dominant preparation cost once): kept in
    `motion_dir` under a digest of what the driver holds and every setting the extraction reads."""
    face = FaceConfig.model_validate_json(face_cfg_json).result_settings()
    settings = {"version": EXTRACTION_VERSION, "driving": input_fingerprint(path), "face": face, "size": cfg.size,
                "min_face_fraction": cfg.min_face_fraction, "smooth_sigma": cfg.smooth_sigma, "min_face_px": cfg.min_face_px}
    cached = motion_dir / f"{hashed_name('motion', json.dumps(settings, sort_keys=True))}.npz"
    motion_dir.mkdir(parents=True, exist_ok=True)
    with open(cached.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # jobs on the same driver at once wait for one extraction
        if cached.is_file():
            data = cached.read_bytes()
            try:
                DrivingMotion.from_bytes(data)  # damaged since (a disk error, a copied folder): extracted again
                return data
            except UnreadableFile:
                cached.unlink()
        motion = extract_driving_motion(path, worker_analyzer(face_cfg_json), cfg.size,
                                        min_face_fraction=cfg.min_face_fraction, smooth_sigma=cfg.smooth_sigma,
                                        min_face_px=cfg.min_face_px)
        data = motion.to_bytes()
        atomic_write(cached, data)
        return data


def prepare_job(row: dict[str, Any], face_cfg_json: str, animate_cfg_json: str, attempts_dir: str,
                max_attempts: int, motion_dir: str) -> dict[str, Any]:
    """Reference crop and driving motion of one job, as npz bytes columns; or a failed row."""
    if _crashed_too_often(row, "prepare", attempts_dir, max_attempts):
        return {**failed_row(row, crashed_reason("preparation", max_attempts)), **INTERMEDIATE}
    cfg = AnimateConfig.model_validate_json(animate_cfg_json)
    started = time.perf_counter()
    try:
        loaded = load_image(row["ref"])
        if not loaded.ok:
            raise UnreadableImage(f"{loaded.reason} ({loaded.detail})")
        reference = prepare_reference(loaded.rgb, worker_analyzer(face_cfg_json), cfg.size, cfg.min_face_px)
    except Exception as exc:  # a job boundary (see _failed)
        return {**_failed(row, "reference image", exc), **INTERMEDIATE}
    try:
        if Path(row["driving"]).is_dir():
            raise IsADirectoryError(f"{row['driving']} is a folder, not a video")
        if not Path(row["driving"]).is_file():
            raise FileNotFoundError(f"{row['driving']} not found")  # a stray space in a CSV shows here
        motion = _driving_motion(row["driving"], face_cfg_json, cfg, Path(motion_dir))
    except Exception as exc:  # a job boundary (see _failed)
        return {**_failed(row, "driving video", exc), **INTERMEDIATE}
    return {**row, "reference": reference.to_bytes(), "motion": motion, "prep_s": time.perf_counter() - started}


class AnimateJobs:
    """Ray Data callable class: the actor holds one animator for all the jobs it is given."""

    def __init__(self, backend: str, animate_cfg_json: str, attempts_dir: str, max_attempts: int,
                 records_dir: str) -> None:
        self.backend = backend
        self.attempts_dir, self.max_attempts, self.records_dir = attempts_dir, max_attempts, Path(records_dir)
        self.cfg = AnimateConfig.model_validate_json(animate_cfg_json)
        # the CPUs Ray reserved: x264 would take 1.5 threads per core of the node and OpenCV's pool
        # (warp's remaps) every core, whatever OMP_NUM_THREADS says
        self.threads = max(1, math.floor(self.cfg.cpus_per_actor))
        cv2.setNumThreads(self.threads)
        self.animator = create_animator(backend, self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return rows_batch([self._one(row) for row in batch_rows(batch)], dtype=object)

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        result = {k: v for k, v in row.items() if k not in INTERMEDIATE}
        if row["status"] != "pending":
            return result
        if _crashed_too_often(row, "animate", self.attempts_dir, self.max_attempts):
            return failed_row(result, crashed_reason("animation", self.max_attempts))
        started = time.perf_counter()
        try:
            timer = StageTimer()
            frames, fps, reference = self._render(row, timer)
            written = write_h264(row["output"], frames, fps=fps, audio_from=row["driving"], crf=self.cfg.crf,
                                 threads=self.threads, pad_audio=True)
        except Exception as exc:  # a job boundary (see _failed)
            return _failed(result, "animation", exc)
        # described once the frames are out: what ran (settings fitted to the video, a compile fallback)
        model = json.dumps(self.animator.describe(reference), sort_keys=True, default=str)
        total = time.perf_counter() - started
        done = {**result, "status": OK, "reason": "", "model": model, "frames": written, "fps": fps,
                "seconds": written / fps, "has_audio": has_audio(row["output"]), "animate_s": timer.seconds["animate"],
                "encode_s": total - timer.seconds["animate"], "total_s": total + row["prep_s"]}
        write_record(self.records_dir, done)
        return done

    def _render(self, row: dict[str, Any], timer: StageTimer) -> tuple[Iterable[np.ndarray], float, ReferenceInput]:
        """The output frames (lazy; the animator's time goes to `timer`'s "animate"), the output
        frame rate, and the reference they animate."""
        prepared = PreparedReference.from_bytes(row["reference"])
        motion = DrivingMotion.from_bytes(row["motion"])
        # the paste-back band's width too: warp holds it still, so nothing moved shows twice there
        params = animator_params(self.backend, {**json.loads(row["params"]), "feather": self.cfg.feather})
        windows = iter_driving_windows(row["driving"], motion, self.cfg.window)
        animation = timer.iterate("animate", self.animator.animate(prepared.reference, windows, params))
        if not params["paste_back"]:
            return animation, motion.fps, prepared.reference
        image, box = fit_within(load_image(row["ref"]).rgb, prepared.box, self.cfg.max_output_side)
        return paste_back(image, animation, box, self.cfg.feather), motion.fps, prepared.reference
