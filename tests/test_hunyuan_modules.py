"""HunyuanPortrait condition modules: exact official checkpoint layouts and the golden fixtures."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from portraitflow.models.hunyuan.buckets import head_exp_motion_buckets
from portraitflow.models.hunyuan.conditions import (
    appearance_tokens,
    encode_motion_chunk,
)
from portraitflow.models.hunyuan.dino import DinoV2WithIdAdapters
from portraitflow.models.hunyuan.expression import HeadExpression
from portraitflow.models.hunyuan.headpose import HeadPose, headpose_input
from portraitflow.models.hunyuan.image_proj import ImageProjector
from portraitflow.models.hunyuan.motion_proj import IntensityAwareMotionRefiner
from portraitflow.models.hunyuan.pose_guider import PoseGuider

FULL_SIZE: dict[str, Callable[[], nn.Module]] = {
    "pose_guider.pth": PoseGuider,
    "image_proj.pth": ImageProjector,
    "expression.pth": HeadExpression,
    "headpose.pth": HeadPose,
    "motion_proj.pth": IntensityAwareMotionRefiner,
    "dino.pth": DinoV2WithIdAdapters,
}


pytestmark = pytest.mark.usefixtures("torch_two_threads")


@pytest.mark.parametrize("filename", sorted(FULL_SIZE))
def test_full_size_keys_and_shapes_match_the_release(hunyuan_reference: Path, filename: str) -> None:
    expected = json.loads((hunyuan_reference / "state_dicts.json").read_text())[filename]["keys"]
    with torch.device("meta"):
        model = FULL_SIZE[filename]()
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == expected


def _golden(reference: Path, name: str) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor]]:
    """(weights under official keys, sidecar JSON, input/output/trace tensors) of one fixture."""
    tensors = load_file(reference / "fixtures" / f"{name}.safetensors")
    sidecar = json.loads((reference / "fixtures" / f"{name}.json").read_text())
    data_prefixes = ("input.", "output.", "trace.")
    weights = {k: v for k, v in tensors.items() if not k.startswith(data_prefixes)}
    data = {k: v for k, v in tensors.items() if k.startswith(data_prefixes)}
    return weights, sidecar, data


def _load(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(weights, strict=True)
    return model.float().eval()


def _assert_close(ours: torch.Tensor, expected: torch.Tensor, tolerance: dict) -> None:
    torch.testing.assert_close(ours, expected, atol=tolerance["atol"], rtol=tolerance["rtol"])


def _tolerance(sidecar: dict, output: str) -> dict:
    return sidecar["recommended_tolerance_fp32"]["per_output"][output]


def test_bucket_examples(hunyuan_reference: Path) -> None:
    recorded = json.loads((hunyuan_reference / "window_schedule_and_buckets.json").read_text())
    examples = recorded["bucket_id_examples"]["examples"]
    assert len(examples) >= 5
    for example in examples:
        expected = (example["head_bucket_id"], example["exp_bucket_id"])
        assert head_exp_motion_buckets(example["landmarks"]) == expected


def test_pose_guider_golden(hunyuan_reference: Path) -> None:
    weights, sidecar, data = _golden(hunyuan_reference, "pose_guider")
    model = _load(PoseGuider(), weights)
    with torch.no_grad():
        for suffix in ("", "_black"):
            ours = model(data[f"input.pose_images{suffix}"])
            output = f"output.pose_feature{suffix}"
            _assert_close(ours, data[output], _tolerance(sidecar, output))


def test_image_proj_golden(hunyuan_reference: Path) -> None:
    weights, sidecar, data = _golden(hunyuan_reference, "image_proj")
    model = _load(ImageProjector(), weights)
    with torch.no_grad():
        ours = model(data["input.dino_tokens"])
    _assert_close(ours, data["output.image_tokens"], _tolerance(sidecar, "output.image_tokens"))


def test_expression_golden(hunyuan_reference: Path) -> None:
    weights, sidecar, data = _golden(hunyuan_reference, "expression")
    assert "[2, 1, 1, 1]" in sidecar["config"]["constructor"]
    model = _load(HeadExpression(blocks_per_stage=(2, 1, 1, 1)), weights)
    with torch.no_grad():
        ours = model(data["input.motion_face_image"])
    _assert_close(ours, data["output.expression_feature"], _tolerance(sidecar, "output.expression_feature"))


def test_headpose_golden(hunyuan_reference: Path) -> None:
    weights, sidecar, data = _golden(hunyuan_reference, "headpose")
    model = _load(HeadPose(), weights)
    net_input = headpose_input(data["input.motion_pose_image"])
    torch.testing.assert_close(net_input, data["input.net_input"], atol=0, rtol=0)
    with torch.no_grad():
        raw = model.head_pose_net(net_input)
        ours = model(net_input)
    torch.testing.assert_close(raw, data["trace.fc_out"], atol=1e-5, rtol=1e-4)
    _assert_close(ours.rotation, data["output.rotation"], _tolerance(sidecar, "output.rotation"))
    _assert_close(ours.translation, data["output.translation"], _tolerance(sidecar, "output.translation"))


def test_motion_proj_golden(hunyuan_reference: Path) -> None:
    weights, sidecar, data = _golden(hunyuan_reference, "motion_proj")
    model = _load(IntensityAwareMotionRefiner(**sidecar["config"]["kwargs"]), weights)
    for case in ("case0", "case1"):
        with torch.no_grad():
            ours = model(
                data["input.motion_features"],
                data[f"input.{case}.head_bucket_id"],
                data[f"input.{case}.exp_bucket_id"],
            )
        output = f"output.{case}.motion_tokens"
        _assert_close(ours, data[output], _tolerance(sidecar, output))


def test_dino_golden_with_block_traces(hunyuan_reference: Path) -> None:
    weights, sidecar, data = _golden(hunyuan_reference, "dino")
    config = sidecar["config"]["kwargs"]
    # The other release arguments only pick the checkpoint layout and return type we implement.
    assert (config["block_chunks"], config["backbone"], config["layers_output"]) == (0, True, True)
    ignored = {"block_chunks", "backbone", "layers_output"}
    model = _load(DinoV2WithIdAdapters(**{k: v for k, v in config.items() if k not in ignored}), weights)
    captured: dict[str, torch.Tensor] = {}
    for index, block in enumerate(model.blocks):
        block.register_forward_hook(lambda _m, _a, out, i=index: captured.__setitem__(f"trace.block{i}_out", out))
        if block.adapter is not None:
            block.adapter.register_forward_hook(
                lambda _m, _a, out, i=index: captured.__setitem__(f"trace.block{i}_adapter_out", out)
            )
    with torch.no_grad():
        grid = data["input.image"].shape[-1] // config["patch_size"]
        pos_embed = model.interpolated_pos_embed(grid, grid)
        ours = model(data["input.image"], data["input.id_features"])
    tolerance = _tolerance(sidecar, "output.tokens")
    _assert_close(pos_embed, data["trace.pos_embed_interpolated"], tolerance)
    traces = sorted(k for k in data if k.startswith("trace.block"))
    assert sorted(captured) == traces
    for name in traces:
        _assert_close(captured[name], data[name], tolerance)
    _assert_close(ours, data["output.tokens"], tolerance)


def _pipeline_tensors(reference: Path, prefixes: tuple[str, ...], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Only the named tensors and the weights under `prefixes` of the (large) pipeline fixture."""
    with safe_open(reference / "fixtures" / "pipeline.safetensors", "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefixes) or key in names}


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}


def test_appearance_and_pose_conditions_match_the_pipeline_traces(hunyuan_reference: Path) -> None:
    sidecar = json.loads((hunyuan_reference / "fixtures" / "pipeline.json").read_text())
    names = ("input.transformed_images", "input.arcface_embeddings", "input.pose_cond_tensor",
             "trace.dino_tokens", "trace.image_tokens", "trace.pose_fea")
    tensors = _pipeline_tensors(hunyuan_reference, ("image_encoder.", "image_proj.", "pose_guider."), names)
    config = sidecar["config"]
    dino_config = {k: v for k, v in config["image_encoder"]["config"].items()
                   if k not in {"block_chunks", "backbone", "layers_output"}}
    dino = _load(DinoV2WithIdAdapters(**dino_config), _strip(tensors, "image_encoder."))
    image_proj = _load(ImageProjector(), _strip(tensors, "image_proj."))
    pose_guider = _load(PoseGuider(**config["pose_guider"]["config"]), _strip(tensors, "pose_guider."))
    with torch.no_grad():
        captured: list[torch.Tensor] = []
        dino.register_forward_hook(lambda _m, _a, out: captured.append(out))
        image_tokens = appearance_tokens(dino, image_proj, tensors["input.transformed_images"],
                                         tensors["input.arcface_embeddings"])
        features = pose_guider(tensors["input.pose_cond_tensor"]).transpose(1, 2)  # the UNet's layout
    # No per-trace tolerance is recorded; these are a few ops deep, far below the outputs' 5.7e-4.
    torch.testing.assert_close(captured[0], tensors["trace.dino_tokens"], atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(image_tokens, tensors["trace.image_tokens"], atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(features, tensors["trace.pose_fea"], atol=5e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def motion_goldens(hunyuan_reference: Path) -> dict:
    """The three motion modules with their golden weights, and the golden data they reproduce."""
    expression_weights, expression_sidecar, expression_data = _golden(hunyuan_reference, "expression")
    headpose_weights, headpose_sidecar, headpose_data = _golden(hunyuan_reference, "headpose")
    refiner_weights, refiner_sidecar, _ = _golden(hunyuan_reference, "motion_proj")
    examples = json.loads((hunyuan_reference / "window_schedule_and_buckets.json").read_text())
    frames = len(expression_data["input.motion_face_image"])
    return {
        "expression": _load(HeadExpression(blocks_per_stage=(2, 1, 1, 1)), expression_weights),
        "headpose": _load(HeadPose(), headpose_weights),
        "refiner": _load(IntensityAwareMotionRefiner(**refiner_sidecar["config"]["kwargs"]), refiner_weights),
        "face_images": expression_data["input.motion_face_image"],
        "expression_feature": expression_data["output.expression_feature"],
        "pose_images": headpose_data["input.motion_pose_image"],
        "rotation": headpose_data["output.rotation"],
        "rotation_tolerance": _tolerance(headpose_sidecar, "output.rotation"),
        "landmarks": np.asarray(examples["bucket_id_examples"]["examples"][1]["landmarks"][:frames]),
    }


def test_motion_tokens_are_refined_expression_then_rotation_then_zeros(motion_goldens: dict) -> None:
    g = motion_goldens
    with torch.no_grad():
        tokens = encode_motion_chunk(g["expression"], g["headpose"], g["refiner"],
                                     g["face_images"], g["pose_images"], g["landmarks"])
        head, exp = head_exp_motion_buckets(g["landmarks"])
        assert (head, exp) != (0, 0)
        refined = g["refiner"](g["expression_feature"], torch.tensor([head]), torch.tensor([exp]))
    frames, queries = len(g["face_images"]), refined.shape[1]
    assert tokens.shape == (frames, queries, 1024)
    torch.testing.assert_close(tokens[..., :1018], refined, atol=1e-4, rtol=1e-4)
    rotation = g["rotation"][:, None].expand(-1, queries, -1)
    torch.testing.assert_close(tokens[..., 1018:1021], rotation, **g["rotation_tolerance"])
    assert torch.count_nonzero(tokens[..., 1021:]) == 0


def test_a_chunks_intensity_buckets_depend_on_the_frames_in_it(motion_goldens: dict) -> None:
    g = motion_goldens
    models = (g["expression"], g["headpose"], g["refiner"])
    inputs = (g["face_images"], g["pose_images"], g["landmarks"])
    with torch.no_grad():
        whole = encode_motion_chunk(*models, *inputs)
        one_by_one = torch.cat([encode_motion_chunk(*models, *(x[i:i + 1] for x in inputs))
                                for i in range(len(g["face_images"]))])
    assert whole.shape == one_by_one.shape == (len(g["face_images"]), 64, 1024)
    # One-frame chunks have intensity buckets (0, 0); the whole chunk does not.
    assert (one_by_one - whole).abs().max() > 1e-2
