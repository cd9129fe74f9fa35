"""Settings of the animate flow: which animator, its motion options, resources and outputs.

The job options (`PER_JOB_FIELDS`: motion options, paste-back, hunyuan sampling) are the defaults
of every job; a jobs file may override them per job in columns of the same names.

Every backend reads `PIPELINE_FIELDS`; each animator declares the other settings it reads
(`Animator.params`), and a setting given for a backend that does not read it is refused rather
than ignored. `OPERATIONAL_FIELDS` say where and how fast a job runs and what is recorded, never
what it writes: every other setting a backend reads is part of its outputs' names.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from portraitflow.jobs.config.fields import ConfigModel, OPERATIONAL, operational

#: job fields a jobs file may set per row, overriding the config.
PER_JOB_FIELDS = ("motion", "pose_multiplier", "expression_multiplier", "paste_back",
                  "seed", "num_steps", "appearance_scale", "motion_scale")
#: settings the generation flow applies whatever the animator: framing, driving motion, encoding, resources.
PIPELINE_FIELDS = ("backend", "size", "window", "paste_back", "feather", "max_output_side", "min_face_fraction",
                   "min_face_px", "smooth_sigma", "crf", "actors", "cpus_per_actor", "preview_jobs", "preview_frames",
                   "experiment")
#: the smallest crop and output side: the face fills about a third of the crop, so below this it
#: would be a thumbnail the animator cannot read
MIN_SIDE = 64


class AnimateConfig(ConfigModel):
    backend: Literal["auto", "warp", "hunyuan", "still"] = Field(
        "auto",
        description="Animator. `warp`: the CPU landmark-driven preview and baseline (docs/generation.md). "
        "`hunyuan`: HunyuanPortrait from `weights`. `still`: the reference repeated, the evaluation baseline "
        "that moves nothing. `auto`: hunyuan when `weights` is set, else warp.",
    )
    weights: str | None = Field(
        None, description="Folder of the HunyuanPortrait weights (hunyuan backend); empty selects warp under `auto`."
    )
    size: int = Field(
        512, ge=MIN_SIDE, description="Side in pixels of the square face crop the animator works in; even, as H.264 "
        "in yuv420p needs.",
    )
    window: int = Field(25, ge=1, json_schema_extra=OPERATIONAL,
                        description="Driving frames streamed through the animator at a time (bounds memory).")
    motion: Literal["relative", "absolute"] = Field(
        "relative",
        description="`relative`: the driver's motion from its first frame of each shot is added to the "
        "reference's pose and expression. `absolute`: the driver's pose and expression replace them.",
    )
    pose_multiplier: float = Field(1.0, ge=0.0, description="Scales head rotation, translation and scale changes.")
    expression_multiplier: float = Field(1.0, ge=0.0, description="Scales expression (non-rigid landmark) changes.")
    paste_back: bool = Field(
        False, description="Composite the animated crop onto the full reference image with a feathered mask; "
        "otherwise write the square crop.",
    )
    seed: int | None = Field(None, ge=0, lt=2**64, description="hunyuan: sampling seed (0 to 2**64-1, what torch's "
                             "generators take: a negative seed would draw what its value plus 2**64 does); empty: the release's seed.")
    num_steps: int | None = Field(None, ge=1, description="hunyuan: denoising steps; empty: the backend's default.")
    appearance_scale: float | None = Field(None, ge=0.0, description="hunyuan: appearance guidance scale; empty: default.")
    motion_scale: float | None = Field(None, ge=0.0, description="hunyuan: motion guidance scale; empty: default.")
    feather: float = Field(
        0.1, gt=0.0, le=0.5, description="Width of the paste-back mask's soft edge, as a fraction of the crop "
        "side; a side of the crop on the portrait's border gets none.",
    )
    max_output_side: int = Field(
        2048, ge=0, description="Paste-back: a portrait whose longer side exceeds this many pixels is scaled down to "
        "it, with its crop box, before the animation is composited onto it, so outputs stay a size hardware decoders "
        "play (a 12 MP photo made an H.264 level 6 stream) and a window of frames a few hundred MB (0: the "
        "portrait's own size). Crop-only outputs are `size`.",
    )
    min_face_fraction: float = Field(
        0.5, ge=0.0, le=1.0, json_schema_extra=OPERATIONAL,
        description="A driving video whose face is found on fewer frames than this fraction fails.",
    )
    min_face_px: int = Field(
        64, ge=0, json_schema_extra=OPERATIONAL, description="A reference portrait whose face is smaller (the longer side of its box, in px) fails: "
        "the animator would upscale a thumbnail into a featureless video; so does a driving video whose face is "
        "(the median over the frames it is found on): a 30-px face's landmarks are noise, animated as grimaces "
        "(0: any size).",
    )
    smooth_sigma: float = Field(0.8, ge=0.0, description="Temporal Gaussian smoothing of the driver's landmarks, in frames (0: none): warp's "
                                "jitter filter; hunyuan reads the points as detected, as the release does, and refuses this setting.")
    actors: int = Field(
        1, ge=1, json_schema_extra=OPERATIONAL, description="Most animation actors for CPU backends (warp, or hunyuan with `gpus` 0); the pool grows "
        "from 1 while CPUs are free, so preparation tasks always keep room to run.",
    )
    cpus_per_actor: float = Field(1.0, gt=0.0, json_schema_extra=OPERATIONAL, description="CPUs reserved by each animation actor.")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = Field(
        "default",
        json_schema_extra=OPERATIONAL, description="hunyuan on CUDA: `torch.compile` mode of the UNet and the VAE decoder (1.46x per UNet call on an "
        "H200; decoding 2.5x on an H100; docs/hunyuan.md). Each GPU actor compiles on its first job (about 180 s on an "
        "H100; about 30 s from the compile cache a previous run left on the machine); a failed compilation falls back "
        "to eager. Empty: eager.",
    )
    windows_per_call: int = Field(
        1, ge=1, json_schema_extra=OPERATIONAL, description="hunyuan: windows of a denoising step batched into one UNet call (exact; each adds one "
        "window's activations to the device's peak: 7 peaked at 15.9 GiB in fp16 at 512², 13 at 26.3). On an H100 at 250 "
        "frames (13 windows a step), 2 ran 3.92 frames/s and 7 (calls of 7 and 6) 4.29, with the GEGLU kernel's "
        "persistent tiles added in the same run; on an H200, 13 (one call a step) ran 4.33 (docs/hunyuan.md). Each number of windows a call holds is a UNet shape that each GPU "
        "actor compiles once (about 150 s on an H100): a video whose window count is no multiple of this adds the "
        "remainder's shape, so it pays on batches of long videos.",
    )
    gpus: int = Field(1, ge=0, json_schema_extra=OPERATIONAL, description="hunyuan: most GPUs to use, one actor each; 0 runs hunyuan on `actors` CPU actors.")
    crf: int = Field(
        18, ge=1, le=51, description="H.264 constant rate factor of the outputs (lower is better quality; 0, lossless, "
        "is refused: it writes the High 4:4:4 profile, which browsers and most players cannot play).",
    )
    preview_jobs: int = Field(4, ge=0, json_schema_extra=OPERATIONAL, description="Finished outputs shown in the MLflow preview strip.")
    preview_frames: int = Field(5, ge=1, json_schema_extra=OPERATIONAL, description="Frames per output in the preview strip.")
    experiment: str = Field("portraitflow-animate", min_length=1, json_schema_extra=OPERATIONAL, description="MLflow experiment of the runs.")

    @field_validator("size")
    @classmethod
    def _even_size(cls, size: int) -> int:
        """An odd crop would be cut to the even side below by the encoder (crop-only outputs)."""
        if size % 2:
            raise ValueError(f"size ({size}) must be even: H.264 in yuv420p has no odd sides")
        return size

    @field_validator("max_output_side")
    @classmethod
    def _output_side(cls, side: int) -> int:
        """A smaller side would make every pasted-back portrait a thumbnail, or nothing to encode."""
        if 0 < side < MIN_SIDE:
            raise ValueError(f"max_output_side ({side}) must be 0 (the portrait's own size) or at least {MIN_SIDE}")
        return side


#: settings that change where and how fast jobs run, and what is recorded, but not the videos written
#: (up to numerical precision: `compile_mode`, and `gpus` 0, which runs hunyuan in float32 on CPUs;
#: `window` only batches the driving frames; `min_face_px` and `min_face_fraction` only decide whether
#: a job runs at all): left out of output names
OPERATIONAL_FIELDS = operational(AnimateConfig)
