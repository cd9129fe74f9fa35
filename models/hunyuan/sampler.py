"""The release's sampling arithmetic: Karras sigmas, v-prediction Euler steps, guidance, windows.

Pure tensor functions, kept apart from the models so the window schedule and the guidance can be
checked against the recorded ones on their own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import EulerDiscreteScheduler

#: diffusers layout of stabilityai/stable-video-diffusion-img2vid-xt `scheduler/scheduler_config.json`.
SVD_XT_SCHEDULER_CONFIG: dict = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}


@dataclass(frozen=True)
class Schedule:
    sigmas: torch.Tensor  # [n + 1] float32, the last one 0
    timesteps: torch.Tensor  # [n] float32 UNet timesteps, 0.25 * ln(sigma)


def karras_schedule(num_steps: int, scheduler_config: dict | None = None) -> Schedule:
    """The SVD-XT sigmas and continuous timesteps (diffusers' EulerDiscreteScheduler computes them)."""
    config = {k: v for k, v in (scheduler_config or SVD_XT_SCHEDULER_CONFIG).items() if not k.startswith("_")}
    if config.get("prediction_type") != "v_prediction" or not config.get("use_karras_sigmas"):
        raise ValueError("HunyuanPortrait samples with the SVD-XT v-prediction Karras schedule")
    scheduler = EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(num_steps)
    return Schedule(scheduler.sigmas.float().cpu(), scheduler.timesteps.float().cpu())


def scale_model_input(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    return latents / ((sigma**2 + 1) ** 0.5)


def euler_v_step(latents: torch.Tensor, v_prediction: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One deterministic Euler step of a v-prediction model (no churn, no noise), in float32."""
    sample = latents.float()
    denoised = v_prediction.float() * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    derivative = (sample - denoised) / sigma
    return sample + derivative * (sigma_next - sigma)


def guidance_scales(minimum: float, maximum: float, num_steps: int) -> list[float]:
    """Per-step scales, linspace(min, max, n) as the release builds them."""
    return torch.linspace(minimum, maximum, num_steps).tolist()


def window_indices(num_frames: int, window: int, overlap: int, shift: int) -> list[torch.Tensor]:
    """Frame indices (mod N) of each window of one step: starts 0, S, 2S, ... < N, each moved back by `shift`."""
    if window > num_frames:
        raise ValueError(f"window of {window} frames is longer than the {num_frames}-frame video")
    stride = window - overlap
    if stride <= 0:
        raise ValueError("overlap must be smaller than the window")
    offsets = torch.arange(window)
    return [(start - shift + offsets) % num_frames for start in range(0, num_frames, stride)]


def next_shift(shift: int, shift_offset: int, window: int) -> int:
    return (shift + shift_offset) % window
