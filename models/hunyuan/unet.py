"""HunyuanPortrait's denoiser: diffusers' stock SVD-XT UNet plus three small additions.

The additions are made with the hooks diffusers offers instead of a forked copy of the network:
- every cross-attention layer (`attn2`, 16 spatial + 16 temporal) gets an `IPAttnProcessor` that
  attends over the appearance tokens with the layer's own K/V and over the motion tokens with the
  adapter K/V (`processor.to_k_ip.0` / `processor.to_v_ip.0`), and sums the two;
- the temporal layers see the *mean over the window's frames* of each context stream (stock SVD
  takes frame 0);
- the pose-guider feature is added to the `conv_in` output by a forward hook.

On CUDA its feed-forward GEGLUs and temporal convolutions run as fused kernels that compute the
same sums (`fused.substitute_fused_kernels`; the state dict's keys stay).

The contexts reach the processors through a `ConditionSlot` that `HunyuanUNet.forward` fills for
the duration of one call. Batch items whose contexts are all zero (the guidance's unconditional
branch) skip cross-attention: attention over all-zero keys and values is exactly zero, so their
output is the output projection's bias. The stock forward is given a [B, 1, 1] placeholder as
`encoder_hidden_states`, so it never materialises the per-position temporal context (the stock
block and the release both copy it h*w times, about 1.6 GB per block at 512² in fp16).
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from portraitflow.models.hunyuan.fused import substitute_fused_kernels

#: diffusers layout of stabilityai/stable-video-diffusion-img2vid-xt `unet/config.json`.
SVD_XT_UNET_CONFIG: dict = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ],
    "up_block_types": [
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 25,
}

#: a small configuration with the same structure, for CPU tests and `--tiny` runs.
TINY_UNET_CONFIG: dict = {
    **SVD_XT_UNET_CONFIG,
    "sample_size": 16,
    "block_out_channels": [32, 32, 32, 32],
    "addition_time_embed_dim": 32,
    "projection_class_embeddings_input_dim": 96,
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "num_attention_heads": [1, 1, 1, 1],
    "num_frames": 8,
}


@dataclass
class _Contexts:
    spatial_image: torch.Tensor  # [B, L, D] (shared by the frames of a batch item) or [B*F, L, D]
    spatial_motion: torch.Tensor  # [B*F, L, D]
    temporal_image: torch.Tensor  # [B, L, D] frame mean
    temporal_motion: torch.Tensor  # [B, L, D] frame mean
    pose: torch.Tensor | None  # [Bp, Fp, C0, h, w], broadcast to [B, F, C0, h, w]
    frames: int
    batch: int
    unconditional: int  # leading batch items whose image and motion tokens are all zero

    def conditioned_part(self, context: torch.Tensor) -> torch.Tensor:
        """The rows of a per-item tensor (contexts, queries) that belong to conditioned batch items."""
        return context[self.unconditional * (context.shape[0] // self.batch):]


class ConditionSlot:
    """Holds the conditions of the UNet call in progress; the processors and the hook read it."""

    def __init__(self) -> None:
        self.contexts: _Contexts | None = None
        #: copy each context once per query row before projecting it, as the release does (the
        #: benchmark's baseline); off, rows that share a context attend in one folded batch.
        self.repeat_contexts = False

    def current(self) -> _Contexts:
        if self.contexts is None:
            raise RuntimeError("HunyuanUNet sub-modules were called outside HunyuanUNet.forward")
        return self.contexts


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head SDPA of queries [R, S, C] over a context [Bc, L, C] where row r uses context r // (R / Bc).

    Rows that share a context are folded into one longer query sequence (exact: each query attends
    independently), so the context is never copied per row.
    """
    rows, length, channels = query.shape
    group = rows // key.shape[0]
    head_dim = channels // heads
    q = query.reshape(key.shape[0], group * length, heads, head_dim).transpose(1, 2)
    k = key.reshape(key.shape[0], -1, heads, head_dim).transpose(1, 2)
    v = value.reshape(value.shape[0], -1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(rows, length, channels)


class IPAttnProcessor(nn.Module):
    """Cross-attention over appearance tokens (the layer's K/V) plus motion tokens (adapter K/V).

    out = to_out(SDPA(q, K·img, V·img) + SDPA(q, K_ip·motion, V_ip·motion)); the `to_k_ip.0` /
    `to_v_ip.0` names match the official checkpoint.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, slot: ConditionSlot, temporal: bool) -> None:
        super().__init__()
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.temporal = temporal
        self._slot = slot  # a plain object, not a sub-module

    def forward(self, attn: Attention, hidden_states: torch.Tensor, **_: object) -> torch.Tensor:
        contexts = self._slot.current()
        if self.temporal:
            image, motion = contexts.temporal_image, contexts.temporal_motion
        else:
            image, motion = contexts.spatial_image, contexts.spatial_motion
        if self._slot.repeat_contexts:  # the release's cost: one copy per row, each projected
            rows = hidden_states.shape[0]
            image = image.repeat_interleave(rows // image.shape[0], dim=0)
            motion = motion.repeat_interleave(rows // motion.shape[0], dim=0)
        conditioned = contexts.conditioned_part(hidden_states)
        skipped = len(hidden_states) - len(conditioned)
        query = attn.to_q(conditioned)
        image, motion = contexts.conditioned_part(image), contexts.conditioned_part(motion)
        out = _attend(query, attn.to_k(image), attn.to_v(image), attn.heads)
        out = out + _attend(query, self.to_k_ip[0](motion), self.to_v_ip[0](motion), attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if not skipped:
            return out
        bias = attn.to_out[1](attn.to_out[0](out.new_zeros(1, 1, out.shape[-1])))
        return torch.cat([bias.expand(skipped, out.shape[1], -1), out])


class BatchSplitSelfAttention(AttnProcessor2_0):
    """diffusers' self-attention, in batches of at most `MAX_BATCH` sequences.

    CUDA launches SDPA's kernels with the batch on a grid axis of at most 65535 blocks. A temporal
    layer attends over frames with one sequence per pixel and batch item (4096 per item at 512²),
    so a UNet call of more than 15 items (7 windows of 2 guidance branches, 5 of 3) would exceed
    it; each sequence attends alone, so the split is exact. The UNet's self-attention takes no
    mask, context or `temb`; a split call refuses them rather than split them wrongly.
    """

    MAX_BATCH = 65535

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: object, **kwargs: object) -> torch.Tensor:
        attend = super().__call__
        if hidden_states.shape[0] <= self.MAX_BATCH:
            return attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None or attention_mask is not None or temb is not None:
            raise ValueError("BatchSplitSelfAttention splits self-attention without a mask, context or temb only")
        return torch.cat([attend(attn, part, *args, **kwargs) for part in hidden_states.split(self.MAX_BATCH)])


class HunyuanUNet(UNetSpatioTemporalConditionModel):
    """`UNetSpatioTemporalConditionModel` with HunyuanPortrait's IP attention and pose input.

    Its state dict is the official `unet.pth` layout: the 1428 stock keys plus 64 adapter keys.
    Build with `HunyuanUNet.from_config(config)` (a diffusers UNet `config.json`) or
    `HunyuanUNet(**arguments)`.
    """

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.condition_slot = ConditionSlot()
        cross_dim = config.get("cross_attention_dim", 1024)
        for name, module in self.named_modules():
            if isinstance(module, Attention) and name.endswith(".attn2"):
                temporal = ".temporal_transformer_blocks." in name
                module.set_processor(IPAttnProcessor(module.inner_dim, cross_dim, self.condition_slot, temporal))
            elif isinstance(module, Attention) and name.endswith(".attn1"):
                module.set_processor(BatchSplitSelfAttention())
        substitute_fused_kernels(self)
        self.conv_in.register_forward_hook(self._add_pose_features)

    # diffusers' from_config/from_pretrained take the constructor's arguments from its signature
    __init__.__signature__ = inspect.signature(UNetSpatioTemporalConditionModel.__init__)  # type: ignore[attr-defined]

    def _add_pose_features(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        pose = self.condition_slot.current().pose
        if pose is None:
            return output
        frames = self.condition_slot.current().frames
        shaped = output.unflatten(0, (-1, frames))
        return (shaped + pose.to(output.dtype)).flatten(0, 1)

    @contextmanager
    def _conditioned(self, contexts: _Contexts) -> Iterator[None]:
        self.condition_slot.contexts = contexts
        try:
            yield
        finally:
            self.condition_slot.contexts = None

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        image_tokens: torch.Tensor,
        motion_tokens: torch.Tensor,
        added_time_ids: torch.Tensor,
        pose_features: torch.Tensor | None = None,
        unconditional: int = 0,
    ) -> torch.Tensor:
        """v-prediction [B, F, 4, h, w].

        sample: [B, F, 8, h, w] (scaled noisy latent | reference latent); image_tokens: [B, L, D]
        shared by all frames of a batch item, or [B, F, L, D]; motion_tokens: [B, F, L, D];
        pose_features: [B or 1, F or 1, C0, h, w] added after conv_in; unconditional: how many
        leading batch items have all-zero image and motion tokens (their cross-attention is skipped).
        """
        batch, frames = sample.shape[:2]
        if not 0 <= unconditional <= batch:
            raise ValueError(f"unconditional={unconditional} is not between 0 and the batch size {batch}")
        dtype = sample.dtype
        image_tokens = image_tokens.to(dtype)
        motion_tokens = motion_tokens.to(dtype)
        if image_tokens.dim() == 4:
            temporal_image = image_tokens.mean(dim=1)
            spatial_image = image_tokens.flatten(0, 1)
        else:
            temporal_image = spatial_image = image_tokens
        contexts = _Contexts(
            spatial_image=spatial_image,
            spatial_motion=motion_tokens.flatten(0, 1),
            temporal_image=temporal_image,
            temporal_motion=motion_tokens.mean(dim=1),
            pose=pose_features,
            frames=frames,
            batch=batch,
            unconditional=unconditional,
        )
        placeholder = sample.new_zeros(batch, 1, 1)
        with self._conditioned(contexts):
            return super().forward(sample, timestep, placeholder, added_time_ids.to(dtype), return_dict=False)[0]
