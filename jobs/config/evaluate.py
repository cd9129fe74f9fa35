"""Settings of the evaluate flow (`portraitflow evaluate`, `sweep`, `report`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from portraitflow.jobs.config.fields import ConfigModel, OPERATIONAL


class EvaluateConfig(ConfigModel):
    protocol: Literal["self", "cross"] = Field(
        "self",
        description="`self`: reference = first frame of a clip, driver = the same clip, outputs compared "
        "to it as ground truth (PSNR, SSIM, L1, LPIPS, AKD). `cross`: reference and driver of different people; "
        "every metric but those ground-truth ones (pose, expression, identity, jitter, flicker, detection, FID, FVD).",
    )
    experiment: str = Field("portraitflow-evaluate", min_length=1, json_schema_extra=OPERATIONAL, description="MLflow experiment of evaluations and sweeps.")
    rank_by: str = Field("apd", json_schema_extra=OPERATIONAL, description="Metric that sorts the summary table and the report.")
    frame_stride: int = Field(
        1, ge=1, description="Analyse every Nth frame for face metrics (1 = all); temporal metrics use the kept frames."
    )
    max_seconds: float | None = Field(
        None, gt=0, description="Cut each driving clip to its first N seconds before generating (empty: whole clip)."
    )
    max_videos: int | None = Field(None, ge=1, description="Use at most N clips of the dataset (empty: all).")
    max_parallel: int = Field(1, ge=1, json_schema_extra=OPERATIONAL, description="Sweep configs generated and evaluated at the same time.")
    evaluators: int = Field(1, ge=1, json_schema_extra=OPERATIONAL, description="Evaluation actors (each holds one face analyser).")
    pixel_size: int | None = Field(
        256, ge=16, description="Shorter side in px to which frames are scaled, aspect ratio kept, before PSNR, "
        "SSIM, L1 and LPIPS compare them (papers report 256); empty compares at the output's own size.",
    )
    chunk_frames: int = Field(32, ge=2, json_schema_extra=OPERATIONAL, description="Frames of each video decoded and analysed per step, "
                              "fewer where they would pass 128 MiB (5 frames of 4K): bounds memory.")
    side_by_side: int = Field(2, ge=0, json_schema_extra=OPERATIONAL, description="Jobs per config rendered as reference | driver | output videos.")
    lpips_onnx: str | None = Field(
        None, description="Local LPIPS ONNX file (two images in [-1,1] to distances); empty skips LPIPS with a note."
    )
    fid_onnx: str | None = Field(
        None,
        description="Local ONNX image-feature network for FID (e.g. Inception pool3); empty skips FID with a note.",
    )
    fvd_onnx: str | None = Field(
        None, description="Local ONNX video-feature network for FVD (e.g. I3D); empty skips FVD with a note."
    )
    fid_frames_per_video: int = Field(16, ge=1, description="Frames per video (evenly spaced) fed to FID.")
    fvd_clip_frames: int = Field(16, ge=2, description="Frames per clip fed to the FVD network.")
