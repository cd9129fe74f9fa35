"""HunyuanPortrait sampling with memory bounded by the windows of one UNet call, not by the video.

Only the whole video's latents (in the model's dtype, as the release keeps them: 32 KB per frame
at 512² in fp16) live on the device; overlapping windows are averaged into them in place, with side
sums only for the frames whose windows are not all done. Motion tokens wait on the host and
travel per window, pose features are computed per window (or once, for the release's all-black
pose input), and frames are decoded chunk by chunk.

Algorithm (SPEC 8): per step, windows of K frames start every K - overlap frames, moved back by a
shift that grows by `shift_offset` each step and wraps around the video; each window is denoised
with 3-way guidance (unconditional / appearance only / full) and one Euler step, and overlapping
results are averaged.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder
from torch import nn
from torch._dynamo.exc import TorchDynamoException

from portraitflow.models.hunyuan.conditions import appearance_tokens
from portraitflow.models.hunyuan.dino import DinoV2WithIdAdapters
from portraitflow.models.hunyuan.fused import substitute_fused_kernels
from portraitflow.models.hunyuan.image_proj import ImageProjector
from portraitflow.models.hunyuan.pose_guider import PoseGuider
from portraitflow.models.hunyuan.sampler import (
    euler_v_step,
    guidance_scales,
    karras_schedule,
    next_shift,
    scale_model_input,
    window_indices,
)
from portraitflow.models.hunyuan.unet import HunyuanUNet

#: the release scales the initial latent by this constant, not by the VAE config (SPEC 6).
INITIAL_LATENT_SCALE = 0.18215
logger = logging.getLogger(__name__)

#: seed of the release's `seed_everything`, our default. The release's noise comes from CUDA's
#: default generator after other draws (SPEC 8); ours from a CPU generator frame by frame
#: (`initial_latents`), so the same seed gives the same video on any device, not the release's.
RELEASE_SEED = 72580


@dataclass(frozen=True)
class SamplingSettings:
    """The release's `HunyuanLongSVDPipeline.__call__` arguments and `inference.py` padding."""

    num_steps: int = 25
    frames_per_window: int = 25
    overlap: int = 3
    shift_offset: int = 3
    pad_frames: int = 15
    fps: float = 12.5
    motion_bucket_id: float = 0.0
    noise_aug_strength: float = 0.0
    appearance_scale: tuple[float, float] = (2.0, 2.0)  # (first step, last step), linear in between
    motion_scale: tuple[float, float] = (2.0, 2.0)
    decode_chunk_size: int = 8
    seed: int = RELEASE_SEED
    #: when both scales are equal at a step, the appearance-only branch cancels out of the
    #: guidance formula: run 2 branches instead of 3 (equal up to rounding).
    skip_redundant_branch: bool = True
    #: windows of a step denoised in one UNet call. The windows of a step all read the step's
    #: input, so batching them is exact; it trades device memory (one window's activations each)
    #: for larger, more efficient kernels. The release runs one.
    windows_per_call: int = 1


@dataclass
class ReferenceFeatures:
    """What a job computes once from its reference image."""

    image_tokens: torch.Tensor  # [1, 64, D] appearance tokens, model dtype
    mean: torch.Tensor  # [1, 4, h, w] VAE mean of the reference (encode A, scaled into the initial latent)
    latent: torch.Tensor  # [1, 4, h, w] the UNet's reference condition (encode B, unscaled), float32


class PaddedMotion:
    """Motion tokens of the video frames (on the host) seen as the padded sequence of N = T + 2P.

    Front pad i is (i / P) x frame 0's tokens, back pad i is (1 - i / P) x the last frame's (SPEC 3.6).
    """

    def __init__(self, tokens: torch.Tensor, pad_frames: int) -> None:
        self.tokens = tokens  # [T, L, D]
        self.pad = pad_frames

    def __len__(self) -> int:
        return len(self.tokens) + 2 * self.pad

    def __call__(self, indices: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[K, L, D] tokens of padded frames `indices`."""
        video = len(self.tokens)
        source = (indices - self.pad).clamp(0, video - 1)
        weight = torch.ones(len(indices), dtype=torch.float32)
        front = indices < self.pad
        back = indices >= self.pad + video
        weight[front] = indices[front].float() / self.pad
        weight[back] = 1 - (indices[back] - self.pad - video).float() / self.pad
        tokens = (self.tokens[source].float() * weight[:, None, None]).to(dtype)
        return to_device(tokens, device)


PoseSource = Callable[[torch.Tensor], torch.Tensor]  # padded frame indices [K] -> [1, K or 1, C0, h, w]


class HunyuanPipeline:
    """Holds the denoising modules once; `encode_reference`, `sample` and `decode` serve many jobs."""

    def __init__(
        self,
        unet: HunyuanUNet,
        vae: AutoencoderKLTemporalDecoder,
        pose_guider: PoseGuider,
        image_encoder: DinoV2WithIdAdapters,
        image_proj: ImageProjector,
        scheduler_config: dict | None = None,
    ) -> None:
        self.unet = unet
        self.vae = vae
        substitute_fused_kernels(vae)  # the UNet substitutes its own
        self.pose_guider = pose_guider
        self.image_encoder = image_encoder
        self.image_proj = image_proj
        self.scheduler_config = scheduler_config
        self._black_pose: dict[tuple, torch.Tensor] = {}
        self._compiled_unet: Callable | None = None
        self._compiled_decode: Callable | None = None
        #: what outputs' metadata says of compilation: off, the mode, or why it fell back to eager
        self.compiled = "off"

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def compile(self, mode: str = "default") -> None:
        """Run the UNet and the VAE decoder under `torch.compile`, which fuses their norms,
        activations and residual adds (half of the eager UNet call's kernel time): 1.46x per UNet
        call in fp16 on an H200; on an H100, 250 frames decode in 3.95 s instead of 10.0. Window shapes are
        fixed, so the UNet compiles once per branch count and windows per call; the decoder
        compiles for full chunks only (a shorter last chunk runs eagerly: each length would
        compile anew for a few frames). The first job pays for it."""
        self._compiled_unet = torch.compile(self.unet, mode=mode, dynamic=False)
        self._compiled_decode = torch.compile(self.vae.decode, mode=mode, dynamic=False)
        self.compiled = mode

    def _compiled_or_eager(self, compiled: Callable | None, eager: Callable, *args: Any, **kwargs: Any) -> Any:
        """The compiled call; if compilation fails (no compiler tool chain, say), both parts run
        eagerly from then on. A failed compilation has run nothing, so the result is the eager one."""
        if compiled is None:
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as error:
            logger.warning("torch.compile failed; the UNet and the decoder run eagerly from now on: %s", error)
            self._compiled_unet = self._compiled_decode = None
            self.compiled = f"failed, eager ({type(error).__name__})"
            return eager(*args, **kwargs)

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "pose_guider": self.pose_guider,
                "image_encoder": self.image_encoder, "image_proj": self.image_proj}

    # -- once per job ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode_reference(self, vae_image: torch.Tensor, dino_image: torch.Tensor, identity: torch.Tensor,
                         noise_aug_strength: float = 0.0, seed: int = RELEASE_SEED) -> ReferenceFeatures:
        """vae_image [1, 3, H, W] in [-1, 1]; dino_image [1, 3, 224, 224] ImageNet-normalised; identity [1, 512].

        The release encodes the reference twice (SPEC 6); the condition's encode sees the image plus
        `noise_aug_strength` x noise, so without augmentation (the release's 0) one encode serves both.
        """
        encoder_dtype = self.vae.encoder.conv_in.weight.dtype
        image = vae_image.to(self.device, encoder_dtype)
        mean = latent = self.vae.encode(image).latent_dist.mean.float()
        if noise_aug_strength:  # a stream of its own: `seed` draws the initial latents' noise
            generator = torch.Generator().manual_seed((seed + 1) % 2**64)
            noise = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(self.device)
            latent = self.vae.encode(image + noise_aug_strength * noise).latent_dist.mode().float()
        image_tokens = appearance_tokens(self.image_encoder, self.image_proj, dino_image, identity)
        return ReferenceFeatures(image_tokens=image_tokens.to(self.dtype), mean=mean, latent=latent)

    @torch.no_grad()
    def black_pose_features(self, height: int, width: int) -> PoseSource:
        """The release's pose input is all black: its feature is one constant frame, computed once."""
        key = (height, width, self.device, self.dtype)
        if key not in self._black_pose:
            black = torch.zeros(1, 3, 1, height, width, device=self.device, dtype=self.pose_guider.conv_in.weight.dtype)
            self._black_pose[key] = self.pose_guider(black).transpose(1, 2).to(self.dtype)  # [1, 1, C0, h, w]
        feature = self._black_pose[key]
        return lambda indices: feature

    def pose_image_features(self, pose_images: torch.Tensor) -> PoseSource:
        """Pose features of padded pose images [N, 3, H, W] in [0, 1] (kept where they are), per window."""
        weight_dtype = self.pose_guider.conv_in.weight.dtype

        @torch.no_grad()
        def features(indices: torch.Tensor) -> torch.Tensor:
            window = pose_images[indices.to(pose_images.device)].to(self.device, weight_dtype)
            return self.pose_guider(window.transpose(0, 1)[None]).transpose(1, 2).to(self.dtype)

        return features

    # -- denoising --------------------------------------------------------------------------------

    def initial_latents(self, reference: ReferenceFeatures, num_frames: int, noise: torch.Tensor | None,
                        settings: SamplingSettings, sigma_max: float) -> torch.Tensor:
        """0.18215 x reference mean + sigma_0 x noise, [1, N, 4, h, w] in the model's dtype.

        Without `noise`, frame i's noise is the i-th draw of a CPU generator seeded with
        `settings.seed`: the same on any device and for any video length, and made frame by frame
        into the latents, so no float32 copy of the whole video's noise is ever on the device.
        """
        frame_shape = reference.latent.shape[1:]
        base = reference.mean[0] * INITIAL_LATENT_SCALE
        latents = torch.empty((1, num_frames, *frame_shape), device=self.device, dtype=self.dtype)
        generator = torch.Generator().manual_seed(settings.seed)
        for frame in range(num_frames):
            drawn = torch.randn(frame_shape, generator=generator) if noise is None else noise[0, frame]
            latents[0, frame] = base + drawn.to(self.device, torch.float32) * sigma_max
        return latents

    @torch.no_grad()
    def sample(
        self,
        reference: ReferenceFeatures,
        motion: PaddedMotion,
        pose: PoseSource,
        settings: SamplingSettings = SamplingSettings(),
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final latents [1, N, 4, h, w] of the padded video (N = len(motion)), in the model's dtype."""
        num_frames = len(motion)
        schedule = karras_schedule(settings.num_steps, self.scheduler_config)
        sigmas = schedule.sigmas.tolist()
        appearance = guidance_scales(*settings.appearance_scale, settings.num_steps)
        motion_scales = guidance_scales(*settings.motion_scale, settings.num_steps)
        latents = self.initial_latents(reference, num_frames, noise, settings, sigmas[0])
        time_ids = torch.tensor([[settings.fps, settings.motion_bucket_id, settings.noise_aug_strength]],
                                device=self.device, dtype=self.dtype)
        timesteps = schedule.timesteps.to(self.device)
        window = settings.frames_per_window
        shift = 0
        for step in range(settings.num_steps):
            sigma, sigma_next = sigmas[step], sigmas[step + 1]
            g_appearance, g_motion = appearance[step], motion_scales[step]
            three_way = not (settings.skip_redundant_branch and g_appearance == g_motion)
            windows = window_indices(num_frames, window, settings.overlap, shift)
            average = _OverlapAverage(latents, windows)
            for first in range(0, len(windows), settings.windows_per_call):
                group = range(first, min(first + settings.windows_per_call, len(windows)))
                x = torch.cat([average.window_latents(index) for index in group])
                motion_tokens = torch.stack([motion(windows[index], self.device, self.dtype) for index in group])
                poses = [pose(windows[index]) for index in group]
                pose_features = poses[0] if all(p is poses[0] for p in poses) else torch.cat(poses)  # one constant, or per window
                v = self._guided_v(reference, x, sigma, timesteps[step], motion_tokens, pose_features, time_ids,
                                   g_appearance, g_motion, three_way)
                x_next = euler_v_step(x, v, sigma, sigma_next)
                for row, index in enumerate(group):
                    average.add(index, x_next[row:row + 1])
            shift = next_shift(shift, settings.shift_offset, window)
        return latents

    def _guided_v(self, reference: ReferenceFeatures, x: torch.Tensor, sigma: float, timestep: torch.Tensor,
                  motion_tokens: torch.Tensor, pose_features: torch.Tensor, time_ids: torch.Tensor,
                  g_appearance: float, g_motion: float, three_way: bool) -> torch.Tensor:
        """Guided v-prediction [G, K, 4, h, w] of G windows x [G, K, 4, h, w] with motion tokens
        [G, K, L, D] and pose features [1 or G, 1 or K, C0, h, w], in one UNet call whose batch is
        branch-major: [uncond x G, (appearance only x G,) full x G]. The unconditional items' tokens
        are zeros, so the UNet skips their cross-attention (exactly)."""
        windows, frames = x.shape[:2]
        branches = 3 if three_way else 2
        ref_latent = reference.latent.to(self.dtype)[:, None]
        ref_latents = torch.cat([torch.zeros_like(ref_latent).expand(windows, frames, -1, -1, -1),
                                 ref_latent.expand((branches - 1) * windows, frames, -1, -1, -1)])
        noisy = scale_model_input(x, sigma).to(self.dtype).repeat(branches, 1, 1, 1, 1)
        sample = torch.cat([noisy, ref_latents], dim=2)
        tokens = reference.image_tokens
        image = torch.cat([torch.zeros_like(tokens).expand(windows, -1, -1),
                           tokens.expand((branches - 1) * windows, -1, -1)])
        motion = torch.cat([motion_tokens.new_zeros(((branches - 1) * windows, *motion_tokens.shape[1:])), motion_tokens])
        if pose_features.shape[0] > 1:
            pose_features = pose_features.repeat(branches, 1, 1, 1, 1)
        if self._compiled_unet is not None:  # under CUDA graphs the last call's output may be reused (eager: no
            torch.compiler.cudagraph_mark_step_begin()  # graphs, and the call imported the compiler, 1.7 s)
        v = self._compiled_or_eager(self._compiled_unet, self.unet, sample, timestep, image, motion,
                                    time_ids.expand(branches * windows, -1), pose_features,
                                    unconditional=windows).float()
        if three_way:
            v_uncond, v_appearance, v_full = v.chunk(3)
            return v_uncond + g_appearance * (v_appearance - v_uncond) + g_motion * (v_full - v_appearance)
        v_uncond, v_full = v.chunk(2)
        return v_uncond + g_motion * (v_full - v_uncond)

    # -- decoding ---------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk_size: int, keep: range | None = None) -> Iterator[torch.Tensor]:
        """The frames in `keep` (default all) [k, 3, H, W] float32 in about [-1, 1], chunk by chunk.
        Each chunk is decoded as its own clip on the release's chunk boundaries, so a kept frame is
        the same as in a whole decode; chunks with no kept frame (all padding) are not decoded."""
        decoder_dtype = self.vae.decoder.conv_in.weight.dtype
        scale = self.vae.config.scaling_factor
        keep = range(latents.shape[1]) if keep is None else keep
        for start in range(0, latents.shape[1], chunk_size):
            stop = min(start + chunk_size, latents.shape[1])
            first, last = max(start, keep.start), min(stop, keep.stop)
            if first >= last:
                continue
            chunk = latents[0, start:stop] / scale
            compiled = self._compiled_decode if len(chunk) == chunk_size else None
            frames = self._compiled_or_eager(compiled, self.vae.decode, chunk.to(decoder_dtype),
                                             num_frames=len(chunk)).sample
            yield frames[first - start:last - start].float()


class _OverlapAverage:
    """Writes each frame's mean over the windows of one step into the latents, in place.

    A frame is written once its last window is done, so every window reads the step's input
    values; until then its running float32 sum waits here (the overlaps and the wrap-around: at
    most about one window of frames), instead of a second whole-video accumulator. The step's
    indices reach the device in one transfer, so no window waits on the host.
    """

    def __init__(self, latents: torch.Tensor, windows: list[torch.Tensor]) -> None:
        self.latents = latents
        counts = torch.bincount(torch.cat(windows), minlength=latents.shape[1]).tolist()
        seen = [0] * latents.shape[1]
        #: per window, (row, frame, windows of that frame if this window finishes it, else 0)
        self.plan: list[list[tuple[int, int, int]]] = []
        finished: list[int] = []
        self.finished_slices: list[slice] = []
        for frames in windows:
            rows = []
            for row, frame in enumerate(frames.tolist()):
                seen[frame] += 1
                rows.append((row, frame, counts[frame] if seen[frame] == counts[frame] else 0))
            self.plan.append(rows)
            done = [frame for _, frame, count in rows if count]
            self.finished_slices.append(slice(len(finished), len(finished) + len(done)))
            finished += done
        device = latents.device
        self.window_frames = to_device(torch.stack(windows), device)
        self.finished_frames = to_device(torch.tensor(finished, dtype=torch.long), device)
        self.sums: dict[int, torch.Tensor] = {}

    def window_latents(self, index: int) -> torch.Tensor:
        """[1, K, ...] latents of window `index`, as the step began."""
        return self.latents[:, self.window_frames[index]]

    def add(self, index: int, x_next: torch.Tensor) -> None:
        """Fold window `index`'s results x_next [1, K, ...] (float32)."""
        values = []
        for row, frame, count in self.plan[index]:
            value = x_next[:, row]
            if frame in self.sums:
                value = self.sums.pop(frame) + value
            if count:
                values.append(value / count)
            else:
                self.sums[frame] = value
        if values:
            index_tensor = self.finished_frames[self.finished_slices[index]]
            self.latents.index_copy_(1, index_tensor, torch.stack(values, dim=1).to(self.latents.dtype))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without stalling the host: on CUDA it is pinned and copied
    asynchronously, so the next window is queued while the GPU still works on this one."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def dino_input(crop: torch.Tensor) -> torch.Tensor:
    """[1, 3, S, S] in [0, 1] -> [1, 3, 224, 224] ImageNet-normalised (bilinear, antialiased; SPEC 2)."""
    resized = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406], device=crop.device)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device=crop.device)[:, None, None]
    return (resized - mean) / std
