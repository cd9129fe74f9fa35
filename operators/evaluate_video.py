"""Score one generated video against its reference and driver, frame by frame, in chunks.

A job row names `job_id`, `ref` (image), `driving` (video) and `output` (the generated video,
as many frames as the driver at its frame rate). The output and the driver are decoded in
lockstep in chunks, so memory depends on the chunk size, never on the video's length. Results:
one row of per-video means, plus a per-frame parquet table written beside the outputs. An output
whose frame count (at the driver's rate) differs from the driver's by more than one frame fails
(`frame_count_mismatch`) instead of being scored on the overlap; one that differs by one is paired
with the driver as its first frames match best (`frame_offset`: a generator that writes the
reference first would otherwise be scored a frame late throughout).

Self-reenactment compares the output to the driving clip as ground truth in the output's pixel
space: unless the output was pasted back onto the full frame, the clip is cut with the reference's
square crop box (the reference is the clip's first frame, so that is the box generation used) and
resized to the output's size (whether it was pasted back: the job's `paste_back` or `params`, or
the `results.parquet` beside the output; not known, the clip is cut only when sizes differ). The
reference must be the size of the driving frames (else `reference_size_mismatch`) and the clip's
first frame: its PSNR against that frame at the pixel metrics' size must reach
`SELF_REFERENCE_MIN_PSNR_DB` (else `reference_not_driver_frame`), since another person's portrait of
the same size would be scored against a clip that is no ground truth for it (`--protocol cross`).
Head pose is measured with each face centred in its own square crop
on both sides, as generation measures it, so APD does not depend on where the face sits. APD and
AED compare head poses and expression shapes directly in self-reenactment (one person, the driver
is the ground truth) and, in cross-reenactment, how each head turns and each face changes from the
first frame both show (`metrics.apd_change`, `metrics.aed_change`), so the portrait's own head pose
and the two people's face shapes do not count as error.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.models.face.base import FaceAnalyzer
from portraitflow.models.face.pose import profile_pose
from portraitflow.operators import metrics, metrics_learned
from portraitflow.operators.atomic import atomic_target, write_parquet
from portraitflow.operators.job_status import FAILED, OK
from portraitflow.operators.probe import error_text
from portraitflow.operators.ray_rows import batch_rows
from portraitflow.operators.reference_portrait import crop_head_pose

log = logging.getLogger(__name__)

#: reason codes of a job that cannot be scored
NO_OUTPUT = "no_output"
UNREADABLE = "unreadable"
NO_REFERENCE_FACE = "no_reference_face"
EVALUATION_ERROR = "evaluation_error"
FRAME_COUNT_MISMATCH = "frame_count_mismatch"
REFERENCE_SIZE_MISMATCH = "reference_size_mismatch"
REFERENCE_NOT_DRIVER_FRAME = "reference_not_driver_frame"
ASPECT_MISMATCH = "aspect_mismatch"
#: how far an output's width may be from what its height and the ground truth's aspect give: even
#: sizes (x264) and a pasted-back frame capped at `max_output_side` round a pixel or two
ASPECT_SLACK_PX = 2

#: self protocol: least PSNR (dB, at `pixel_size`) of the reference against the driving clip's first
#: frame. Measured on the 59 decodable clips of the shared media: the clip's frame saved as PNG reads
#: 100 (the cap), as JPEG quality 50 at least 33.5 (quality 95: 41.4); first frames of other clips of
#: the same size, and portraits cut to it, at most 19.4 (one man, two clips of one studio) and 5.3 for
#: the portrait of another woman the review scored as self.
SELF_REFERENCE_MIN_PSNR_DB = 30.0
#: per-video columns that describe a video rather than score it (not ranked, never in `metrics.METRICS`):
#: the output's and the driver's own jitter and flicker, which `jitter_error` and `flicker_error` compare
DIAGNOSTICS = ("output_jitter", "driver_jitter", "output_flicker", "driver_flicker")
#: frames compared, from the start of both videos, to choose how an output one frame longer or
#: shorter than its driver is paired with it (`JobEvaluator._frame_offset`)
ALIGNMENT_PROBE_FRAMES = 8
#: how much better (this fraction of the other's mismatch) the shifted pairing must match to be taken
ALIGNMENT_MARGIN = 0.8
#: seconds of analysed frames per `metrics.jitter_error` window
JITTER_WINDOW_S = 1.0

def analyse_faces(analyzer: FaceAnalyzer, frames: np.ndarray, embed: bool = True) -> dict[str, np.ndarray]:
    """Largest face per frame: detected flag, landmarks (T,68,2), pose (T,3), embedding (T,D)
    (only with `embed`); NaN rows where no face was found. The pose is NaN too on profiles
    (`models.face.pose.profile_pose`), where the landmark fit reads a turned head as frontal or
    turned the other way, so APD leaves them out rather than compare noise."""
    count = len(frames)
    out = {
        "detected": np.zeros(count, bool),
        "landmarks": np.full((count, 68, 2), np.nan),
        "pose": np.full((count, 3), np.nan),
        "embedding": np.full((count, analyzer.embedding_dim), np.nan),
    }
    faces = [found[0] if found else None for found in analyzer.detect(list(frames))]
    kept = [i for i, face in enumerate(faces) if face is not None]
    if not kept:
        return out
    kept_frames = [frames[i] for i in kept]
    kept_faces = [faces[i] for i in kept]
    landmarks = analyzer.landmarks(kept_frames, np.stack([face.box for face in kept_faces]))
    out["detected"][kept] = True
    out["landmarks"][kept] = landmarks
    pose = crop_head_pose(analyzer, landmarks, [face.box for face in kept_faces],
                          [frame.shape[:2] for frame in kept_frames])
    profile = profile_pose(pose, np.stack([face.kps for face in kept_faces]),
                           np.stack([face.box for face in kept_faces]))[1]
    pose[profile] = np.nan
    out["pose"][kept] = pose
    if embed:
        out["embedding"][kept] = analyzer.embed(kept_frames, kept_faces)
    return out


def to_output_space(frames: np.ndarray, shape: tuple[int, int], crop_box: np.ndarray | None,
                    pasted_back: bool | None = None) -> np.ndarray:
    """Ground-truth frames in the output's pixel space (H, W) = `shape`.

    A crop-only output (`pasted_back` False) is matched by cutting the frames with `crop_box` and
    resizing to `shape`, even when the sizes already agree (a 512 x 512 driver whose face does not
    fill it). A pasted-back output is compared with the whole frames, resized only when sizes
    differ. `pasted_back` None (not known) crops only when sizes differ."""
    import cv2

    from portraitflow.models.face.align import crop_square

    height, width = shape
    if crop_box is not None and _framed_as_crop(pasted_back, (height, width), frames.shape[1:3]):
        return np.stack([crop_square(frame, crop_box, height) for frame in frames])
    if frames.shape[1:3] == tuple(shape):
        return frames
    return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in frames])


def _framed_as_crop(pasted_back: bool | None, output: tuple[int, int], frame: tuple[int, int]) -> bool:
    """Whether an output of size `output` (H, W) is compared with the face crop of `frame`-sized
    ground truth: square and not pasted back (not known: taken as pasted back at the frame's size)."""
    if pasted_back is None:
        pasted_back = tuple(output) == tuple(frame)
    return not pasted_back and output[0] == output[1]


def _aspect_refusal(output: Any, driver: Any, pasted: bool | None) -> dict[str, str] | None:
    """Self protocol: the reason and error when the output's aspect ratio is not its ground truth's
    (the driver's frame pasted back, else the square face crop; not known, as `to_output_space`
    frames it), since the ground truth would be resized to the output's shape and a squashed
    output scored as perfect."""
    crop = pasted is False or _framed_as_crop(pasted, (output.height, output.width), (driver.height, driver.width))
    aspect = 1.0 if crop else driver.width / driver.height
    if abs(output.width - output.height * aspect) <= ASPECT_SLACK_PX * max(1.0, aspect):
        return None
    truth = f"the driver's {driver.width}x{driver.height} frame" if pasted else "a square face crop"
    return {"reason": ASPECT_MISMATCH, "error": f"output is {output.width}x{output.height}, its ground truth "
                                                 f"{truth}: scored, it would be resized to the output's shape"}


def _flag(value: Any) -> bool | None:
    """A paste-back setting from a table cell: bool, 0/1 or "true"/"false"; None when missing."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def _params_flag(params: Any) -> bool | None:
    """`paste_back` of a job's effective params (a dict or its JSON, as results.parquet holds)."""
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            return None
    return _flag(params.get("paste_back")) if isinstance(params, dict) else None


def pasted_back(job: dict[str, Any], output: str) -> bool | None:
    """Whether `output` was pasted back onto the full reference: the job's `paste_back`, else its
    effective `params` (the config's value overridden per job, as `animate` records them), else the
    row for this output in the `results.parquet` that `animate` (and a sweep's generation) writes
    beside its outputs; None when nothing says."""
    for found in (_flag(job.get("paste_back")), _params_flag(job.get("params"))):
        if found is not None:
            return found
    from portraitflow.operators.generation_results import RESULTS_FILE

    results = Path(output).parent / RESULTS_FILE
    if not results.is_file():
        return None
    try:
        import pandas as pd

        table = pd.read_parquet(results, columns=["output", "params"])
    except (OSError, ValueError, KeyError):  # not a results table of ours (pyarrow's errors are ValueErrors)
        return None
    name = Path(output).name
    rows = [params for path, params in zip(table["output"], table["params"])
            if isinstance(path, str) and Path(path).name == name]
    return _params_flag(rows[-1]) if rows else None


def _has_output(output: Any) -> bool:
    """A path that names an existing file (None, NaN, "" and other non-paths do not)."""
    return isinstance(output, (str, os.PathLike)) and bool(str(output).strip()) and Path(output).is_file()


def analysed_count(frames: int, stride: int) -> int:
    """How many of `frames` resampled frames are analysed (positions divisible by `stride`)."""
    return (frames + stride - 1) // stride if frames > 0 else 0


def learned_picks(analysed: int, fid_frames: int, clip_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the analysed frames) FID and FVD use: `fid_frames` evenly spaced frames, and
    K evenly spaced non-overlapping clips of `clip_frames` consecutive frames over the whole video,
    K = max(fid_frames, clip_frames) // clip_frames (as many as fit). Returns (fid, fvd) index arrays,
    the FVD one clip after clip in order."""
    fid = np.unique(np.linspace(0, analysed - 1, fid_frames).round().astype(int)) if analysed else np.zeros(0, int)
    clips = min(max(fid_frames, clip_frames) // clip_frames, analysed // clip_frames)
    if clips <= 0:
        return fid, np.zeros(0, int)
    starts = np.linspace(0, analysed - clip_frames, clips).round().astype(int)
    return fid, (starts[:, None] + np.arange(clip_frames)[None]).reshape(-1)


def scale_short_side(frames: np.ndarray, size: int | None) -> np.ndarray:
    """Frames (T, H, W, 3) scaled so their shorter side is `size`, keeping the aspect ratio (area
    filter), or unchanged without a size: pixel metrics see a wide pasted-back frame undistorted
    (squashing it to a square made SSIM's window anisotropic) and all of it."""
    import cv2

    height, width = frames.shape[1:3]
    if not size or min(height, width) == size:
        return frames
    scale = size / min(height, width)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))  # cv2 takes (w, h)
    return np.stack([cv2.resize(f, target, interpolation=cv2.INTER_AREA) for f in frames])


def first_frame_psnr(reference: np.ndarray, driving: str, fps: float, pixel_size: int | None) -> float:
    """PSNR (dB) of `reference` against the driving clip's first frame at the driver's rate, both
    scaled as the pixel metrics scale frames: how the self protocol checks that the reference is the
    clip's own first frame (the clip is then the output's ground truth). Same-size inputs only."""
    from portraitflow.operators.decode import iter_frame_chunks

    chunks = iter_frame_chunks(driving, fps, chunk_size=1)
    try:
        first = next(chunks).frames[:1]
    finally:
        chunks.close()
    return float(metrics.psnr(scale_short_side(reference[None], pixel_size), scale_short_side(first, pixel_size))[0])


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(array, np.float32), allow_pickle=False)


class JobEvaluator:
    """Holds a face analyser (and any learned-metric networks) and scores jobs one by one."""

    def __init__(self, analyzer: FaceAnalyzer, cfg: EvaluateConfig) -> None:
        self.analyzer = analyzer
        self.cfg = cfg
        skipped = metrics_learned.skip_notes(cfg)
        self.networks = {
            name: metrics_learned.OnnxNetwork(getattr(cfg, field))
            for name, (field, _) in metrics_learned.LEARNED_METRICS.items()
            if name not in skipped
        }

    @property
    def csim_name(self) -> str:
        return f"csim_{self.analyzer.name}"

    @property
    def metric_names(self) -> list[str]:
        """Per-video metrics this evaluator reports, in table order (`metrics.METRICS`): those that
        need a ground truth only in self-reenactment, LPIPS only with its network, FID and FVD never
        (they are pooled per config)."""
        return [self.csim_name if name == "csim" else name for name in metrics.METRICS
                if name not in ("fid", "fvd") and (name != "lpips" or "lpips" in self.networks)
                and (self.cfg.protocol == "self" or name not in metrics.SELF_ONLY)]

    @property
    def columns(self) -> list[str]:
        return ["job_id", "status", "reason", "error", "frames", "frame_offset", *self.metric_names, *DIAGNOSTICS]

    def evaluate(self, job: dict[str, Any], work_dir: str | Path) -> dict[str, Any]:
        """One row with every column: status `ok` or `failed` with a reason, and metric means
        (NaN when a job could not be scored)."""
        try:
            row = self._evaluate(job, work_dir)
        except Exception as exc:  # a job that breaks a stage is a failed row; the other jobs go on
            row = {"job_id": str(job["job_id"]), "status": FAILED, "reason": EVALUATION_ERROR, "frames": 0,
                   "error": error_text(exc, known=())}
        numeric = {"frame_offset", *self.metric_names, *DIAGNOSTICS}
        return {name: row.get(name, float("nan") if name in numeric else None) for name in self.columns}

    def _evaluate(self, job: dict[str, Any], work_dir: str | Path) -> dict[str, Any]:
        from portraitflow.models.face.images import load_image
        from portraitflow.operators.decode import (FULL_RES_CHUNK_BYTES, VideoUnreadable, frames_per_chunk,
                                                   probe_video, resample_positions)
        from portraitflow.operators.reference_portrait import NoFace, reference_face

        row: dict[str, Any] = {"job_id": str(job["job_id"]), "status": FAILED, "reason": None, "frames": 0}
        output = job.get("output")
        if not _has_output(output):
            return {**row, "reason": NO_OUTPUT}
        output = str(output)
        reference = load_image(job["ref"])
        if not reference.ok:
            return {**row, "reason": f"reference_{reference.reason}"}
        self_protocol = self.cfg.protocol == "self"
        try:
            driver, out_info = probe_video(str(job["driving"])), probe_video(output)
            fps = driver.output_fps
            out_count = len(resample_positions(out_info, fps)[0])
        except VideoUnreadable as exc:
            return {**row, "reason": UNREADABLE, "error": error_text(exc)}
        drv_count = len(resample_positions(driver, fps)[0])
        if abs(out_count - drv_count) > 1:  # a truncated or padded output is not scored on the overlap
            return {**row, "reason": FRAME_COUNT_MISMATCH,
                    "error": f"output has {out_count} frames at the driver's {fps:g} fps, driver has {drv_count}"}
        refusal = self._not_ground_truth(reference.rgb, str(job["driving"]), driver) if self_protocol else None
        if refusal is not None:
            return {**row, **refusal}
        try:
            ref_face, crop_box = reference_face(reference.rgb, self.analyzer)
        except NoFace:
            return {**row, "reason": NO_REFERENCE_FACE}
        ref_embedding = self.analyzer.embed([reference.rgb], [ref_face])[0]
        pasted = pasted_back(job, output) if self_protocol else None
        if self_protocol and (refusal := _aspect_refusal(out_info, driver, pasted)) is not None:
            return {**row, **refusal}
        if self_protocol and pasted is None and out_info.width == out_info.height and driver.width == driver.height \
                and crop_box[2] - crop_box[0] < driver.width:
            same = out_info.width == driver.width
            log.warning("%s: nothing says whether %s is a face crop or pasted back, and either could be this "
                        "size; scored as %s (give the job a paste_back column, or keep animate's results.parquet "
                        "beside the outputs)", row["job_id"], output, "pasted back" if same else "a face crop")
        clips: dict[str, dict[str, list[np.ndarray]]] = {
            kind: {"fake": [], "real": []} for kind in ("fid", "fvd") if kind in self.networks}
        try:
            offset = 0 if out_count == drv_count else self._frame_offset(
                output, str(job["driving"]), fps, out_count - drv_count, crop_box, pasted)
            chunk = frames_per_chunk(self.cfg.chunk_frames, max(out_info.width, driver.width),
                                     max(out_info.height, driver.height), FULL_RES_CHUNK_BYTES)
            per_frame, out_faces, drv_faces = self._analyse_pairs(
                output, str(job["driving"]), fps, offset, min(out_count, drv_count), crop_box, pasted, clips, chunk)
        except VideoUnreadable as exc:
            return {**row, "reason": UNREADABLE, "error": error_text(exc)}
        if not per_frame:
            return {**row, "reason": UNREADABLE, "error": "no frames decoded"}
        jitter_window = max(1, round(fps * JITTER_WINDOW_S / self.cfg.frame_stride))
        frame_table = self._frame_metrics(_concat(per_frame), _concat(out_faces), _concat(drv_faces), ref_embedding,
                                          jitter_window)
        folder = Path(work_dir) / "metrics"
        self._write_features(clips, folder, row["job_id"])
        import pyarrow as pa

        write_parquet(folder / f"{row['job_id']}.frames.parquet",
                      pa.table({k: np.asarray(v) for k, v in frame_table.items()}))
        means = {name: metrics.nanmean(values) for name, values in frame_table.items() if name != "frame"}
        means["detection_rate"] = means.pop("face_detected")
        return {**row, "status": OK, "frames": int(len(frame_table["frame"])), "frame_offset": offset, **means}

    def _not_ground_truth(self, reference: np.ndarray, driving: str, driver: Any) -> dict[str, str] | None:
        """Self protocol: the reason and error when the reference is not the driving clip's first
        frame (another size, or too unlike it), so the clip is no ground truth for the output."""
        from portraitflow.operators.decode import VideoUnreadable

        if tuple(reference.shape[:2]) != (driver.height, driver.width):
            return {"reason": REFERENCE_SIZE_MISMATCH,
                    "error": f"self protocol: reference is {reference.shape[1]}x{reference.shape[0]}, "
                             f"driving frames are {driver.width}x{driver.height}, so the reference's crop box "
                             "is not the driver's (the reference must be the clip's first frame; a portrait "
                             "animated by another video is scored with --protocol cross)"}
        try:
            match_db = first_frame_psnr(reference, driving, driver.output_fps, self.cfg.pixel_size)
        except VideoUnreadable as exc:
            return {"reason": UNREADABLE, "error": error_text(exc)}
        if match_db >= SELF_REFERENCE_MIN_PSNR_DB:
            return None
        return {"reason": REFERENCE_NOT_DRIVER_FRAME,
                "error": f"self protocol: the reference is not the driving clip's first frame (PSNR "
                         f"{match_db:.1f} dB against it, below {SELF_REFERENCE_MIN_PSNR_DB:g}), so the clip "
                         "is no ground truth for this output; for a portrait of another person or from "
                         "another clip use --protocol cross"}

    def _analyse_pairs(self, output: str, driving: str, fps: float, offset: int, paired: int,
                       crop_box: tuple[int, int, int, int], pasted: bool | None,
                       clips: dict[str, dict[str, list[np.ndarray]]],
                       chunk: int) -> tuple[list[dict], list[dict], list[dict]]:
        """Pixel metrics and face analyses, per `chunk` frames, of `paired` output and driver frames
        decoded in lockstep (every `frame_stride`-th of the driver's); the frames FID and FVD use go to `clips`.
        The longer video's first frame is left out when the output runs a frame ahead (`offset` 1)
        or behind (-1). VideoUnreadable when either stops decoding."""
        from portraitflow.operators.decode import iter_frame_chunks

        out_start, drv_start = max(offset, 0), max(-offset, 0)
        stride = self.cfg.frame_stride
        fid_picks, fvd_picks = learned_picks(
            analysed_count(drv_start + paired, stride) - analysed_count(drv_start, stride),
            self.cfg.fid_frames_per_video, self.cfg.fvd_clip_frames)
        # in order (PyAV): decord holds on to the frames it decoded, 0.7 GiB a 9-s 720p video (decode.py)
        pairs = zip(iter_frame_chunks(output, fps, start_s=out_start / fps, chunk_size=chunk, in_order=True),
                    iter_frame_chunks(driving, fps, start_s=drv_start / fps, chunk_size=chunk, in_order=True))
        per_frame, out_faces, drv_faces, analysed = [], [], [], 0
        for out_chunk, drv_chunk in pairs:  # frames are the driver's: what each output frame is scored against
            count = min(len(out_chunk.frames), len(drv_chunk.frames))
            keep = [i for i in range(count) if int(drv_chunk.positions[i]) % stride == 0]
            if not keep:
                continue
            out_frames, drv_frames = out_chunk.frames[keep], drv_chunk.frames[keep]
            if self.cfg.protocol == "self":
                drv_frames = to_output_space(drv_frames, out_frames.shape[1:3], crop_box, pasted)
            per_frame.append(self._pixel_metrics(out_frames, drv_frames, drv_chunk.positions[keep]))
            out_faces.append(analyse_faces(self.analyzer, out_frames))
            drv_faces.append(analyse_faces(self.analyzer, drv_frames, embed=False))
            self._keep_clip_frames(clips, {"fid": fid_picks, "fvd": fvd_picks}, analysed, out_frames, drv_frames)
            analysed += len(keep)
        return per_frame, out_faces, drv_faces

    def _pixel_metrics(self, out_frames: np.ndarray, drv_frames: np.ndarray,
                       positions: np.ndarray) -> dict[str, np.ndarray]:
        values = {"frame": positions.astype(np.int64), "luma": metrics.luminance(out_frames),
                  "driver_luma": metrics.luminance(drv_frames)}
        if self.cfg.protocol == "self":
            out_frames, drv_frames = (scale_short_side(f, self.cfg.pixel_size) for f in (out_frames, drv_frames))
            values.update(psnr=metrics.psnr(out_frames, drv_frames), ssim=metrics.ssim(out_frames, drv_frames),
                          l1=metrics.l1(out_frames, drv_frames))
            if "lpips" in self.networks:
                values["lpips"] = metrics_learned.lpips(self.networks["lpips"], out_frames, drv_frames)
        return values

    def _frame_metrics(self, pixel: dict, out: dict, drv: dict, ref_embedding: np.ndarray,
                       jitter_window: int) -> dict[str, np.ndarray]:
        table = {k: v for k, v in pixel.items() if k not in ("luma", "driver_luma")}
        # among the frames where the driver shows a face: where it shows none, an output that follows
        # it loses the face too, and that is no fault of the animator's
        table["face_detected"] = np.where(drv["detected"], out["detected"], np.nan)
        table[self.csim_name] = metrics.csim(out["embedding"], ref_embedding)
        if self.cfg.protocol == "self":
            table["akd"] = metrics.akd(out["landmarks"], drv["landmarks"])
        # self: one person, the driver is the ground truth, so poses and shapes compare directly;
        # cross: the portrait's own pose and face shape are not the driver's, so compare changes
        self_protocol = self.cfg.protocol == "self"
        table["apd"] = (metrics.apd if self_protocol else metrics.apd_change)(out["pose"], drv["pose"])
        table["aed"] = (metrics.aed if self_protocol else metrics.aed_change)(out["landmarks"], drv["landmarks"])
        # a video's own jitter and flicker reward not moving (real talking has both), so the ranked
        # metrics are how far they are from the driver's; the own values stay as diagnostics
        table["jitter_error"] = metrics.jitter_error(out["landmarks"], drv["landmarks"], jitter_window)
        table["flicker_error"] = metrics.flicker_error(pixel["luma"], pixel["driver_luma"])
        table["output_jitter"] = metrics.landmark_jitter(out["landmarks"])
        table["driver_jitter"] = metrics.landmark_jitter(drv["landmarks"])
        table["output_flicker"] = metrics.flicker(pixel["luma"])
        table["driver_flicker"] = metrics.flicker(pixel["driver_luma"])
        return table

    def _frame_offset(self, output: str, driving: str, fps: float, extra: int, crop_box: tuple[int, int, int, int],
                      pasted: bool | None) -> int:
        """How many frames the output runs ahead of the driver, when it has `extra` (1 or -1) frames
        more: 1 pairs the output's second frame with the driver's first (a generator that writes the
        reference first), -1 the output's first with the driver's second, 0 both first frames (the
        longer one's last frame left over; kept unless the shifted pairing matches clearly better,
        by ALIGNMENT_MARGIN). Measured on
        the first ALIGNMENT_PROBE_FRAMES pairs only, a few frames decoded again rather than the whole
        videos twice: self, the mean pixel error (L1) against the ground truth; cross,
        `_motion_mismatch` of the landmarks."""
        from portraitflow.operators.decode import iter_frame_chunks

        firsts = []
        for path in (output, driving):
            chunks = iter_frame_chunks(path, fps, chunk_size=ALIGNMENT_PROBE_FRAMES + 1)
            try:
                firsts.append(next(chunks).frames)
            finally:
                chunks.close()
        out_frames, drv_frames = firsts
        if self.cfg.protocol == "self":
            drv_frames = to_output_space(drv_frames, out_frames.shape[1:3], crop_box, pasted)
            out_side, drv_side = (scale_short_side(f, self.cfg.pixel_size) for f in (out_frames, drv_frames))
            mismatch = _pixel_mismatch
        else:
            out_side, drv_side = (analyse_faces(self.analyzer, f, embed=False)["landmarks"]
                                  for f in (out_frames, drv_frames))
            mismatch = _motion_mismatch

        def paired(offset: int) -> float:
            out_start, drv_start = max(offset, 0), max(-offset, 0)
            count = min(len(out_side) - out_start, len(drv_side) - drv_start, ALIGNMENT_PROBE_FRAMES)
            return mismatch(out_side[out_start:out_start + count], drv_side[drv_start:drv_start + count])

        # by a clear margin only: on a still opening both pairings match alike, and coding noise must
        # not shift a whole video by a frame (NaN, no measure, compares False: both first frames)
        return extra if paired(extra) < ALIGNMENT_MARGIN * paired(0) else 0

    @staticmethod
    def _keep_clip_frames(clips: dict[str, dict[str, list[np.ndarray]]], picks: dict[str, np.ndarray], first: int,
                          fake: np.ndarray, real: np.ndarray) -> None:
        """Keep, of the analysed frames `first`.. in this chunk, only those FID and FVD use
        (`learned_picks`), so memory stays bounded whatever the video's length."""
        for kind, sides in clips.items():
            chosen = picks[kind][(picks[kind] >= first) & (picks[kind] < first + len(fake))] - first
            if len(chosen):
                sides["fake"].append(fake[chosen])
                sides["real"].append(real[chosen])

    def _write_features(self, clips: dict[str, dict[str, list[np.ndarray]]], folder: Path, job_id: str) -> None:
        """FID features of this video's evenly spaced frames and FVD features of its evenly spaced
        clips (`learned_picks`), pooled per config by the sweep."""
        folder.mkdir(parents=True, exist_ok=True)
        for side in ("fake", "real"):
            if clips.get("fid", {}).get(side):
                _save_npy(metrics_learned.image_features(self.networks["fid"], np.concatenate(clips["fid"][side])),
                          folder / f"{job_id}.fid_{side}.npy")
            if clips.get("fvd", {}).get(side):
                frames = np.concatenate(clips["fvd"][side])  # whole clips, one after another
                _save_npy(metrics_learned.video_features(self.networks["fvd"], frames, self.cfg.fvd_clip_frames),
                          folder / f"{job_id}.fvd_{side}.npy")


def _pixel_mismatch(out_frames: np.ndarray, drv_frames: np.ndarray) -> float:
    """Mean pixel error (L1, 0..1) of frames against their ground truth."""
    return float(metrics.l1(out_frames, drv_frames).mean())


def _motion_mismatch(out_landmarks: np.ndarray, drv_landmarks: np.ndarray) -> float:
    """Mean distance between how the two videos' landmarks move from the first frame where both show a
    face, each per its own face size there (two people: their shapes and framings drop out); NaN
    with fewer than two such frames."""
    both = np.flatnonzero(np.isfinite(out_landmarks).all(axis=(1, 2)) & np.isfinite(drv_landmarks).all(axis=(1, 2)))
    if len(both) < 2:
        return float("nan")
    moves = [(landmarks[both] - landmarks[both[0]]) / metrics.face_size(landmarks[both[:1]])[0]
             for landmarks in (out_landmarks, drv_landmarks)]
    return float(np.linalg.norm(moves[0] - moves[1], axis=2).mean())


def learned_aggregates(work_dir: Path, job_ids: list[str]) -> dict[str, float]:
    """FID and FVD of one config, pooled over the videos whose evaluators saved features (a video
    too short for one FVD clip has none); NaN with fewer than two samples a side."""
    out = {}
    for name in ("fid", "fvd"):
        pairs = [(work_dir / "metrics" / f"{j}.{name}_real.npy", work_dir / "metrics" / f"{j}.{name}_fake.npy")
                 for j in job_ids]
        pairs = [pair for pair in pairs if pair[0].is_file() and pair[1].is_file()]
        if pairs:
            real, fake = (np.concatenate([np.load(pair[side], allow_pickle=False) for pair in pairs]) for side in (0, 1))
            out[name] = metrics_learned.frechet_distance(real, fake)
    return out


class EvaluateActor:
    """Ray Data callable: one face analyser per actor, scoring a batch of job rows."""

    def __init__(self, face_json: str, evaluate_json: str, work_dir: str) -> None:
        from portraitflow.jobs.config.face import FaceConfig
        from portraitflow.models.face.factory import create_analyzer

        self.evaluator = JobEvaluator(create_analyzer(FaceConfig.model_validate_json(face_json)),
                                      EvaluateConfig.model_validate_json(evaluate_json))
        self.work_dir = work_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [self.evaluator.evaluate(job, self.work_dir) for job in batch_rows(batch)]
        return {name: [row[name] for row in rows] for name in self.evaluator.columns}
