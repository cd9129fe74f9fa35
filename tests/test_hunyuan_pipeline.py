"""HunyuanPortrait sampling: the recorded schedules and the whole tiny `pipeline` golden run."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from safetensors.torch import load_file

from portraitflow.models.hunyuan.dino import DinoV2WithIdAdapters
from portraitflow.models.hunyuan.image_proj import ImageProjector
from portraitflow.models.hunyuan.pipeline import HunyuanPipeline, PaddedMotion, SamplingSettings
from portraitflow.models.hunyuan.pose_guider import PoseGuider
from portraitflow.models.hunyuan.sampler import karras_schedule, next_shift, window_indices
from portraitflow.models.hunyuan.unet import HunyuanUNet

DINO_LAYOUT_ONLY = {"block_chunks", "backbone", "layers_output"}  # release arguments that pick a layout


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))  # as on CI; OMP_NUM_THREADS=1 on a busy machine
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("run", ["tiny_fixture", "release_defaults_100_frames"])
def test_window_schedule_matches_the_recorded_one(hunyuan_reference: Path, run: str) -> None:
    recorded = json.loads((hunyuan_reference / "window_schedule_and_buckets.json").read_text())[run]
    window, shift = recorded["frames_per_batch"], 0
    calls = 0
    for step in range(recorded["num_inference_steps"]):
        ours = window_indices(recorded["num_frames_total"], window, recorded["overlap"], shift)
        assert [w.tolist() for w in ours] == [w["frames"] for w in recorded["steps"][str(step)]]
        calls += len(ours)
        shift = next_shift(shift, recorded["shift_offset"], window)
    assert calls == recorded["unet_calls"]
    schedule = karras_schedule(recorded["num_inference_steps"])
    assert schedule.sigmas.tolist() == recorded["sigmas"]
    # diffusers 0.29 and 0.42 round 0.25 * ln(sigma) differently in the last bit
    torch.testing.assert_close(schedule.timesteps, torch.tensor(recorded["timesteps"]), atol=1.2e-7, rtol=0)


@pytest.fixture(scope="module")
def pipeline_golden(hunyuan_reference: Path) -> tuple[HunyuanPipeline, dict, dict[str, torch.Tensor]]:
    tensors = load_file(hunyuan_reference / "fixtures" / "pipeline.safetensors")
    sidecar = json.loads((hunyuan_reference / "fixtures" / "pipeline.json").read_text())
    config = sidecar["config"]

    def weights(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    modules = {
        "unet": HunyuanUNet(**config["unet"]["config"]),
        "vae": AutoencoderKLTemporalDecoder(**config["vae"]["config"]),
        "pose_guider": PoseGuider(**config["pose_guider"]["config"]),
        "image_encoder": DinoV2WithIdAdapters(
            **{k: v for k, v in config["image_encoder"]["config"].items() if k not in DINO_LAYOUT_ONLY}),
        "image_proj": ImageProjector(),
    }
    for name, module in modules.items():
        module.load_state_dict(weights(f"{name}."), strict=True)
        module.eval()
    data = {k: v for k, v in tensors.items() if k.startswith(("input.", "output.", "trace."))}
    return HunyuanPipeline(**modules), sidecar, data


def _settings(sidecar: dict, **overrides) -> SamplingSettings:
    call = sidecar["config"]["pipeline_call_kwargs"]
    settings = SamplingSettings(
        num_steps=call["num_inference_steps"], frames_per_window=call["frames_per_batch"], overlap=call["overlap"],
        shift_offset=call["shift_offset"], pad_frames=sidecar["config"]["pad_frames"], fps=call["fps"],
        motion_bucket_id=call["motion_bucket_id"], noise_aug_strength=call["noise_aug_strength"],
        appearance_scale=(call["min_guidance_scale1"], call["max_guidance_scale1"]),
        motion_scale=(call["min_guidance_scale2"], call["max_guidance_scale2"]),
        decode_chunk_size=call["decode_chunk_size"],
    )
    return dataclasses.replace(settings, **overrides)


def _assert_output(ours: torch.Tensor, data: dict, sidecar: dict, name: str) -> None:
    tolerance = sidecar["recommended_tolerance_fp32"]["per_output"][name]
    torch.testing.assert_close(ours, data[name], atol=tolerance["atol"], rtol=tolerance["rtol"])


def test_motion_padding_ramps_as_recorded(pipeline_golden) -> None:
    _, sidecar, data = pipeline_golden
    motion = PaddedMotion(data["input.driven_feat_unpadded"][0], sidecar["config"]["pad_frames"])
    padded = motion(torch.arange(len(motion)), torch.device("cpu"), torch.float32)
    torch.testing.assert_close(padded, data["input.prompts"][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("guidance", ["release", "alt_guidance"])
def test_whole_tiny_pipeline_golden(pipeline_golden, guidance: str) -> None:
    pipe, sidecar, data = pipeline_golden
    overrides, prefix = {}, "output."
    if guidance == "alt_guidance":
        alt = sidecar["config"]["alt_guidance_overrides"]
        overrides = {"appearance_scale": (alt["min_guidance_scale1"], alt["max_guidance_scale1"]),
                     "motion_scale": (alt["min_guidance_scale2"], alt["max_guidance_scale2"])}
        prefix = "output.alt_guidance."
    settings = _settings(sidecar, **overrides)
    reference = pipe.encode_reference(data["input.ref_image"], data["input.transformed_images"],
                                      data["input.arcface_embeddings"])
    motion = PaddedMotion(data["input.driven_feat_unpadded"][0], settings.pad_frames)
    pose = pipe.pose_image_features(data["input.pose_cond_tensor"][0].transpose(0, 1))
    windows: list[list[int]] = []
    latents = pipe.sample(reference, motion, pose, settings, noise=data["input.latents_noise"],
                          on_window=lambda step, index, frames, v, x: windows.append(frames.tolist()))
    assert windows == [w["frame_indices_mod_N"] for w in sidecar["schedule"]["windows"]]
    _assert_output(latents, data, sidecar, prefix + "final_latents")
    frames = torch.cat(list(pipe.decode(latents, settings.decode_chunk_size)))
    _assert_output(frames.transpose(0, 1)[None], data, sidecar, prefix + "frames")

