"""The UNet's kernel substitutions compute diffusers' sums: the fused GEGLU and the 2-D frame convolution."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward
from diffusers.models.resnet import TemporalResnetBlock

from portraitflow.models.hunyuan.fused import FrameConv, FusedGEGLU, geglu_triton
from portraitflow.models.hunyuan.unet import TINY_UNET_CONFIG, HunyuanUNet

pytestmark = pytest.mark.usefixtures("torch_two_threads")


def test_unet_swaps_every_geglu_and_frame_convolution_and_keeps_its_keys() -> None:
    with torch.device("meta"):
        unet = HunyuanUNet(**TINY_UNET_CONFIG)
    modules = list(unet.modules())
    feed_forwards = [m for m in modules if isinstance(m, FeedForward)]
    assert feed_forwards and all(isinstance(m.net[0], FusedGEGLU) for m in feed_forwards)
    blocks = [m for m in modules if isinstance(m, TemporalResnetBlock)]
    assert blocks and all(isinstance(b.conv1, FrameConv) and isinstance(b.conv2, FrameConv) for b in blocks)
    keys = unet.state_dict().keys()
    assert sum(key.endswith(".net.0.proj.weight") for key in keys) == len(feed_forwards)
    assert sum(key.endswith((".conv1.weight", ".conv2.weight")) and ".temporal_res_block." in key
               for key in keys) == 2 * len(blocks)


def test_fused_geglu_off_the_gpu_is_diffusers_formula_exactly() -> None:
    torch.manual_seed(0)
    stock = GEGLU(32, 48)
    fused = FusedGEGLU.replacing(stock)
    x = torch.randn(2, 7, 32)
    assert torch.equal(fused(x), stock(x))
    assert fused(x).shape == (2, 7, 48)


def test_frame_convolution_in_2d_equals_the_3d_one() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 10, kernel_size=(3, 1, 1), padding=(1, 0, 0))
    frame_conv = FrameConv(conv)
    x = torch.randn(2, 6, 5, 4, 3)
    torch.testing.assert_close(frame_conv.forward_2d(x), conv(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(frame_conv(x), conv(x))  # the CPU runs the 3-D form


def test_frame_convolution_refuses_a_spatial_kernel() -> None:
    with pytest.raises(ValueError, match="frames only"):
        FrameConv(torch.nn.Conv3d(4, 4, kernel_size=3, padding=1))


@pytest.mark.skipif(geglu_triton is None or not torch.cuda.is_available(), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_geglu_kernel_matches_the_formula_on_cuda(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    stock = GEGLU(320, 1000).cuda().to(dtype)
    fused = FusedGEGLU.replacing(stock)
    x = torch.randn(3, 1000, 320, device="cuda", dtype=dtype)  # 3000 rows and 1000 columns: no multiple of a tile
    assert fused.can_fuse(x)
    hidden, gate = torch.nn.functional.linear(x.float(), stock.proj.weight.float(), stock.proj.bias.float()).chunk(2, -1)
    exact = hidden * torch.nn.functional.gelu(gate)
    torch.testing.assert_close(fused(x).float(), exact, rtol=2e-2, atol=2e-2)
    fused.fused = False
    assert not fused.can_fuse(x)


def test_pipeline_substitutes_the_vae_decoder_and_the_switch_turns_both_off() -> None:
    from portraitflow.models.hunyuan.fused import use_fused_kernels
    from portraitflow.models.hunyuan.weights import random_models

    pipe = random_models("tiny", device=torch.device("cpu"), dtype=torch.float32, seed=0).pipeline
    frame_convs = [m for m in pipe.vae.modules() if isinstance(m, FrameConv)]
    assert pipe.vae.decoder.time_conv_out in frame_convs and len(frame_convs) > 1
    assert not any(type(m) is torch.nn.Conv3d for m in pipe.vae.modules())
    use_fused_kernels(pipe.vae, False)
    use_fused_kernels(pipe.unet, False)
    assert not any(m.as_2d for m in frame_convs)
    assert not any(m.fused for m in pipe.unet.modules() if isinstance(m, FusedGEGLU))


@pytest.mark.skipif(geglu_triton is None or not torch.cuda.is_available(), reason="needs Triton and a CUDA device")
def test_a_kernel_that_fails_leaves_the_formula_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(geglu_triton, "launch", broken)
    monkeypatch.setattr(geglu_triton, "kernel_failure", None)
    stock = GEGLU(64, 32).cuda().half()
    x = torch.randn(2, 5, 64, device="cuda", dtype=torch.float16)
    for _ in range(2):
        out = torch.ops.portraitflow.linear_geglu(x, stock.proj.weight, stock.proj.bias)
        torch.testing.assert_close(out, stock(x))
    with pytest.raises(RuntimeError, match="multiple of 64"):  # what the kernel cannot read: refused, not run
        torch.ops.portraitflow.linear_geglu(x[..., :48], stock.proj.weight[:, :48], stock.proj.bias)
    assert len(calls) == 1 and "no kernel image" in geglu_triton.kernel_failure
    assert caplog.text.count("the fused GEGLU kernel failed") == 1


@pytest.mark.skipif(geglu_triton is None or not torch.cuda.is_available(), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("index", range(len(geglu_triton.CONFIGS + geglu_triton.PERSISTENT_CONFIGS))
                         if geglu_triton is not None else [])
def test_every_tile_config_computes_the_formula_on_cuda(index: int) -> None:
    """Each config the autotuner may keep, one-tile and persistent, launched alone."""
    config = (geglu_triton.CONFIGS + geglu_triton.PERSISTENT_CONFIGS)[index]
    meta = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    torch.manual_seed(index)
    x = torch.randn(3000, 320, device="cuda", dtype=torch.float16)
    weight = torch.randn(2000, 320, device="cuda", dtype=torch.float16) / 320**0.5
    bias = torch.randn(2000, device="cuda", dtype=torch.float16)
    out = torch.full((3000, 1000), float("nan"), device="cuda", dtype=torch.float16)
    geglu_triton.launch(x, weight, bias, out, meta)
    hidden, gate = torch.nn.functional.linear(x.float(), weight.float(), bias.float()).chunk(2, -1)
    torch.testing.assert_close(out.float(), hidden * torch.nn.functional.gelu(gate), rtol=2e-2, atol=2e-2)
