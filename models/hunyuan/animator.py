"""HunyuanPortrait behind the `Animator` interface: one actor loads the model once, animates many jobs.

Per job: the reference's appearance tokens and latent are computed once; driving windows stream
in and are reduced to motion tokens (kept on the host, in 25-frame chunks aligned with the video
start as the release computes their intensity buckets); then the whole padded video is sampled
with the windowed sampler and decoded chunk by chunk, and the crops go out in the driving
windows' sizes. Device memory holds the video's latents and one UNet call's windows, never the video.

The driving crops stand in for the release's frame-0 crop box (one box per shot). The release's
expression crop is the 5-point landmark box pulled 45% toward frame 0's raw face box: each
window's `face_boxes` (its shot's first detected face box) play that part; windows without them
use the crop's central third, which is that box in a crop made by the release's rule.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from portraitflow.jobs.config.animate import PER_JOB_FIELDS, PIPELINE_FIELDS
from portraitflow.models.animators.base import Animator, DrivingWindow, ReferenceInput
from portraitflow.models.hunyuan.conditions import (
    MOTION_CHUNK_FRAMES,
    encode_motion_chunk,
    expression_crops,
    image_tensor,
)
from portraitflow.models.hunyuan.dino import ID_DIM
from portraitflow.models.hunyuan.fused import geglu_kernel_state
from portraitflow.models.hunyuan.pipeline import PaddedMotion, SamplingSettings, dino_input
from portraitflow.models.hunyuan.checkpoints import TINY_WEIGHTS
from portraitflow.models.hunyuan.weights import HunyuanModels, load_models, random_models

#: `weights` value that selects random tiny modules (CPU plumbing tests of the generation flow).
TINY_SETTINGS = SamplingSettings(num_steps=2, frames_per_window=8, overlap=3, shift_offset=3, pad_frames=3)
#: where a driving window carries no face boxes, the anchor is the crop's central third: the
#: release's frame-0 face box in a crop made by the release's own rule.
CENTRAL_THIRD = (1 / 3, 1 / 3, 2 / 3, 2 / 3)



class HunyuanAnimator(Animator):
    """HunyuanPortrait (or its tiny random twin) as an `Animator`."""

    name = "hunyuan"
    #: the weights, the sampling settings a job may set (`_settings`: SamplingSettings fields), and
    #: how the model is served; the driving motion comes from the crops, so no motion options.
    params = ("weights", "seed", "num_steps", "appearance_scale", "motion_scale", "compile_mode", "windows_per_call",
              "gpus")
    #: its motion comes from the crops and the keypoints as detected, never the smoothed ones
    unread = ("smooth_sigma",)
    #: 1: intensity buckets and expression crops read the keypoints as detected; noise drawn per frame
    output_version = 1

    def __init__(self, models: HunyuanModels, settings: SamplingSettings = SamplingSettings(),
                 compile_mode: str | None = None) -> None:
        self.models = models
        self.settings = settings
        self.job_settings = settings  # the last job's, as it ran (`describe`)
        if compile_mode:
            models.pipeline.compile(compile_mode)
        self._arcface = None
        if models.arcface is not None:
            import onnxruntime

            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in onnxruntime.get_available_providers()]
            self._arcface = onnxruntime.InferenceSession(str(models.arcface), providers=providers)

    @classmethod
    def create(cls, weights: str | Path, device: str | None = None, dtype: torch.dtype | None = None,
               compile_mode: str | None = None, windows_per_call: int = 1) -> HunyuanAnimator:
        """From a weights folder (fp16 on CUDA, fp32 on CPU by default), or `TINY_WEIGHTS` for random tiny modules.

        `compile_mode` applies on CUDA only: on a CPU the full model is far too slow to serve, and
        the tiny one is for plumbing tests, where compiling would cost more than it saves.
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        compile_mode = compile_mode if str(device).startswith("cuda") else None
        if str(device).startswith("cuda"):
            # every call of a job repeats a few window shapes, so cuDNN's choice of convolution
            # algorithm, timed once per shape, pays (the GPU benchmarks measure with it on). It is
            # process-wide (the actor's process serves this model alone), and the algorithms it
            # picks may differ from one process to the next, so outputs may differ in rounding.
            torch.backends.cudnn.benchmark = True
        if str(weights) == TINY_WEIGHTS:
            models, settings = random_models("tiny", device=device, dtype=dtype or torch.float32), TINY_SETTINGS
        else:
            dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
            models, settings = load_models(weights, device=device, dtype=dtype), SamplingSettings()
        return cls(models, dataclasses.replace(settings, windows_per_call=windows_per_call), compile_mode)

    # -- reference ------------------------------------------------------------------------------

    def identity(self, reference: ReferenceInput) -> tuple[np.ndarray, str]:
        """([512] identity vector, where it came from): `arcface.onnx` on the aligned face ([0, 1] RGB input,
        the release's convention), else the face layer's embedding when it is 512-d, else zeros (as the
        release does without a face)."""
        if self._arcface is not None:
            face = reference.aligned_face.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
            name = self._arcface.get_inputs()[0].name
            vector = self._arcface.run(None, {name: face})[0][0]
            return vector / np.linalg.norm(vector), "arcface.onnx"
        embedding = reference.embedding
        if embedding is not None and embedding.shape == (ID_DIM,):
            return embedding / np.linalg.norm(embedding), "face-layer"
        width = "absent" if embedding is None else f"{embedding.shape[-1]}-d"
        return np.zeros(ID_DIM, np.float32), f"none (no arcface.onnx; face-layer embedding {width})"

    def describe(self, reference: ReferenceInput) -> dict[str, Any]:
        """A job's `model` record, once its frames are out: weights, identity source, dtype,
        compilation (as it ran: a failed compilation falls back during the job), what computed the
        GEGLUs (`fused.geglu_kernel_state`, which a failed kernel also changes) and the sampling
        settings the job used (its params, the window fitted to a short video)."""
        pipeline = self.models.pipeline
        return {"animator": self.name, "weights": self.models.source, "identity": self.identity(reference)[1],
                "dtype": str(pipeline.dtype).removeprefix("torch."), "compile": pipeline.compiled,
                "geglu": geglu_kernel_state(pipeline.device), **dataclasses.asdict(self.job_settings)}

    # -- animation --------------------------------------------------------------------------------

    def _settings(self, params: dict[str, Any]) -> SamplingSettings:
        """The job's sampling settings; a key neither sampling nor one the flow reads is refused
        (a typo such as `num_step` would otherwise sample with the defaults unnoticed)."""
        sampling = {f.name for f in dataclasses.fields(SamplingSettings)}
        flow = {*self.params, *PER_JOB_FIELDS, *PIPELINE_FIELDS}  # what the generation flow sends every job
        unknown = sorted(set(params) - sampling - flow)
        if unknown:
            raise ValueError(f"unknown HunyuanPortrait params {unknown}; sampling settings are {sorted(sampling)}")
        settings = dataclasses.replace(self.settings, **{k: v for k, v in params.items() if k in sampling})
        _check_settings(settings)
        return settings

    def _motion_tokens(self, windows: Iterator[DrivingWindow]) -> tuple[torch.Tensor, list[int]]:
        """Host tensor [T, L, D] of motion tokens, and the driving windows' lengths."""
        models, size = self.models, self.models.motion_resolution
        dtype = models.pipeline.dtype
        pending: dict[str, list] = {"face": [], "head": [], "kps": []}
        chunks, lengths = [], []

        def flush() -> None:
            tokens = encode_motion_chunk(models.expression, models.headpose, models.motion_proj,
                                         torch.cat(pending["face"]), torch.cat(pending["head"]),
                                         np.concatenate(pending["kps"]))
            chunks.append(tokens.to("cpu", dtype))
            for value in pending.values():
                value.clear()

        device = models.pipeline.device
        with torch.no_grad():
            for window in windows:
                lengths.append(len(window.crops))
                anchors = window.face_boxes
                if anchors is None:
                    anchors = np.asarray(CENTRAL_THIRD) * window.crops.shape[1]
                kps = window.kps if window.raw_kps is None else window.raw_kps
                face = expression_crops(window.crops, kps, anchors, size).to(device)
                head = image_tensor(window.crops, size).to(device)
                offset = 0
                while offset < len(face):
                    room = MOTION_CHUNK_FRAMES - sum(len(f) for f in pending["face"])
                    pending["face"].append(face[offset:offset + room])
                    pending["head"].append(head[offset:offset + room])
                    pending["kps"].append(kps[offset:offset + room])
                    offset += room
                    if sum(len(f) for f in pending["face"]) == MOTION_CHUNK_FRAMES:
                        flush()
            if pending["face"]:
                flush()
        return (torch.cat(chunks) if chunks else torch.empty(0)), lengths

    def animate(self, reference: ReferenceInput, windows: Iterator[DrivingWindow],
                params: dict[str, Any]) -> Iterator[np.ndarray]:
        models = self.models
        pipeline = models.pipeline
        settings = self._settings(params)
        side = reference.crop.shape[0]
        resolution = models.resolution
        self.job_settings = settings
        motion, lengths = self._motion_tokens(windows)
        if not lengths:
            return
        with torch.no_grad():
            crop = image_tensor(reference.crop[None], resolution)
            identity, _ = self.identity(reference)
            features = pipeline.encode_reference(crop * 2 - 1, dino_input(crop),
                                                 torch.from_numpy(np.asarray(identity, np.float32))[None],
                                                 settings.noise_aug_strength, settings.seed)
        padded = PaddedMotion(motion, settings.pad_frames)
        window = min(settings.frames_per_window, len(padded))
        settings = dataclasses.replace(settings, frames_per_window=window, overlap=min(settings.overlap, window - 1))
        self.job_settings = settings
        latents = pipeline.sample(features, padded, pipeline.black_pose_features(resolution, resolution), settings)
        yield from self._frames_in_windows(latents, settings, lengths, side)

    def _frames_in_windows(self, latents: torch.Tensor, settings: SamplingSettings, lengths: list[int],
                           side: int) -> Iterator[np.ndarray]:
        """Decode chunk by chunk, drop the pad frames, and cut the crops into the driving windows' sizes."""
        kept = range(settings.pad_frames, latents.shape[1] - settings.pad_frames)
        buffered: list[np.ndarray] = []
        lengths = list(lengths)
        for frames in self.models.pipeline.decode(latents, settings.decode_chunk_size, kept):
            if frames.shape[-1] != side:
                frames = F.interpolate(frames, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            pixels = ((frames * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            buffered.extend(pixels.cpu().numpy())
            while lengths and len(buffered) >= lengths[0]:
                count = lengths.pop(0)
                yield np.stack(buffered[:count])
                del buffered[:count]
        if lengths or buffered:
            raise RuntimeError(f"decoded {len(kept)} frames for {sum(lengths) + len(buffered)} driving frames left "
                               "over: the sampled video and the driving windows disagree")


def _check_settings(settings: SamplingSettings) -> None:
    """ValueError for settings that would fail a job late (after its denoising) or drop frames."""
    counts = {"num_steps": 1, "frames_per_window": 1, "overlap": 0, "shift_offset": 0, "pad_frames": 0,
              "decode_chunk_size": 1, "windows_per_call": 1, "seed": 0}
    for name, least in counts.items():
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"HunyuanPortrait param {name} must be an integer of at least {least}, not {value!r}")
    if settings.seed >= 2**64:  # torch's generators take 64 bits (a negative seed would alias seed + 2**64)
        raise ValueError(f"HunyuanPortrait param seed must be below 2**64, not {settings.seed}")
    for name in ("appearance_scale", "motion_scale"):
        value = getattr(settings, name)
        if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
            raise ValueError(f"HunyuanPortrait param {name} must be a (first step, last step) pair, not {value!r}")
