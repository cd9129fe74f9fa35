"""HunyuanPortrait generation: frames/s and peak device memory, ours against the release's algorithm.

Both runs use the same modules (random weights with the release's shapes, so the same FLOPs), the
same reference, motion tokens and noise. The *baseline* follows the official loop as released
(SPEC 6-8): three guidance branches on every window, per-frame copies of the image tokens and the
reference latent for the whole video, the temporal context copied once per position, the pose
guider run on all N black frames at once, padded motion tokens of the whole video on the device,
the reference encoded twice, every decoded frame kept until the end, and diffusers' stock GEGLU
and 3-D temporal convolutions. *Ours* is
`HunyuanPipeline`: two branches when the appearance and motion scales are equal (exact
cancellation), the black-pose feature computed once, contexts shared instead of copied, reference
features once per job, motion tokens on the host travelling per window without stalling the host,
chunked decoding that streams out and skips the chunks of padding only, on CUDA the fused GEGLU
kernel and 2-D frame convolutions (`fused.py`), and the UNet and VAE decoder under
`torch.compile` as the animator runs it (`--compile off` for eager). Motion tokens are given
(random), so the motion encoders are outside both timings.

    .venv/bin/python benchmarks/hunyuan_gpu.py                 # full size, CUDA: 512², 25 steps, fp16 + bf16
    .venv/bin/python benchmarks/hunyuan_gpu.py --tiny          # tiny modules on the CPU (plumbing, ratios)

Published reference: 1.44 frames/s for the official code on one H100.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable

import torch

from portraitflow.models.hunyuan.fused import geglu_kernel_state, use_fused_kernels
from portraitflow.models.hunyuan.pipeline import (
    INITIAL_LATENT_SCALE,
    HunyuanPipeline,
    PaddedMotion,
    SamplingSettings,
    dino_input,
)
from portraitflow.models.hunyuan.sampler import (
    euler_v_step,
    guidance_scales,
    karras_schedule,
    next_shift,
    scale_model_input,
    window_indices,
)
from portraitflow.models.hunyuan.weights import random_models

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the largest difference from the baseline a row may show ("equal within the dtype's tolerance"):
#: about 2.5x the largest measured with random-weight modules (fp16 2.0e-2 on an H200, bf16 1.1e-1);
#: fp32's, ten times the tiny CPU runs', is for the CPU (no full-size fp32 run on a GPU is measured,
#: where cuDNN's default TF32 convolutions would differ more). A row over it fails the run (exit 1).
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 2.5e-1}


@dataclasses.dataclass
class Inputs:
    crop: torch.Tensor  # [1, 3, S, S] in [0, 1]
    identity: torch.Tensor  # [1, 512]
    motion: torch.Tensor  # [T, L, D] host motion tokens
    noise: torch.Tensor  # [1, N, 4, h, w]


def make_inputs(pipe: HunyuanPipeline, resolution: int, frames: int, settings: SamplingSettings, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    width = pipe.unet.config.cross_attention_dim
    latent = resolution // 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    identity = torch.randn(1, 512, generator=generator)
    return Inputs(
        crop=torch.rand(1, 3, resolution, resolution, generator=generator),
        identity=identity / identity.norm(),
        motion=torch.randn(frames, 64, width, generator=generator),
        noise=torch.randn(1, frames + 2 * settings.pad_frames, 4, latent, latent, generator=generator),
    )


@torch.no_grad()
def ours(pipe: HunyuanPipeline, inputs: Inputs, settings: SamplingSettings,
         phases: dict[str, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline as the Animator runs it: (final latents, first and summed kept frames).
    `phases` receives each phase's wall seconds, to show what besides the UNet calls is worth
    optimising (its device synchronisations cost microseconds)."""
    lap = _PhaseClock(pipe.device, {} if phases is None else phases)
    reference = pipe.encode_reference(inputs.crop * 2 - 1, dino_input(inputs.crop), inputs.identity)
    motion = PaddedMotion(inputs.motion.to(pipe.dtype), settings.pad_frames)
    side = inputs.crop.shape[-1]
    pose = pipe.black_pose_features(side, side)
    lap("reference")
    latents = pipe.sample(reference, motion, pose, settings, noise=inputs.noise)
    lap("denoising")
    summary = _frames_summary(pipe.decode(latents, settings.decode_chunk_size, _kept(len(inputs.motion), settings)))
    lap("decoding")
    return latents, summary


class _PhaseClock:
    """Called at the end of each phase: stores the seconds since the previous call under its name."""

    def __init__(self, device: torch.device, phases: dict[str, float]) -> None:
        self.device, self.phases, self.last = device, phases, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.phases[name], self.last = now - self.last, now


def _frames_summary(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """The frames reduced as they stream out (as a writer consumes them): [first, sum], [2, 3, S, S]."""
    first, total = None, None
    for chunk in chunks:
        first = chunk[:1].float().cpu() if first is None else first
        part = chunk.float().sum(0, keepdim=True).cpu()
        total = part if total is None else total + part
    return torch.cat([first, total])


@torch.no_grad()
def baseline(pipe: HunyuanPipeline, inputs: Inputs, settings: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's `HunyuanLongSVDPipeline.__call__` algorithm with the same modules (SPEC 6-8)."""
    device, dtype = pipe.device, pipe.dtype
    unet, vae = pipe.unet, pipe.vae
    side = inputs.crop.shape[-1]
    num_frames = len(inputs.motion) + 2 * settings.pad_frames
    pad = settings.pad_frames
    image = (inputs.crop * 2 - 1).to(device, torch.float32)
    scaled_mean = vae.encode(image).latent_dist.mean * INITIAL_LATENT_SCALE  # encode A
    ref_latent = vae.encode(image).latent_dist.mode().to(dtype)  # encode B
    tokens = pipe.image_encoder(dino_input(inputs.crop).to(device, dtype), inputs.identity.to(device, dtype)[:, None])
    image_tokens = pipe.image_proj(tokens)[:, None].repeat(1, num_frames, 1, 1)  # [1, N, 64, D]
    black = torch.zeros(1, 3, num_frames, side, side, device=device, dtype=dtype)
    pose = pipe.pose_guider(black).transpose(1, 2)  # [1, N, C0, h, w], all N frames at once
    video = inputs.motion.to(device, torch.float32)
    ramp = torch.arange(pad, device=device, dtype=torch.float32) / pad
    prompts = torch.cat([ramp[:, None, None] * video[:1], video, (1 - ramp)[:, None, None] * video[-1:]])[None]
    prompts = prompts.to(dtype)
    uncond = torch.zeros_like(prompts)
    ref_latents = ref_latent[:, None].repeat(1, num_frames, 1, 1, 1)
    schedule = karras_schedule(settings.num_steps, pipe.scheduler_config)
    sigmas = schedule.sigmas.tolist()
    g1 = guidance_scales(*settings.appearance_scale, settings.num_steps)
    g2 = guidance_scales(*settings.motion_scale, settings.num_steps)
    latents = (scaled_mean[:, None] + inputs.noise.to(device) * sigmas[0]).to(dtype)
    time_ids = torch.tensor([[settings.fps, settings.motion_bucket_id, settings.noise_aug_strength]],
                            device=device, dtype=dtype).repeat(3, 1)
    window, shift = settings.frames_per_window, 0
    unet.condition_slot.repeat_contexts = True
    ours_kernels = use_fused_kernels(unet, False), use_fused_kernels(vae, False)
    try:
        for step in range(settings.num_steps):
            sigma, sigma_next = sigmas[step], sigmas[step + 1]
            timestep = schedule.timesteps[step].to(device)
            accumulated = torch.zeros_like(latents)
            counts = torch.zeros(num_frames, device=device, dtype=dtype)  # the release counts in the UNet dtype
            for frames in window_indices(num_frames, window, settings.overlap, shift):
                frames = frames.to(device)
                x = latents[:, frames]
                sample = torch.cat([scale_model_input(x, sigma).repeat(3, 1, 1, 1, 1),
                                    torch.cat([torch.zeros_like(ref_latents[:, frames]),
                                               ref_latents[:, frames], ref_latents[:, frames]])], dim=2)
                image_ctx = torch.cat([torch.zeros_like(image_tokens[:, frames]),
                                       image_tokens[:, frames], image_tokens[:, frames]])
                motion_ctx = torch.cat([uncond[:, frames], uncond[:, frames], prompts[:, frames]])
                v = unet(sample.to(dtype), timestep, image_ctx, motion_ctx, time_ids, pose[:, frames].repeat(3, 1, 1, 1, 1))
                v_uncond, v_drop, v_cond = v.chunk(3)
                v = v_uncond + g1[step] * (v_drop - v_uncond) + g2[step] * (v_cond - v_drop)
                accumulated[:, frames] += euler_v_step(x, v, sigma, sigma_next).to(dtype)
                counts[frames] += 1
            latents = accumulated / counts[None, :, None, None, None]
            shift = next_shift(shift, settings.shift_offset, window)
        decoded = torch.cat([vae.decode((c / vae.config.scaling_factor).to(vae.decoder.conv_in.weight.dtype),
                                        num_frames=len(c)).sample
                             for c in latents[0].split(settings.decode_chunk_size)])  # all frames kept
    finally:
        unet.condition_slot.repeat_contexts = False
        use_fused_kernels(unet, ours_kernels[0])
        use_fused_kernels(vae, ours_kernels[1])
    return latents, _frames_summary([decoded[pad:num_frames - pad]])


def timed(run: Callable[[], tuple], device: torch.device) -> tuple[tuple, float, float, float | None]:
    """(result, wall s, process CPU s, peak device GiB or None on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return result, time.perf_counter() - wall, time.process_time() - cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random modules on the CPU (64², 3 steps)")
    parser.add_argument("--frames", type=_positive, nargs="+", help="driving frames per run (default 50 250 1000; tiny 12 30)")
    parser.add_argument("--steps", type=_positive, help="denoising steps (default 25; tiny 3)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help="default fp16 bf16; tiny fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-baseline-above", type=int, default=1000,
                        help="do not run the baseline for longer videos (its memory grows with length)")
    parser.add_argument("--compile", metavar="MODE",
                        help="torch.compile mode of ours' UNet and VAE decoder, as the animator's `compile_mode` "
                             "(default: `default` on CUDA, `off` on the CPU); its compile time is printed apart, in the "
                             "warm-up, and the eager decoder is timed on ours' latents")
    parser.add_argument("--windows-per-call", type=_positive, default=1,
                        help="ours: windows of a step batched into one UNet call (the animator's `windows_per_call`)")
    parser.add_argument("--stock-kernels", action="store_true",
                        help="ours: diffusers' GEGLU and 3-D frame convolutions instead of the fused kernels (on CUDA), "
                             "to time what the kernels add under torch.compile")
    parser.add_argument("--no-cudnn-benchmark", action="store_true",
                        help="on CUDA, use cuDNN's heuristics instead of autotuning convolutions (both runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = "tiny" if args.tiny else "full"
    frames = args.frames or ([12, 30] if args.tiny else [50, 250, 1000])
    dtypes = args.dtypes or (["fp32"] if args.tiny else ["fp16", "bf16"])
    settings = SamplingSettings(num_steps=args.steps or 25, windows_per_call=args.windows_per_call)
    if args.tiny:
        settings = dataclasses.replace(settings, num_steps=args.steps or 3, frames_per_window=8, pad_frames=3)
    shortest = settings.frames_per_window - 2 * settings.pad_frames  # a window must fit in the padded video
    if min(frames) < shortest:
        parser.error(f"--frames: at least {shortest} driving frames (one {settings.frames_per_window}-frame window "
                     f"with {settings.pad_frames} padding frames at each end)")
    device = torch.device(args.device)
    if args.compile is None:
        args.compile = "default" if device.type == "cuda" else "off"
    if args.compile == "off":
        args.compile = None
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.no_cudnn_benchmark
    print(f"{size} modules on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"{settings.num_steps} steps, window {settings.frames_per_window}, torch threads {torch.get_num_threads()}"
          + (f", ours torch.compile mode {args.compile}" if args.compile else ""))
    header = (f"{'dtype':5s} {'frames':>6s} | {'ours f/s':>9s} {'base f/s':>9s} {'speed-up':>8s} | "
              f"{'ours cpu-s':>10s} {'base cpu-s':>10s} | {'ours GiB':>8s} {'base GiB':>8s} | max |diff|, tolerance")
    print(header)
    over: list[str] = []
    for dtype_name in dtypes:
        models = random_models(size, device=device, dtype=DTYPES[dtype_name], seed=args.seed)
        pipe = models.pipeline
        mine_pipe = copy.copy(pipe)  # the same modules; with --compile, ours calls compiled views of them
        if args.stock_kernels:
            use_fused_kernels(pipe.unet, False)
            use_fused_kernels(pipe.vae, False)
        if args.compile:
            mine_pipe.compile(args.compile)
        _warm_up(pipe, mine_pipe, models.resolution, settings, frames, args)
        for count in frames:
            inputs = make_inputs(pipe, models.resolution, count, settings, args.seed)
            phases: dict[str, float] = {}
            mine, wall, cpu, peak = timed(lambda: ours(mine_pipe, inputs, settings, phases), device)
            print(f"  ours: {count / wall:.3f} f/s, peak {_gib(peak)} GiB;" + _phase_line(phases, count, settings)
                  + f"; GEGLU: {'formula (--stock-kernels)' if args.stock_kernels else geglu_kernel_state(device)}",
                  flush=True)
            if args.compile:
                _, eager_decode, _, _ = timed(lambda: _frames_summary(pipe.decode(mine[0], settings.decode_chunk_size,
                                                                                  _kept(count, settings))), device)
                print(f"  the same latents through the eager decoder: {eager_decode:.2f} s", flush=True)
            row = f"{dtype_name:5s} {count:6d} | {count / wall:9.3f} "
            if count <= args.skip_baseline_above:
                theirs, b_wall, b_cpu, b_peak = timed(lambda: baseline(pipe, inputs, settings), device)
                diff = _max_difference(mine, theirs, count)
                within = diff <= TOLERANCE[dtype_name]
                over += [] if within else [f"{dtype_name} at {count} frames: {diff:.2e}"]
                row += (f"{count / b_wall:9.3f} {b_wall / wall:7.2f}x | {cpu:10.1f} {b_cpu:10.1f} | "
                        f"{_gib(peak):>8s} {_gib(b_peak):>8s} | {diff:.2e} {'within' if within else 'OVER'} "
                        f"{TOLERANCE[dtype_name]:.0e}")
            else:
                row += f"{'-':>9s} {'-':>8s} | {cpu:10.1f} {'-':>10s} | {_gib(peak):>8s} {'-':>8s} |"
            print(row, flush=True)
        models = pipe = mine_pipe = None  # the next dtype's modules are built with these freed
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if over:
        sys.exit(f"ours differs from the baseline beyond its dtype's tolerance (TOLERANCE): {'; '.join(over)}")


def _warm_up(pipe: HunyuanPipeline, mine_pipe: HunyuanPipeline, resolution: int, settings: SamplingSettings,
             frames: list[int], args: argparse.Namespace) -> None:
    """One untimed one-step run of each path, so library set-up, cuDNN autotuning and compilation
    stay out of every timed row. The UNet compiles once per call shape (windows in the call), so
    ours warms up on the shortest lengths whose calls hold every shape the timed lengths need (each
    shape costs minutes to compile cold); the eager decoder and the baseline's pose guider (one
    shape per length) choose their convolution algorithms here too."""
    short = dataclasses.replace(settings, num_steps=1)
    lengths, covered = [], set()
    for count in sorted(frames):
        sizes = _call_sizes(count, settings)
        if not sizes <= covered:
            lengths.append(count)
            covered |= sizes
    wall = 0.0
    for count in lengths:
        inputs = make_inputs(pipe, resolution, count, short, args.seed)
        (latents, _), seconds, _, _ = timed(lambda: ours(mine_pipe, inputs, short), pipe.device)
        wall += seconds
    if args.compile:
        print(f"ours warm-up with torch.compile: {wall:.1f} s", flush=True)
        with torch.no_grad():  # the eager decoder's row chooses its convolution algorithms here
            _frames_summary(pipe.decode(latents[:, :settings.decode_chunk_size], settings.decode_chunk_size))
    if settings.frames_per_window <= args.skip_baseline_above:
        inputs = make_inputs(pipe, resolution, settings.frames_per_window, short, args.seed)
        baseline(pipe, inputs, short)
    with torch.no_grad():  # the baseline's pose guider runs on all padded frames at once: a shape per length
        for count in frames:
            if count <= args.skip_baseline_above:
                pipe.pose_guider(torch.zeros(1, 3, count + 2 * settings.pad_frames, resolution, resolution,
                                             device=pipe.device, dtype=pipe.dtype))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _kept(frames: int, settings: SamplingSettings) -> range:
    """The video's frames among the padded ones."""
    return range(settings.pad_frames, settings.pad_frames + frames)


def _windows(frames: int, settings: SamplingSettings) -> int:
    return len(window_indices(frames + 2 * settings.pad_frames, settings.frames_per_window, settings.overlap, 0))


def _call_sizes(frames: int, settings: SamplingSettings) -> set[int]:
    """The windows per UNet call that a video of `frames` makes (the last call may hold fewer)."""
    windows, per_call = _windows(frames, settings), settings.windows_per_call
    return {min(per_call, windows - first) for first in range(0, windows, per_call)}


def _phase_line(phases: dict[str, float], frames: int, settings: SamplingSettings) -> str:
    """Ours' phases, with the denoising per UNet call (the windows of a step are the same for every shift)."""
    calls = settings.num_steps * -(-_windows(frames, settings) // settings.windows_per_call)
    return (f" phases: reference {phases['reference']:.2f} s, denoising {phases['denoising']:.1f} s "
            f"({calls} UNet calls, {1000 * phases['denoising'] / calls:.1f} ms each), "
            f"decoding {phases['decoding']:.2f} s")


def _max_difference(ours_result: tuple, baseline_result: tuple, frames: int) -> float:
    """Largest difference of the final latents, the first frame and the mean frame."""
    (latents, summary), (base_latents, base_summary) = ours_result, baseline_result
    return max((latents.float() - base_latents.float()).abs().max().item(),
               (summary[0] - base_summary[0]).abs().max().item(),
               ((summary[1] - base_summary[1]) / frames).abs().max().item())


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
