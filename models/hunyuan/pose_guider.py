"""Pose guider: a small frame-wise conv net from pose images to a UNet-input-sized feature (SPEC 5)."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F


class PoseGuider(ModelMixin, ConfigMixin):
    """[B, 3, F, H, W] pose images in [0, 1] -> [B, C, F, H/2^k, W/2^k], k = len(block_out_channels) - 1.

    Keys match `pose_guider.pth`: `conv_in`, `blocks.{i}` (pairs of a same-width conv and a
    stride-2 widening conv), `conv_out`. Every conv but `conv_out` is followed by SiLU.
    """

    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for width, next_width in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(width, width, 3, padding=1))
            self.blocks.append(nn.Conv2d(width, next_width, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, 3, padding=1)

    def forward(self, pose_images: torch.Tensor) -> torch.Tensor:
        batch, _, frames = pose_images.shape[:3]
        x = pose_images.transpose(1, 2).flatten(0, 1)
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        x = self.conv_out(x)
        return x.unflatten(0, (batch, frames)).transpose(1, 2)
