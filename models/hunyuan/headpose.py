"""HeadPose: a GroupNorm ResNet-18 from a driving head crop to rotation and translation (SPEC 3.3)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

STAGE_WIDTHS = (64, 128, 256, 512)
GROUPS = 32


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-5)


class BasicBlock(nn.Module):
    """Two 3x3 convs; keys conv1, bn1, conv2, bn2 (GroupNorms despite the name) and `shortcut`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class ResNet18GN(nn.Module):
    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, width in enumerate(STAGE_WIDTHS):
            stride = 1 if index == 0 else 2
            stage = nn.Sequential(BasicBlock(in_channels, width, stride), BasicBlock(width, width, 1))
            self.add_module(f"layer{index + 1}", stage)
            in_channels = width
        self.fc = nn.Linear(in_channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class HeadPoseOutput(NamedTuple):
    rotation: torch.Tensor  # [n, 3] degrees in (-180, 180)
    translation: torch.Tensor  # [n, 3] in (-2, 2); the release multiplies it by 0 before use


class HeadPose(ModelMixin, ConfigMixin):
    """Head rotation and translation; keys match `headpose.pth` (`head_pose_net.*`).

    Takes the network input as the release feeds it: `headpose_input(pose_image)`, i.e. the
    [0, 1] head crop times 2 plus 1 (a quirk of the release, reproduced on purpose).
    """

    @register_to_config
    def __init__(self) -> None:
        super().__init__()
        self.head_pose_net = ResNet18GN(6)

    def forward(self, net_input: torch.Tensor) -> HeadPoseOutput:
        raw = self.head_pose_net(net_input)
        return HeadPoseOutput(
            rotation=torch.sigmoid(raw[:, :3]) * 360.0 - 180.0,
            translation=torch.sigmoid(raw[:, 3:]) * 4.0 - 2.0,
        )


def headpose_input(pose_images: torch.Tensor) -> torch.Tensor:
    """The release feeds HeadPose `image * 2 + 1` (range [1, 3]) for [0, 1] head crops; so do we."""
    return pose_images * 2.0 + 1.0
