"""The `still` baseline: the reference portrait repeated for every driving frame.

It frames the reference as generation does (the largest face's square crop at `size`, or the
whole image with `paste_back`) and writes as many frames as the driver at its frame rate with the
driver's audio, so it is scored exactly like a real animator and any animator must beat it on
motion metrics (APD, AKD) to be worth running.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.models.face.base import FaceAnalyzer
from portraitflow.operators.generation_jobs import Job, output_name


def still_frames(reference: np.ndarray, analyzer: FaceAnalyzer, size: int, paste_back: bool) -> np.ndarray:
    """The single frame the baseline shows; raises NoFace when the reference has none."""
    from portraitflow.models.face.align import crop_square
    from portraitflow.operators.reference_portrait import reference_face

    if paste_back:
        return reference
    return crop_square(reference, reference_face(reference, analyzer)[1], size)


def render_still(job: dict[str, Any], out_path: Path, analyzer: FaceAnalyzer, size: int = 512,
                 paste_back: bool = False, chunk: int = 32) -> dict[str, Any]:
    """Write the still video of one job; returns its results row (job_id, status, reason, output,
    frames, backend; `error` for an unreadable driver, `seconds` once written)."""
    from portraitflow.models.face.images import load_image
    from portraitflow.operators.decode import VideoUnreadable, probe_video
    from portraitflow.operators.reference_portrait import NoFace
    from portraitflow.operators.video_writer import write_h264

    started = time.perf_counter()
    row = {"job_id": str(job["job_id"]), "status": "failed", "reason": None, "output": None, "frames": 0,
           "backend": "still"}
    reference = load_image(job["ref"])
    if not reference.ok:
        return {**row, "reason": f"reference_{reference.reason}"}
    try:
        info = probe_video(str(job["driving"]))
        frame = still_frames(reference.rgb, analyzer, size, paste_back)
    except VideoUnreadable as exc:
        return {**row, "reason": "driving_unreadable", "error": str(exc)[:300]}
    except NoFace:
        return {**row, "reason": "no_face"}
    count = info.num_frames

    def chunks() -> Iterator[np.ndarray]:
        for begin in range(0, count, chunk):
            yield np.repeat(frame[None], min(chunk, count - begin), axis=0)

    frames = write_h264(out_path, chunks(), info.fps, audio_from=job["driving"])
    return {**row, "status": "ok", "output": str(out_path), "frames": frames,
            "seconds": time.perf_counter() - started}


class StillActor:
    """Ray Data callable rendering the `still` baseline, one face analyser per actor."""

    def __init__(self, face: dict[str, Any], out_dir: str, size: int, paste_back: bool) -> None:
        from portraitflow.jobs.config.face import FaceConfig
        from portraitflow.models.face.factory import create_analyzer

        self.analyzer = create_analyzer(FaceConfig(**face))
        self.out_dir, self.size, self.paste_back = Path(out_dir), size, paste_back

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """Render each job unless its video exists (a resumed sweep). Videos are named as generation
        names an animator's (`output_name`: job id, what the reference and driver hold, size and
        paste_back), so a job whose reference changed is rendered again, never scored on the old video."""
        rows, settings = [], {"size": self.size, "paste_back": self.paste_back}
        for job in (dict(zip(batch, values)) for values in zip(*batch.values())):
            path = self.out_dir / output_name(Job(str(job["job_id"]), job["ref"], job["driving"]), "still", {}, settings)
            if path.is_file():
                rows.append({"job_id": job["job_id"], "status": "ok", "reason": None, "output": str(path)})
                continue
            try:
                rows.append(render_still(job, path, self.analyzer, self.size, self.paste_back))
            except Exception as exc:  # one job's failure is its row, never the whole config's
                rows.append({"job_id": job["job_id"], "status": "failed", "reason": f"render_error: {exc}"[:300]})
        return {key: [row.get(key) for row in rows] for key in ("job_id", "status", "reason", "output")}
