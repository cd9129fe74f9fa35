"""Which face backends can run here, and where their model files were found."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face import model_files


@dataclass(frozen=True)
class BackendReport:
    name: str
    available: bool
    detail: str


def _report(name: str, locate: Callable[[], dict[str, Path]]) -> BackendReport:
    try:
        found = locate()
    except model_files.ModelFilesMissing as exc:
        return BackendReport(name, False, str(exc))
    return BackendReport(name, True, ", ".join(f"{k}={v}" for k, v in found.items()))


def describe_backends(cfg: FaceConfig) -> list[BackendReport]:
    """One report per backend (detector/recogniser) and for the shared landmark models."""
    return [
        _report("opencv", lambda: model_files.opencv_models()),
        _report("insightface", lambda: model_files.insightface_models(cfg.insightface_root, cfg.insightface_pack)),
        _report("dlib-landmarks", lambda: model_files.dlib_models()),
    ]
