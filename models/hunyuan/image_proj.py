"""Image projector: DINO tokens -> the UNet's appearance tokens (SPEC 4.2)."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F


class ImageProjector(ModelMixin, ConfigMixin):
    """A Linear over the token axis: [B, 261, D] -> [B, 64, D].

    The weight and bias sit at the top level (keys `weight`, `bias`) because `image_proj.pth`
    holds the bare state dict of the official inner Linear.
    """

    @register_to_config
    def __init__(self, num_input_tokens: int = 261, num_output_tokens: int = 64) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_output_tokens, num_input_tokens))
        self.bias = nn.Parameter(torch.empty(num_output_tokens))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        nn.init.uniform_(self.bias, -num_input_tokens**-0.5, num_input_tokens**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(tokens.transpose(1, 2), self.weight, self.bias).transpose(1, 2)
