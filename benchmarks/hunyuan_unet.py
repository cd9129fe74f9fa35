"""One HunyuanPortrait UNet call (one 25-frame window, both guidance branches): where the time goes.

`hunyuan_gpu.py` times whole jobs; this times the call that is 95% of a job, so kernel-level
variants can be compared in seconds instead of minutes: ms per call, frame-passes/s, achieved
TFLOP/s (FLOPs counted by `torch.utils.flop_counter`), and each variant's largest difference from
diffusers' stock sums (eager, fused kernels off, all rows). `--profile` prints the CUDA kernels
that take the most time in one call of each variant. Every variant but `eager-all-rows` skips the
unconditional branch's cross-attention, and the `-stock` ones and `eager-all-rows` run diffusers'
GEGLU and 3-D temporal convolutions instead of the fused kernels (`fused.use_fused_kernels`).

    python benchmarks/hunyuan_unet.py                                # full size on CUDA, fp16
    python benchmarks/hunyuan_unet.py --variants compile-stock compile --profile
    python benchmarks/hunyuan_unet.py --tiny                         # tiny UNet on the CPU
"""
from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hunyuan_gpu import DTYPES  # run as a script: benchmarks/ is on the path
from portraitflow.models.hunyuan.fused import geglu_kernel_state, use_fused_kernels
from portraitflow.models.hunyuan.unet import SVD_XT_UNET_CONFIG, TINY_UNET_CONFIG, HunyuanUNet


@dataclass(frozen=True)
class Variant:
    windows: int = 1  # windows per call
    channels_last: bool = False  # Conv2d weights channels-last
    compile_mode: str | None = None  # torch.compile mode; reduce-overhead adds CUDA graphs
    all_rows: bool = False  # cross-attention computed for the unconditional items too
    attention: str | None = None  # an SDPBackend the attention is restricted to; None: PyTorch's choice
    fused_kernels: bool = True  # FusedGEGLU and FrameConv; off: diffusers' stock computation


VARIANTS = {
    "eager": Variant(),
    "eager-stock": Variant(fused_kernels=False),
    "eager-all-rows": Variant(all_rows=True, fused_kernels=False),
    "channels-last": Variant(channels_last=True),
    "two-windows": Variant(windows=2),
    "compile": Variant(compile_mode="default"),
    "compile-stock": Variant(compile_mode="default", fused_kernels=False),
    "compile-cudagraphs": Variant(compile_mode="reduce-overhead"),
    "compile-two-windows": Variant(windows=2, compile_mode="default"),
    "compile-max-autotune": Variant(compile_mode="max-autotune-no-cudagraphs"),
    # PyTorch picks cuDNN's attention on an H100 (its profile): is FlashAttention-2 any faster?
    "compile-flash-attention": Variant(compile_mode="default", attention="FLASH_ATTENTION"),
}


def call_inputs(unet: HunyuanUNet, windows: int, latent: int, device: torch.device, dtype: torch.dtype,
                seed: int) -> tuple:
    """The positional arguments of one guided call: [uncond x windows, full x windows], as the
    sampler batches them (the first `windows` items have zero tokens)."""
    generator = torch.Generator().manual_seed(seed)
    frames, width = unet.config.num_frames, unet.config.cross_attention_dim
    channels = unet.config.block_out_channels[0]
    batch = 2 * windows

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    image = torch.cat([torch.zeros(windows, 64, width), torch.randn(windows, 64, width, generator=generator)])
    motion = torch.cat([torch.zeros(windows, frames, 64, width),
                        torch.randn(windows, frames, 64, width, generator=generator)])
    time_ids = torch.tensor([[12.5, 0.0, 0.0]]).expand(batch, -1)
    return (rand(batch, frames, 8, latent, latent), torch.tensor(1.0, device=device), image.to(device, dtype),
            motion.to(device, dtype), time_ids.to(device, dtype), rand(1, 1, channels, latent, latent))


def variant_call(unet: HunyuanUNet, spec: Variant, latent: int, reference_inputs: tuple,
                 seed: int) -> Callable[[], torch.Tensor]:
    """One call of the variant's model on its inputs, as the pipeline makes it."""
    device, dtype = unet.conv_in.weight.device, unet.conv_in.weight.dtype
    inputs = reference_inputs if spec.windows == 1 else call_inputs(unet, spec.windows, latent, device, dtype, seed)
    model = torch.compile(unet, mode=spec.compile_mode, dynamic=False) if spec.compile_mode else unet
    unconditional = 0 if spec.all_rows else spec.windows

    def run() -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: the previous call's output may be overwritten
        with sdpa_kernel(getattr(SDPBackend, spec.attention)) if spec.attention else contextlib.nullcontext():
            return model(*inputs, unconditional=unconditional)

    return run


def timed_calls(run: Callable[[], torch.Tensor], calls: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """(last output, seconds per call) after one untimed call."""
    output = run()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        output = run()
    _synchronize(device)
    return output, (time.perf_counter() - start) / calls


def conv2d_memory_format(root: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Conv2d weights in `memory_format`; activations follow them. (Conv3d weights stay as they are:
    `Module.to(memory_format=channels_last)` refuses the temporal convs' 5-D weights.)"""
    for module in root.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=memory_format)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def print_profile(run: Callable[[], torch.Tensor], rows: int) -> None:
    """The kernels with the most device time in one call, and their share."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events)
    print(f"kernels: {len(events)} kinds, {total / 1e3:.1f} ms device time in one call")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:rows]:
        share = event.self_device_time_total / total
        print(f"{share:6.1%} {event.self_device_time_total / 1e3:8.2f} ms {event.count:5d}x  {event.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on the CPU (16² latents)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default fp16; tiny fp32")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["eager-stock", "eager", "compile-stock", "compile"])
    parser.add_argument("--calls", type=int, default=5, help="timed calls per variant")
    parser.add_argument("--profile", type=int, nargs="?", const=30, default=0, metavar="ROWS",
                        help="on CUDA, print the top ROWS kernels of one call of each variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype_name = args.dtype or ("fp32" if args.tiny else "fp16")
    dtype = DTYPES[dtype_name]
    config, latent = (TINY_UNET_CONFIG, 16) if args.tiny else (SVD_XT_UNET_CONFIG, 64)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(args.seed)
    with torch.device(device):
        unet = HunyuanUNet(**config).to(device, dtype).eval()  # AlphaBlender builds its weight on the CPU
    frames = unet.config.num_frames
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{'tiny' if args.tiny else 'full'} UNet on {device} ({name}), {dtype_name}, "
          f"{latent}² latents, {frames}-frame windows, 2 guidance branches")
    reference_inputs = call_inputs(unet, 1, latent, device, dtype, args.seed)
    use_fused_kernels(unet, False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        reference = unet(*reference_inputs)
    flops_per_pass = counter.get_total_flops() / (2 * frames)
    print(f"{flops_per_pass / 1e9:.1f} GFLOP per frame-pass (cross-attention of both branches counted)")
    print(f"{'variant':22s} {'ms/call':>9s} {'passes/s':>9s} {'TFLOP/s':>8s} {'setup s':>8s} | max |diff| vs eager-all-rows")
    profiles = []
    for variant in args.variants:
        spec = VARIANTS[variant]
        conv2d_memory_format(unet, torch.channels_last if spec.channels_last else torch.contiguous_format)
        use_fused_kernels(unet, spec.fused_kernels)
        run = variant_call(unet, spec, latent, reference_inputs, args.seed)
        with torch.no_grad():
            setup = time.perf_counter()
            try:
                run()
            except RuntimeError as exc:  # e.g. an attention backend this device or shape lacks
                print(f"{variant:22s} failed: {str(exc).splitlines()[0][:150]}", flush=True)
                continue
            _synchronize(device)
            setup = time.perf_counter() - setup
            output, seconds = timed_calls(run, args.calls, device)
            diff = f"{(output.float() - reference.float()).abs().max().item():.2e}" if spec.windows == 1 else "-"
            if args.profile and device.type == "cuda":
                profiles.append((variant, spec, run))
        windows = spec.windows
        passes = 2 * windows * frames / seconds
        fell_back = geglu_kernel_state(device) if spec.fused_kernels and "failed" in geglu_kernel_state(device) else ""
        print(f"{variant:22s} {seconds * 1e3:9.1f} {passes:9.1f} {passes * flops_per_pass / 1e12:8.1f} "
              f"{setup:8.1f} | {diff} {fell_back}", flush=True)
    for variant, spec, run in profiles:
        print(f"\n{variant}:")
        use_fused_kernels(unet, spec.fused_kernels)
        with torch.no_grad():
            print_profile(run, args.profile)
    conv2d_memory_format(unet, torch.contiguous_format)


if __name__ == "__main__":
    main()
