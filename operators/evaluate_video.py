"""Score one generated video against its reference and driver, frame by frame, in chunks.

A job row names `job_id`, `ref` (image), `driving` (video) and `output` (the generated video,
as many frames as the driver at its frame rate). The output and the driver are decoded in
lockstep in chunks, so memory depends on the chunk size, never on the video's length. Results:
one row of per-video means, plus a per-frame parquet table written beside the outputs.

Self-reenactment compares the output to the driving clip as ground truth in the output's pixel
space: when the two differ in size the clip is cut with the reference's square crop box (the
reference is the clip's first frame, so that is the box generation used) and resized.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.models.face.base import FaceAnalyzer
from portraitflow.operators import metrics, metrics_learned
from portraitflow.operators.atomic import atomic_target

#: reason codes of a job that cannot be scored
NO_OUTPUT = "no_output"
UNREADABLE = "unreadable"
NO_REFERENCE_FACE = "no_reference_face"
EVALUATION_ERROR = "evaluation_error"


def analyse_faces(analyzer: FaceAnalyzer, frames: np.ndarray, embed: bool = True) -> dict[str, np.ndarray]:
    """Largest face per frame: detected flag, landmarks (T,68,2), pose (T,3), embedding (T,D)
    (only with `embed`); NaN rows where no face was found."""
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
    out["pose"][kept] = analyzer.head_pose(landmarks, [frame.shape[:2] for frame in kept_frames])
    if embed:
        out["embedding"][kept] = analyzer.embed(kept_frames, kept_faces)
    return out


def to_output_space(frames: np.ndarray, shape: tuple[int, int], crop_box: np.ndarray | None) -> np.ndarray:
    """Ground-truth frames in the output's pixel space: as they are when sizes match, else cut
    with `crop_box` (when given) and resized to `shape` (H, W)."""
    import cv2

    from portraitflow.models.face.align import crop_square

    if frames.shape[1:3] == tuple(shape):
        return frames
    height, width = shape
    if crop_box is not None and height == width:
        return np.stack([crop_square(frame, crop_box, height) for frame in frames])
    return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in frames])


def _resize(frames: np.ndarray, size: int | None) -> np.ndarray:
    """Frames scaled to `size` x `size` (area filter), or unchanged without a size."""
    import cv2

    if not size or frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_target(path) as tmp:
        pq.write_table(table, tmp)


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
        """Per-video metrics this evaluator reports, in table order."""
        pixel = ["psnr", "ssim", "l1"] + (["lpips"] if "lpips" in self.networks else [])
        motion = ["akd", "apd", "aed"] if self.cfg.protocol == "self" else ["apd", "aed"]
        return (pixel if self.cfg.protocol == "self" else []) + [self.csim_name, *motion, "jitter", "flicker",
                                                                   "detection_rate"]

    @property
    def columns(self) -> list[str]:
        return ["job_id", "status", "reason", "error", "frames", *self.metric_names]

    def evaluate(self, job: dict[str, Any], work_dir: str | Path) -> dict[str, Any]:
        """One row with every column: status `ok` or `failed` with a reason, and metric means
        (NaN when a job could not be scored)."""
        try:
            row = self._evaluate(job, work_dir)
        except Exception as exc:  # a job that breaks a stage is a failed row; the other jobs go on
            row = {"job_id": str(job["job_id"]), "status": "failed", "reason": EVALUATION_ERROR, "frames": 0,
                   "error": f"{type(exc).__name__}: {exc}"[:300]}
        return {name: row.get(name, float("nan") if name in self.metric_names else None) for name in self.columns}

    def _evaluate(self, job: dict[str, Any], work_dir: str | Path) -> dict[str, Any]:
        from portraitflow.models.face.align import square_crop_box
        from portraitflow.models.face.images import load_image
        from portraitflow.operators.decode import VideoUnreadable, iter_frame_chunks, probe_video

        row: dict[str, Any] = {"job_id": str(job["job_id"]), "status": "failed", "reason": None, "frames": 0}
        output = job.get("output")
        if not output or not Path(output).is_file():
            return {**row, "reason": NO_OUTPUT}
        reference = load_image(job["ref"])
        if not reference.ok:
            return {**row, "reason": f"reference_{reference.reason}"}
        ref_faces = self.analyzer.detect([reference.rgb])[0]
        if not ref_faces:
            return {**row, "reason": NO_REFERENCE_FACE}
        ref_embedding = self.analyzer.embed([reference.rgb], ref_faces[:1])[0]
        crop_box = square_crop_box(ref_faces[0].box, reference.rgb.shape[:2])
        self_protocol = self.cfg.protocol == "self"
        try:
            fps = probe_video(str(job["driving"])).fps
            pairs = zip(iter_frame_chunks(str(output), fps, chunk_size=self.cfg.chunk_frames),
                        iter_frame_chunks(str(job["driving"]), fps, chunk_size=self.cfg.chunk_frames))
            per_frame, out_faces, drv_faces, clips = [], [], [], {"fake": [], "real": []}
            for out_chunk, drv_chunk in pairs:
                count = min(len(out_chunk.frames), len(drv_chunk.frames))
                keep = [i for i in range(count) if int(out_chunk.positions[i]) % self.cfg.frame_stride == 0]
                if not keep:
                    continue
                out_frames = out_chunk.frames[keep]
                drv_frames = drv_chunk.frames[keep]
                if self_protocol:
                    drv_frames = to_output_space(drv_frames, out_frames.shape[1:3], crop_box)
                per_frame.append(self._pixel_metrics(out_frames, drv_frames, out_chunk.positions[keep]))
                out_faces.append(analyse_faces(self.analyzer, out_frames))
                drv_faces.append(analyse_faces(self.analyzer, drv_frames, embed=False))
                clips["fake"].append(out_frames)
                clips["real"].append(drv_frames)
                self._trim_clips(clips)
        except VideoUnreadable as exc:
            return {**row, "reason": UNREADABLE, "error": str(exc)[:300]}
        if not per_frame:
            return {**row, "reason": UNREADABLE, "error": "no frames decoded"}
        frame_table = self._frame_metrics(_concat(per_frame), _concat(out_faces), _concat(drv_faces), ref_embedding)
        folder = Path(work_dir) / "metrics"
        self._write_features(clips, folder, row["job_id"])
        import pyarrow as pa

        _write_parquet(pa.table({k: np.asarray(v) for k, v in frame_table.items()}),
                       folder / f"{row['job_id']}.frames.parquet")
        means = {name: metrics.nanmean(values) for name, values in frame_table.items() if name != "frame"}
        means["detection_rate"] = means.pop("face_detected")
        return {**row, "status": "ok", "frames": int(len(frame_table["frame"])), **means}

    def _pixel_metrics(self, out_frames: np.ndarray, drv_frames: np.ndarray,
                       positions: np.ndarray) -> dict[str, np.ndarray]:
        values = {"frame": positions.astype(np.int64), "luma": metrics.luminance(out_frames)}
        if self.cfg.protocol == "self":
            out_frames, drv_frames = (_resize(f, self.cfg.pixel_size) for f in (out_frames, drv_frames))
            values.update(psnr=metrics.psnr(out_frames, drv_frames), ssim=metrics.ssim(out_frames, drv_frames),
                          l1=metrics.l1(out_frames, drv_frames))
            if "lpips" in self.networks:
                values["lpips"] = metrics_learned.lpips(self.networks["lpips"], out_frames, drv_frames)
        return values

    def _frame_metrics(self, pixel: dict, out: dict, drv: dict, ref_embedding: np.ndarray) -> dict[str, np.ndarray]:
        table = {k: v for k, v in pixel.items() if k != "luma"}
        table["face_detected"] = out["detected"].astype(np.float64)
        table[self.csim_name] = metrics.csim(out["embedding"], ref_embedding)
        if self.cfg.protocol == "self":
            table["akd"] = metrics.akd(out["landmarks"], drv["landmarks"])
        table["apd"] = metrics.apd(out["pose"], drv["pose"])
        table["aed"] = metrics.aed(out["landmarks"], drv["landmarks"])
        table["jitter"] = metrics.landmark_jitter(out["landmarks"])
        table["flicker"] = metrics.flicker(pixel["luma"])
        return table

    def _trim_clips(self, clips: dict[str, list[np.ndarray]]) -> None:
        """Keep only the frames FID and FVD will use, so memory stays bounded."""
        if not ({"fid", "fvd"} & set(self.networks)):
            clips["fake"].clear()
            clips["real"].clear()
            return
        keep = max(self.cfg.fvd_clip_frames, self.cfg.fid_frames_per_video)
        for side in clips:
            merged = np.concatenate(clips[side])[:keep]
            clips[side][:] = [merged]

    def _write_features(self, clips: dict[str, list[np.ndarray]], folder: Path, job_id: str) -> None:
        """FID/FVD features of this video's first frames, pooled per config by the sweep."""
        folder.mkdir(parents=True, exist_ok=True)
        for side, parts in clips.items():
            if not parts:
                continue
            frames = np.concatenate(parts)
            if "fid" in self.networks:
                picks = np.unique(np.linspace(0, len(frames) - 1, self.cfg.fid_frames_per_video).astype(int))
                _save_npy(metrics_learned.image_features(self.networks["fid"], frames[picks]),
                          folder / f"{job_id}.fid_{side}.npy")
            if "fvd" in self.networks and len(frames) >= self.cfg.fvd_clip_frames:
                _save_npy(metrics_learned.video_features(self.networks["fvd"], frames, self.cfg.fvd_clip_frames),
                          folder / f"{job_id}.fvd_{side}.npy")


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

    def __init__(self, face: dict[str, Any], evaluate: dict[str, Any], work_dir: str) -> None:
        from portraitflow.jobs.config.face import FaceConfig
        from portraitflow.models.face.factory import create_analyzer

        self.evaluator = JobEvaluator(create_analyzer(FaceConfig(**face)), EvaluateConfig(**evaluate))
        self.work_dir = work_dir

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        jobs = [dict(zip(batch, values)) for values in zip(*batch.values())]
        rows = [self.evaluator.evaluate(job, self.work_dir) for job in jobs]
        return {name: [row[name] for row in rows] for name in self.evaluator.columns}
