"""The HunyuanPortrait UNet: the official `unet.pth` layout and the `unet` golden fixture."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file

from portraitflow.models.hunyuan.unet import (
    SVD_XT_UNET_CONFIG,
    BatchSplitSelfAttention,
    HunyuanUNet,
    IPAttnProcessor,
)


pytestmark = pytest.mark.usefixtures("torch_two_threads")


def test_full_size_unet_has_exactly_the_release_keys_and_shapes(hunyuan_reference: Path) -> None:
    expected = json.loads((hunyuan_reference / "state_dicts.json").read_text())["unet.pth"]
    with torch.device("meta"):
        unet = HunyuanUNet(**SVD_XT_UNET_CONFIG)
    ours = {key: list(value.shape) for key, value in unet.state_dict().items()}
    assert ours == expected["keys"]
    processors = sorted(name.removesuffix(".processor") for name, m in unet.named_modules()
                        if isinstance(m, IPAttnProcessor))
    assert processors == sorted(name.removesuffix(".processor") for name in expected["ip_adapter_processors"])
    assert sum(p.numel() for p in unet.parameters()) == expected["num_parameters"]


@pytest.fixture(scope="module")
def unet_golden(hunyuan_reference: Path) -> tuple[HunyuanUNet, dict, dict[str, torch.Tensor]]:
    tensors = load_file(hunyuan_reference / "fixtures" / "unet.safetensors")
    sidecar = json.loads((hunyuan_reference / "fixtures" / "unet.json").read_text())
    data = {k: v for k, v in tensors.items() if k.startswith(("input.", "output.", "trace."))}
    unet = HunyuanUNet(**sidecar["config"]["config"])
    unet.load_state_dict({k: v for k, v in tensors.items() if k not in data}, strict=True)
    return unet.eval(), sidecar, data


def _run(unet: HunyuanUNet, data: dict[str, torch.Tensor]) -> torch.Tensor:
    batch, frames = data["input.sample"].shape[:2]
    with torch.no_grad():
        return unet(
            data["input.sample"],
            data["input.timestep"],
            data["input.encoder_hidden_states.image"].unflatten(0, (batch, frames)),
            data["input.encoder_hidden_states.motion"].unflatten(0, (batch, frames)),
            data["input.added_time_ids"],
            data["input.pose_cond_fea"],
        )


def test_unet_golden(unet_golden) -> None:
    unet, sidecar, data = unet_golden
    captured: dict[str, torch.Tensor] = {}
    processor = unet.down_blocks[0].attentions[0].temporal_transformer_blocks[0].attn2.processor
    processor.register_forward_hook(lambda *_: captured.update(vars(unet.condition_slot.current())))
    ours = _run(unet, data)
    tolerance = sidecar["recommended_tolerance_fp32"]["per_output"]["output.sample"]
    torch.testing.assert_close(ours, data["output.sample"], atol=tolerance["atol"], rtol=tolerance["rtol"])
    # the temporal layers see the frame mean of each stream (stock SVD would use frame 0)
    for stream in ("image", "motion"):
        torch.testing.assert_close(captured[f"temporal_{stream}"], data[f"trace.down0_temporal_context.{stream}"],
                                   atol=1e-6, rtol=1e-5)


def test_unet_golden_traces_block_by_block(unet_golden) -> None:
    """Every intermediate the fixture records, where the release takes it, so a regression names
    the first block that differs instead of one output number. `conv_in_out` is before the pose
    feature is added (the hook that adds it runs after this test's, prepended, one)."""
    unet, sidecar, data = unet_golden
    transformer = unet.down_blocks[0].attentions[0]
    places = {"conv_in": unet.conv_in, "down0_st": transformer, "mid_block": unet.mid_block,
              "down0_spatial_attn2": transformer.transformer_blocks[0].attn2,
              "down0_temporal_attn2": transformer.temporal_transformer_blocks[0].attn2}
    places |= {f"down_blocks.{i}": block for i, block in enumerate(unet.down_blocks)}
    places |= {f"up_blocks.{i}": block for i, block in enumerate(unet.up_blocks)}
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str, value: torch.Tensor | tuple) -> None:
        captured[name] = value[0] if isinstance(value, tuple) else value

    hooks = [handle for name, module in places.items() for handle in (
        module.register_forward_pre_hook(
            lambda _, args, kwargs, name=name: keep(f"{name}_in", args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True),
        module.register_forward_hook(lambda _, __, out, name=name: keep(f"{name}_out", out), prepend=True))]
    try:
        _run(unet, data)
    finally:  # the module-scoped UNet serves the other tests unhooked
        for handle in hooks:
            handle.remove()
    observed = sidecar["observed"]  # the sidecar's rule for its outputs, applied to the traces' worst rerun
    atol = 20 * max(observed["fp64_vs_stored_fp32"]["worst_trace_max_abs"], observed["rerun_fp32_1thread"]["worst_trace_max_abs"])
    recorded = [key.removeprefix("trace.") for key in data if key.startswith("trace.") and "temporal_context" not in key]
    assert len(recorded) == 16 and set(recorded) <= captured.keys()
    for name in recorded:
        torch.testing.assert_close(captured[name], data[f"trace.{name}"], atol=atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_folded_contexts_equal_the_repeated_ones(unet_golden) -> None:
    """Attending once per shared context equals copying it per query row, as the release does."""
    unet, _, data = unet_golden
    folded = _run(unet, data)
    unet.condition_slot.repeat_contexts = True
    try:
        repeated = _run(unet, data)
    finally:
        unet.condition_slot.repeat_contexts = False
    torch.testing.assert_close(folded, repeated, atol=1e-5, rtol=1e-5)


def test_self_attention_split_into_batches_equals_the_whole(unet_golden, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the kernels' batch limit the self-attention runs in parts: the same output."""
    unet, _, data = unet_golden
    whole = _run(unet, data)
    batches = []  # what each call of diffusers' self-attention received
    stock = AttnProcessor2_0.__call__

    def spy(self: AttnProcessor2_0, attn: torch.nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        batches.append(hidden_states.shape[0])
        return stock(self, attn, hidden_states, *args, **kwargs)

    monkeypatch.setattr(AttnProcessor2_0, "__call__", spy)
    monkeypatch.setattr(BatchSplitSelfAttention, "MAX_BATCH", 7)
    split = _run(unet, data)
    assert batches and max(batches) == 7 and any(batch < 7 for batch in batches)  # parts, a last shorter one
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=1e-6)
    layer = unet.down_blocks[0].attentions[0].temporal_transformer_blocks[0].attn1
    with pytest.raises(ValueError, match="without a mask"):
        layer.processor(layer, torch.zeros(8, 3, layer.query_dim), attention_mask=torch.zeros(8, 1, 3))


def test_unconditional_items_skip_cross_attention_exactly(unet_golden) -> None:
    """Items with all-zero tokens get the output projection's bias instead of computed cross-attention."""
    unet, _, data = unet_golden
    batch, frames = data["input.sample"].shape[:2]
    image = data["input.encoder_hidden_states.image"].unflatten(0, (batch, frames))
    motion = data["input.encoder_hidden_states.motion"].unflatten(0, (batch, frames))
    zero_image, zero_motion = torch.zeros_like(image[:1]), torch.zeros_like(motion[:1])
    args = (torch.cat([data["input.sample"][:1], data["input.sample"]]), data["input.timestep"],
            torch.cat([zero_image, image]), torch.cat([zero_motion, motion]),
            torch.cat([data["input.added_time_ids"][:1], data["input.added_time_ids"]]),
            torch.cat([data["input.pose_cond_fea"][:1], data["input.pose_cond_fea"]]))
    queries = []  # rows projected by one spatial cross-attention layer
    to_q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    handle = to_q.register_forward_hook(lambda _m, inputs, _out: queries.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            computed = unet(*args)
            skipped = unet(*args, unconditional=1)
    finally:
        handle.remove()
    assert queries == [(batch + 1) * frames, batch * frames]
    torch.testing.assert_close(skipped, computed, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(skipped[1:], skipped[:1].expand_as(skipped[1:]))  # the conditioned items still differ
    with pytest.raises(ValueError, match="unconditional"):
        unet(*args, unconditional=batch + 2)


def test_unet_round_trips_through_diffusers_save_and_from_pretrained(tmp_path: Path) -> None:
    from portraitflow.models.hunyuan.unet import TINY_UNET_CONFIG

    unet = HunyuanUNet(**TINY_UNET_CONFIG)
    unet.save_pretrained(tmp_path)  # safetensors, with its config.json
    again = HunyuanUNet.from_pretrained(tmp_path)
    assert again.config.block_out_channels == list(TINY_UNET_CONFIG["block_out_channels"])
    ours, theirs = unet.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((tmp_path / "config.json").read_text())
    assert HunyuanUNet.from_config({**config, "a_key_from_a_newer_diffusers": 1}).conv_in.out_channels == 32
