"""HeadExpression: a GroupNorm ResNet-50 from a driving face crop to a 512-d expression feature (SPEC 3.2)."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

EXPANSION = 4
STAGE_WIDTHS = (64, 128, 256, 512)


def _norm(channels: int) -> nn.GroupNorm:
    """One group: normalised over C*H*W, with a per-channel affine."""
    return nn.GroupNorm(1, channels, eps=1e-5)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (the stride sits on the 3x3 conv); keys conv1..3, gn1..3, downsample."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.gn1 = _norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.gn2 = _norm(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.gn3 = _norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(self.gn3(self.conv3(y)) + shortcut)


class ResNet50GN(nn.Module):
    def __init__(self, num_outputs: int, blocks_per_stage: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.gn1 = _norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (width, count) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage)):
            blocks = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(Bottleneck(in_channels, width, stride))
                in_channels = width * EXPANSION
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(in_channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.gn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class HeadExpression(ModelMixin, ConfigMixin):
    """[n, 3, 256, 256] face crops in [0, 1] -> [n, num_outputs]; keys match `expression.pth` (`resnet50.*`)."""

    @register_to_config
    def __init__(self, num_outputs: int = 512, blocks_per_stage: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.resnet50 = ResNet50GN(num_outputs, tuple(blocks_per_stage))

    def forward(self, face_images: torch.Tensor) -> torch.Tensor:
        return self.resnet50(face_images)
