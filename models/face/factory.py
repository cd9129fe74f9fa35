"""Build the configured face analyser; Ray actors call this in __init__ so nothing is pickled."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face import model_files
from portraitflow.models.face.base import FaceAnalyzer


def create_analyzer(cfg: FaceConfig, threads: int = 0) -> FaceAnalyzer:
    """Load the models of `cfg.backend` now; raises model_files.ModelFilesMissing when absent.

    OpenCV and ONNX Runtime get `cfg.num_threads` threads, else `threads` (the CPUs the caller
    reserved), else OMP_NUM_THREADS (which Ray sets to the CPUs of each task or actor): several
    workers per node must not each spawn a thread per core. Backends are imported here, so a
    process that uses `opencv` never imports insightface.
    """
    threads = cfg.num_threads or threads or int(os.environ.get("OMP_NUM_THREADS", "0"))
    if threads > 0:
        import cv2

        cv2.setNumThreads(threads)
    analyzer = _load_backend(cfg, threads)
    if cfg.same_person_threshold is not None:
        analyzer.same_person_threshold = cfg.same_person_threshold
    return analyzer


@functools.lru_cache(maxsize=2)
def worker_analyzer(face_settings: str, threads: int = 0) -> FaceAnalyzer:
    """The analyser of these settings (`FaceConfig` JSON), loaded once per worker process: Ray runs
    many tasks in one process (curation's renders, generation's preparations), and loading the
    models takes about a second."""
    return create_analyzer(FaceConfig.model_validate_json(face_settings), threads=threads)


#: each detector/recogniser backend's model files, and the 68-point landmarks every backend takes
#: from dlib (`dlib-landmarks`), by role; each raises model_files.ModelFilesMissing, naming what to
#: download and where to put it, when they are not on this machine
MODEL_FILES: dict[str, Callable[[FaceConfig], dict[str, Path]]] = {
    "opencv": lambda cfg: model_files.opencv_models(),
    "insightface": lambda cfg: model_files.insightface_models(cfg.insightface_root, cfg.insightface_pack),
    "dlib-landmarks": lambda cfg: model_files.dlib_models(),
}


def check_model_files(cfg: FaceConfig) -> None:
    """Raise model_files.ModelFilesMissing when `cfg.backend`'s model files or the landmark
    models are missing: a driver refuses the run before each of its actors dies of it."""
    for backend in ("dlib-landmarks", cfg.backend):
        MODEL_FILES[backend](cfg)


def model_digests(cfg: FaceConfig) -> dict[str, str]:
    """The sha256 of each model file `cfg` resolves to, by role: what a face layer finds depends on
    the files, not on the settings that name them (another insightface root, a pack replaced in
    place), so a corpus and its cached scans record these."""
    files = {**MODEL_FILES["dlib-landmarks"](cfg), **MODEL_FILES[cfg.backend](cfg)}
    return {role: _file_digest(str(path), path.stat().st_size, path.stat().st_mtime_ns)
            for role, path in sorted(files.items())}


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """A model file's sha256, read once per process while its size and time stay the same."""
    return model_files.file_sha256(Path(path))


def _load_backend(cfg: FaceConfig, threads: int) -> FaceAnalyzer:
    if cfg.backend == "opencv":
        from portraitflow.models.face.opencv_backend import OpenCVAnalyzer

        return OpenCVAnalyzer(det_score_threshold=cfg.det_score_threshold, det_size=cfg.det_size)
    if cfg.backend == "insightface":
        from portraitflow.models.face.insightface_backend import InsightFaceAnalyzer

        return InsightFaceAnalyzer(cfg.insightface_root, cfg.insightface_pack, det_score_threshold=cfg.det_score_threshold,
                                   det_size=cfg.det_size, num_threads=threads)
    raise ValueError(f"unknown face backend {cfg.backend!r}")
