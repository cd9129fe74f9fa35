"""HunyuanPortrait sampling: the recorded schedules and the whole tiny `pipeline` golden run."""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from portraitflow.jobs.cli import app
from portraitflow.models.animators.base import DrivingWindow, ReferenceInput
from portraitflow.models.hunyuan.animator import TINY_SETTINGS, TINY_WEIGHTS, HunyuanAnimator
from portraitflow.models.hunyuan.conditions import expression_boxes, expression_crops
from portraitflow.models.hunyuan.dino import DinoV2WithIdAdapters
from portraitflow.models.hunyuan.image_proj import ImageProjector
from portraitflow.models.hunyuan import pipeline as pipeline_module
from portraitflow.models.hunyuan.pipeline import (HunyuanPipeline, PaddedMotion, ReferenceFeatures, SamplingSettings,
                                                 _OverlapAverage)
from portraitflow.models.hunyuan.pose_guider import PoseGuider
from portraitflow.models.hunyuan.sampler import SVD_XT_SCHEDULER_CONFIG, karras_schedule, next_shift, window_indices
from portraitflow.models.hunyuan.unet import HunyuanUNet
from portraitflow.models.hunyuan.checkpoints import HYPORTRAIT_MODULES, WeightsMissing
from portraitflow.models.hunyuan.weights import HunyuanModels, load_models, random_models

DINO_LAYOUT_ONLY = {"block_chunks", "backbone", "layers_output"}  # release arguments that pick a layout


pytestmark = pytest.mark.usefixtures("torch_two_threads")


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


@pytest.mark.parametrize(("guidance", "windows_per_call"), [("release", 1), ("alt_guidance", 1), ("release", 4),
                                                            ("alt_guidance", 4)])
def test_whole_tiny_pipeline_golden(pipeline_golden, guidance: str, windows_per_call: int) -> None:
    """Also with the step's 6 windows batched 4 + 2 per UNet call: the same windows, the same result."""
    pipe, sidecar, data = pipeline_golden
    overrides, prefix = {}, "output."
    if guidance == "alt_guidance":
        alt = sidecar["config"]["alt_guidance_overrides"]
        overrides = {"appearance_scale": (alt["min_guidance_scale1"], alt["max_guidance_scale1"]),
                     "motion_scale": (alt["min_guidance_scale2"], alt["max_guidance_scale2"])}
        prefix = "output.alt_guidance."
    settings = _settings(sidecar, windows_per_call=windows_per_call, **overrides)
    reference = pipe.encode_reference(data["input.ref_image"], data["input.transformed_images"],
                                      data["input.arcface_embeddings"])
    motion = PaddedMotion(data["input.driven_feat_unpadded"][0], settings.pad_frames)
    pose = pipe.pose_image_features(data["input.pose_cond_tensor"][0].transpose(0, 1))
    latents = pipe.sample(reference, motion, pose, settings, noise=data["input.latents_noise"])
    _assert_output(latents, data, sidecar, prefix + "final_latents")
    frames = torch.cat(list(pipe.decode(latents, settings.decode_chunk_size)))
    _assert_output(frames.transpose(0, 1)[None], data, sidecar, prefix + "frames")


def test_pipeline_golden_traces_window_by_window(pipeline_golden, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded intermediates (reference features, initial latents, pose features, and each
    window's guided v and Euler step at every step), so a regression names where it starts."""
    pipe, sidecar, data = pipeline_golden
    settings = _settings(sidecar)
    guided, stepped = [], []
    guided_v, euler_step = pipe._guided_v, pipeline_module.euler_v_step
    monkeypatch.setattr(pipe, "_guided_v", lambda *args: guided.append(guided_v(*args)) or guided[-1])
    monkeypatch.setattr(pipeline_module, "euler_v_step", lambda *args: stepped.append(euler_step(*args)) or stepped[-1])
    reference = pipe.encode_reference(data["input.ref_image"], data["input.transformed_images"],
                                      data["input.arcface_embeddings"])
    motion = PaddedMotion(data["input.driven_feat_unpadded"][0], settings.pad_frames)
    pose = pipe.pose_image_features(data["input.pose_cond_tensor"][0].transpose(0, 1))
    pipe.sample(reference, motion, pose, settings, noise=data["input.latents_noise"])
    sigma_max = karras_schedule(settings.num_steps, pipe.scheduler_config).sigmas[0].item()
    ours = {"image_tokens": reference.image_tokens, "pose_fea": pose(torch.arange(len(motion))),
            "vae_encoder_moments": reference.mean,  # the moments' mean half
            "initial_latents": pipe.initial_latents(reference, len(motion), data["input.latents_noise"], settings,
                                                    sigma_max)}
    windows = len(guided) // settings.num_steps
    for call, (v, x_next) in enumerate(zip(guided, stepped, strict=True)):
        step, window = divmod(call, windows)
        ours |= {f"step{step}.win{window}.noise_pred_cfg": v, f"step{step}.win{window}.latents_after_step": x_next}
    observed = sidecar["observed"]  # the sidecar's rule for its outputs, applied to the traces' worst rerun
    atol = 20 * max(observed["fp64_vs_stored_fp32"]["worst_trace_max_abs"], observed["rerun_fp32_1thread"]["worst_trace_max_abs"])
    recorded = [key.removeprefix("trace.") for key in data if key.startswith("trace.") and key.removeprefix("trace.") in ours]
    assert len(recorded) == len(ours) == 4 + 2 * len(guided) and len(guided) == 18
    for name in recorded:
        expected = data[f"trace.{name}"][:, :4] if name == "vae_encoder_moments" else data[f"trace.{name}"]
        torch.testing.assert_close(ours[name], expected, atol=atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_decoding_only_the_kept_frames_skips_padding_chunks_and_keeps_their_values() -> None:
    """Chunk boundaries stay the release's, so the kept frames equal a whole decode's; a chunk of
    padding only is never decoded."""
    pipe = random_models("tiny", seed=5).pipeline
    latents = torch.randn(1, 20, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    whole = torch.cat(list(pipe.decode(latents, 4)))
    calls = []
    handle = pipe.vae.decoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        kept = torch.cat(list(pipe.decode(latents, 4, range(5, 14))))
    finally:
        handle.remove()
    assert calls == [4, 4, 4]  # chunks 4-7, 8-11, 12-15; 0-3 and 16-19 are padding only
    torch.testing.assert_close(kept, whole[5:14], atol=0, rtol=0)


def test_a_compiled_decoder_decodes_full_chunks_as_the_eager_one_and_the_short_last_eagerly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = random_models("tiny", seed=6).pipeline
    latents = torch.randn(1, 10, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    eager = torch.cat(list(pipe.decode(latents, 4)))
    calls = []

    def recording_compile(fn, mode, dynamic):
        calls.append((getattr(fn, "__name__", type(fn).__name__), mode, dynamic))
        return lambda *args, **kwargs: calls.append(kwargs.get("num_frames", "unet")) or fn(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    pipe.compile("max-autotune")
    torch.testing.assert_close(torch.cat(list(pipe.decode(latents, 4))), eager, atol=0, rtol=0)
    assert calls == [("HunyuanUNet", "max-autotune", False), ("decode", "max-autotune", False), 4, 4]  # not the 2-frame chunk
    assert pipe.compiled == "max-autotune"


@pytest.mark.parametrize("num_frames", [25, 26, 47, 80, 1030])
def test_windows_are_averaged_in_place_keeping_side_sums_for_overlaps_only(num_frames: int) -> None:
    """Every window reads the step's input values; the result is the per-frame mean; the side sums
    never hold more than two windows' frames, whatever the video length."""
    generator = torch.Generator().manual_seed(num_frames)
    for shift in range(0, 25, 4):
        windows = window_indices(num_frames, 25, 3, shift)
        start = torch.randn(1, num_frames, 2, generator=generator)
        latents = start.clone()
        results = [torch.randn(1, 25, 2, generator=generator) for _ in windows]
        average, most_pending = _OverlapAverage(latents, windows), 0
        for index, (frames, result) in enumerate(zip(windows, results)):
            assert torch.equal(average.window_latents(index), start[:, frames])
            average.add(index, result)
            most_pending = max(most_pending, len(average.sums))
        sums, counts = torch.zeros_like(start), torch.zeros(num_frames)
        for frames, result in zip(windows, results):
            sums.index_add_(1, frames, result)
            counts.index_add_(0, frames, torch.ones(len(frames)))
        torch.testing.assert_close(latents, sums / counts[None, :, None], atol=1e-6, rtol=0)
        assert not average.sums and most_pending <= 2 * 25


def test_expression_crop_pulls_the_keypoint_box_toward_the_anchor_and_pads_black() -> None:
    """SPEC 2: sides move 45% toward the anchor face box, squared on the integer centre, black outside."""
    kps = np.array([[[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]]], np.float32)
    anchor = np.array([80, 60, 160, 160])
    # x: 100 + .45 (80 - 100) = 91, 140 + .45 (160 - 140) = 149; y: 100 + .45 (60 - 100) = 82, 140 + .45 (160 - 140) = 149
    assert expression_boxes(kps, anchor).tolist() == [[87, 82, 153, 148]]  # centre (120, 115), half 33
    frame = np.full((1, 120, 200, 3), 200, np.uint8)  # the box runs 28 rows past the frame's bottom
    crop = expression_crops(frame, kps, anchor, size=66)
    assert crop.shape == (1, 3, 66, 66)
    assert torch.allclose(crop[0, :, :35], torch.tensor(200 / 255)) and torch.all(crop[0, :, -20:] == 0)


# -- weights, conversion and the Animator, on tiny random modules (no ../shared needed) -------------


def _save_official_layout(models: HunyuanModels, root: Path) -> None:
    """`models` written as the release ships them: hyportrait/*.pth plus the SVD-XT folders."""
    pipe = models.pipeline
    modules = {"unet": pipe.unet, "pose_guider": pipe.pose_guider, "dino": pipe.image_encoder,
               "image_proj": pipe.image_proj, "expression": models.expression, "headpose": models.headpose,
               "motion_proj": models.motion_proj}
    (root / "hyportrait").mkdir(parents=True)
    for name, module in modules.items():
        torch.save(module.state_dict(), root / "hyportrait" / f"{name}.pth")
    for folder, filename, config in (("unet", "config.json", dict(pipe.unet.config)),
                                     ("vae", "config.json", dict(pipe.vae.config)),
                                     ("scheduler", "scheduler_config.json", SVD_XT_SCHEDULER_CONFIG)):
        (root / folder).mkdir()
        (root / folder / filename).write_text(json.dumps(config))
    save_file(pipe.vae.state_dict(), root / "vae" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[HunyuanModels, Path]:
    models = random_models("tiny", seed=3)
    root = tmp_path_factory.mktemp("weights")
    _save_official_layout(models, root)
    return models, root


def _state(models: HunyuanModels) -> dict[str, torch.Tensor]:
    modules = {**models.pipeline.modules(), "expression": models.expression, "headpose": models.headpose,
               "motion_proj": models.motion_proj}
    return {f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()}


def test_a_checkpoint_of_another_module_or_in_the_pre_zip_format_is_named_or_read(tiny_weights,
                                                                                  tmp_path: Path) -> None:
    from portraitflow.models.hunyuan.checkpoints import WeightsUnreadable

    _, root = tiny_weights
    swapped = tmp_path / "swapped"
    shutil.copytree(root, swapped)
    shutil.copy(swapped / "hyportrait" / "image_proj.pth", swapped / "hyportrait" / "pose_guider.pth")
    with pytest.raises(WeightsUnreadable, match=r"pose_guider\.pth is not the release's pose_guider checkpoint"):
        load_models(swapped, dtype=torch.float32, size="tiny")
    legacy = tmp_path / "legacy"
    shutil.copytree(root, legacy)
    state = torch.load(legacy / "hyportrait" / "pose_guider.pth", weights_only=True)
    torch.save(state, legacy / "hyportrait" / "pose_guider.pth", _use_new_zipfile_serialization=False)
    load_models(legacy, dtype=torch.float32, size="tiny")  # cannot be memory-mapped: read whole


def test_weights_the_actors_would_fail_on_are_named_together_by_the_driver(tiny_weights, tmp_path: Path) -> None:
    """Keys or shapes of another module, a training checkpoint's wrapper, a config that is not
    JSON, an arcface.onnx that is no model: each passed the driver's checks, and the actors failed
    once every job was prepared, in Ray's tracebacks and with no row (review s23)."""
    from portraitflow.models.hunyuan.checkpoints import WeightsUnreadable
    from portraitflow.models.hunyuan.weights import check_weights_loadable

    _, root = tiny_weights
    check_weights_loadable(root, size="tiny")  # the release's own loads
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    shutil.copy(broken / "hyportrait" / "image_proj.pth", broken / "hyportrait" / "pose_guider.pth")
    state = torch.load(broken / "hyportrait" / "dino.pth", weights_only=True)
    torch.save({"state_dict": state, "epoch": 3}, broken / "hyportrait" / "dino.pth")
    (broken / "scheduler" / "scheduler_config.json").write_text("{not json")
    (broken / "arcface.onnx").write_bytes(b"\x08\x07random bytes that are no protobuf model")
    with pytest.raises(WeightsUnreadable) as error:
        check_weights_loadable(broken, size="tiny")
    message = str(error.value)
    assert message.count("\n  - ") == 4, message
    assert "pose_guider.pth is not the release's pose_guider checkpoint" in message
    assert "dino.pth holds entries that are no tensors: state_dict, epoch" in message
    assert "scheduler_config.json is not valid JSON" in message and "arcface.onnx is no ONNX model" in message


def test_missing_weights_error_lists_every_missing_path(tiny_weights, tmp_path: Path) -> None:
    _, root = tiny_weights
    partial = tmp_path / "partial"
    shutil.copytree(root, partial)
    removed = [partial / "hyportrait" / "unet.pth", partial / "hyportrait" / "motion_proj.pth",
               partial / "scheduler" / "scheduler_config.json", partial / "vae" / "diffusion_pytorch_model.safetensors"]
    for path in removed:
        path.unlink()
    with pytest.raises(WeightsMissing) as error:
        load_models(partial, size="tiny")
    message = str(error.value)
    for path in removed:
        assert str(path.parent / path.name.replace("diffusion_pytorch_model.safetensors",
                                                   "diffusion_pytorch_model.fp16.safetensors")) in message
    assert str(partial / "hyportrait" / "dino.pth") not in message
    assert str(partial / "unet" / "config.json") not in message
    assert message.count("\n  - ") == len(removed)
    with pytest.raises(WeightsMissing, match=f"weights folder {tmp_path / 'typo'} does not exist. Download"):
        load_models(tmp_path / "typo", size="tiny")


def test_convert_weights_round_trip(tiny_weights, tmp_path: Path) -> None:
    models, root = tiny_weights
    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["convert-weights", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "hyportrait").iterdir()) == sorted(
        f"{name}.safetensors" for name in HYPORTRAIT_MODULES)
    assert not list(out.rglob("*.pth"))
    original, converted = _state(models), _state(load_models(out, dtype=torch.float32, size="tiny"))
    from_pth = _state(load_models(root, dtype=torch.float32, size="tiny"))
    assert original.keys() == converted.keys() == from_pth.keys()
    for key, value in original.items():
        assert torch.equal(value, converted[key]) and torch.equal(value, from_pth[key]), key
    again = CliRunner().invoke(app, ["convert-weights", str(root), "--out", str(out)])
    assert again.exit_code == 0 and "already complete" in again.output
    missing = CliRunner().invoke(app, ["convert-weights", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    said = " ".join(missing.output.replace("│", " ").split())
    assert missing.exit_code == 2 and "does not exist" in said and "Traceback" not in said
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(app, ["convert-weights", str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
    assert empty.exit_code == 2 and "unet.pth" in empty.output and "Traceback" not in empty.output


def _driving(rng: np.random.Generator, lengths: list[int], side: int) -> Iterator[DrivingWindow]:
    kps = np.array([[0.38, 0.44], [0.62, 0.44], [0.5, 0.56], [0.41, 0.69], [0.59, 0.69]]) * side
    start = 0
    for length in lengths:
        yield DrivingWindow(start=start, crops=rng.integers(0, 256, (length, side, side, 3), dtype=np.uint8),
                            kps=kps + rng.normal(0, 0.5, (length, 5, 2)), landmarks=np.zeros((length, 68, 2)),
                            pose=np.zeros((length, 3)))
        start += length


def _reference(side: int) -> ReferenceInput:
    rng = np.random.default_rng(0)
    return ReferenceInput(crop=rng.integers(0, 256, (side, side, 3), dtype=np.uint8), kps=np.zeros((5, 2)),
                          landmarks=np.zeros((68, 2)), pose=np.zeros(3),
                          aligned_face=rng.integers(0, 256, (112, 112, 3), dtype=np.uint8),
                          embedding=rng.normal(size=512).astype(np.float32))


def test_tiny_animator_streams_windows_and_is_reproducible() -> None:
    animator = HunyuanAnimator.create(TINY_WEIGHTS, device="cpu")
    side, lengths = animator.models.resolution, [6, 7, 3]
    reference = _reference(side)
    runs = [list(animator.animate(reference, _driving(np.random.default_rng(1), lengths, side), {"seed": seed}))
            for seed in (5, 5)]
    assert [len(crops) for crops in runs[0]] == lengths
    assert all(crops.shape == (n, side, side, 3) and crops.dtype == np.uint8 for crops, n in zip(runs[0], lengths))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    record = animator.describe(reference)
    assert record["identity"] == "face-layer" and record["seed"] == 5  # the settings the job ran with
    list(animator.animate(reference, _driving(np.random.default_rng(1), [1], side), {"seed": 7, "num_steps": 1}))
    record = animator.describe(reference)
    assert (record["seed"], record["num_steps"]) == (7, 1)
    assert record["frames_per_window"] == 1 + 2 * record["pad_frames"] < TINY_SETTINGS.frames_per_window  # fitted
    with pytest.raises(ValueError, match="num_step"):
        list(animator.animate(reference, _driving(np.random.default_rng(1), [4], side), {"num_step": 9}))
    # a bad value fails before any work, not after the denoising (or, a negative pad, by dropping frames)
    for bad in ({"appearance_scale": 2.0}, {"decode_chunk_size": 0}, {"pad_frames": -1}, {"seed": "x"}, {"seed": 2**64}, {"seed": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            next(animator.animate(reference, iter(()), bad))  # no driving frames: nothing else would raise
    list(animator.animate(reference, iter(()), {"seed": 11}))  # a job without frames is still the one described
    assert animator.describe(reference)["seed"] == 11


def test_initial_noise_depends_on_the_seed_and_frame_only() -> None:
    """Frame i's noise is the i-th draw of a CPU generator: the same for any video length (and any
    device), drawn frame by frame into the latents."""
    pipe = random_models("tiny", seed=3).pipeline
    reference = ReferenceFeatures(image_tokens=torch.zeros(1, 1, 1), mean=torch.randn(1, 4, 8, 8),
                                  latent=torch.zeros(1, 4, 8, 8))
    short, long = (pipe.initial_latents(reference, n, None, SamplingSettings(seed=4), 700.0) for n in (5, 12))
    assert torch.equal(short, long[:, :5]) and not torch.equal(long[:, 0], long[:, 1])
    other = pipe.initial_latents(reference, 5, None, SamplingSettings(seed=9), 700.0)
    assert not torch.equal(short, other)
    noise = torch.randn(1, 5, 4, 8, 8)
    given = pipe.initial_latents(reference, 5, noise, SamplingSettings(), 700.0)
    assert torch.allclose(given, reference.mean[:, None] * 0.18215 + noise * 700.0)


def test_motion_is_encoded_in_chunks_from_the_video_start_whatever_the_windows() -> None:
    """The release computes motion (and its intensity buckets) per 25 frames from frame 0; driving
    windows of any lengths must give the same tokens."""
    from portraitflow.models.hunyuan.animator import CENTRAL_THIRD
    from portraitflow.models.hunyuan.conditions import MOTION_CHUNK_FRAMES, encode_motion_chunk, image_tensor

    animator = HunyuanAnimator.create(TINY_WEIGHTS, device="cpu")
    models, side = animator.models, animator.models.resolution
    windows = list(_driving(np.random.default_rng(3), [7, 30, 14], side))
    tokens, lengths = animator._motion_tokens(iter(windows))
    crops, kps = np.concatenate([w.crops for w in windows]), np.concatenate([w.kps for w in windows])
    size = models.motion_resolution
    face = expression_crops(crops, kps, np.asarray(CENTRAL_THIRD) * side, size)
    head = image_tensor(crops, size)
    with torch.no_grad():
        expected = [encode_motion_chunk(models.expression, models.headpose, models.motion_proj,
                                        face[s:s + MOTION_CHUNK_FRAMES], head[s:s + MOTION_CHUNK_FRAMES],
                                        kps[s:s + MOTION_CHUNK_FRAMES])
                    for s in range(0, len(crops), MOTION_CHUNK_FRAMES)]
        whole = encode_motion_chunk(models.expression, models.headpose, models.motion_proj, face, head, kps)
    assert lengths == [7, 30, 14] and len(expected) == 3  # 25 + 25 + 1 frames
    torch.testing.assert_close(tokens, torch.cat(expected).to(tokens.dtype), atol=0, rtol=0)
    assert (tokens - whole.to(tokens.dtype)).abs().max() > 1e-3  # chunk boundaries change the tokens
    # the keypoints before smoothing are what the release reads, where a window carries them
    smoothed = [dataclasses.replace(w, kps=w.kps.mean(axis=0, keepdims=True).repeat(len(w.kps), 0), raw_kps=w.kps)
                for w in windows]
    torch.testing.assert_close(animator._motion_tokens(iter(smoothed))[0], tokens, atol=0, rtol=0)
    assert (animator._motion_tokens(iter(dataclasses.replace(w, raw_kps=None) for w in smoothed))[0]
            - tokens).abs().max() > 1e-3


def test_a_failed_compilation_falls_back_to_eager_with_the_same_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler tool chain")

    eager = HunyuanAnimator(random_models("tiny"), TINY_SETTINGS)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode, dynamic: real_compile(fn, backend=failing_backend))
    animator = HunyuanAnimator(random_models("tiny"), TINY_SETTINGS, compile_mode="default")
    side = animator.models.resolution
    assert animator.describe(_reference(side))["compile"] == "default"
    runs = [list(a.animate(_reference(side), _driving(np.random.default_rng(1), [9], side), {}))
            for a in (eager, animator)]
    assert np.array_equal(runs[0][0], runs[1][0])
    assert animator.describe(_reference(side))["compile"] == "failed, eager (BackendCompilerFailed)"
    assert animator.models.pipeline._compiled_decode is None  # the decoder too: one state, eager for good


def test_arcface_onnx_gets_rgb_in_0_1_and_is_l2_normalised(tmp_path: Path) -> None:
    """A stand-in arcface.onnx (input `data`, mean colour x W + b): the bias makes the input scale matter."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(3, 512)).astype(np.float32), rng.normal(size=512).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["data"], ["colour"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["colour", "weight"], ["projected"]),
         helper.make_node("Add", ["projected", "bias"], ["embedding"])],
        "arcface", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    path = tmp_path / "arcface.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    models = random_models("tiny")
    models.arcface = path
    animator = HunyuanAnimator(models)
    face = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    reference = ReferenceInput(crop=np.zeros((64, 64, 3), np.uint8), kps=np.zeros((5, 2)),
                               landmarks=np.zeros((68, 2)), pose=np.zeros(3), aligned_face=face,
                               embedding=np.ones(512, np.float32))
    vector, source = animator.identity(reference)
    expected = (face.reshape(-1, 3).mean(axis=0) / 255.0) @ weight + bias
    assert source == "arcface.onnx"
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)


def test_generation_flow_builds_the_hunyuan_animator_from_config() -> None:
    from portraitflow.jobs.config.animate import AnimateConfig
    from portraitflow.models.animators.registry import create_animator, resolve_backend

    cfg = AnimateConfig(weights=TINY_WEIGHTS)
    assert resolve_backend(cfg) == "hunyuan"
    animator = create_animator("hunyuan", cfg)
    assert isinstance(animator, HunyuanAnimator)
    assert cfg.compile_mode == "default" and animator.models.pipeline.compiled == "off"  # compiled on CUDA only
    with pytest.raises(ValueError, match="animate.weights"):
        create_animator("hunyuan", AnimateConfig(backend="hunyuan"))


def test_the_generation_flow_refuses_incomplete_weights_before_ray_starts(tmp_path: Path) -> None:
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.generation import run_generation
    from portraitflow.models.hunyuan.checkpoints import WeightsMissing

    cfg = load_config(None, [f"animate.weights={tmp_path}", "ray.address=ray://nowhere.invalid:1"])
    with pytest.raises(WeightsMissing, match="unet.pth"):  # a Ray start would fail differently
        run_generation([], tmp_path / "out", cfg)


def test_the_black_pose_feature_is_the_pose_guider_on_black_frames() -> None:
    """The animator feeds the release's all-black pose input as one constant frame, computed once:
    it must equal the pose guider run on a window of black frames, which the goldens check."""
    pipe = random_models("tiny", seed=3).pipeline
    indices = torch.arange(4)
    black = torch.zeros(6, 3, 64, 64)
    per_window = pipe.pose_image_features(black)(indices)
    constant = pipe.black_pose_features(64, 64)(indices)
    assert per_window.shape[0] == 1 and per_window.shape[1] == len(indices) and constant.shape[1] == 1
    torch.testing.assert_close(constant.expand_as(per_window), per_window)


def test_cut_or_corrupt_weights_are_refused_before_ray_starts(tiny_weights, tmp_path: Path) -> None:
    """Every file there but garbage: the actors failed once every job was prepared, in a 445-line
    traceback, exit 1, no results table."""
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.generation import run_generation
    from portraitflow.models.hunyuan.checkpoints import WeightsUnreadable, check_weights_readable

    _, root = tiny_weights
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    check_weights_readable(broken)  # intact .pth (zip) and .safetensors pass
    unet, vae = broken / "hyportrait" / "unet.pth", broken / "vae" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])  # a download cut short
    vae.write_bytes(b"\x00" * 1000)
    (broken / "hyportrait" / "dino.pth").write_bytes(b"<html>rate limited</html>")
    cfg = load_config(None, [f"animate.weights={broken}", "ray.address=ray://nowhere.invalid:1"])
    with pytest.raises(WeightsUnreadable) as error:
        run_generation([], tmp_path / "out", cfg)
    message = str(error.value)
    assert message.count("\n  - ") == 3 and str(unet) in message and str(vae) in message and "dino.pth" in message
    assert "pose_guider" not in message
