"""Intensity-aware motion refiner: expression features -> 64 motion tokens per frame (SPEC 3.4)."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from portraitflow.models.hunyuan.buckets import NUM_BUCKETS


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine whose shift and scale come from the intensity vector."""

    def __init__(self, width: int, intensity_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(intensity_dim, 2 * width)

    def forward(self, x: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(intensity)).unsqueeze(1).chunk(2, dim=-1)
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


class SquaredReluMLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class PerceiverBlock(nn.Module):
    """Queries attend to [themselves, the frame token], then an MLP; every norm is AdaLN."""

    def __init__(self, width: int, heads: int, intensity_dim: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = SquaredReluMLP(width)
        self.ln_1 = AdaLayerNorm(width, intensity_dim)
        self.ln_2 = AdaLayerNorm(width, intensity_dim)
        self.ln_ff = AdaLayerNorm(width, intensity_dim)

    def forward(self, queries: torch.Tensor, frames: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(queries, intensity)
        context = torch.cat([normed, self.ln_2(frames, intensity)], dim=1)
        queries = queries + self.attn(normed, context, context, need_weights=False)[0]
        return queries + self.mlp(self.ln_ff(queries, intensity))


class MotionConnector(nn.Module):
    def __init__(
        self, input_dim: int, output_dim: int, num_queries: int, intensity_dim: int, width: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.intensity_aware_linear = nn.Linear(intensity_dim, width)
        self.proj_in = nn.Linear(input_dim, width)
        self.perceiver_blocks = nn.ModuleList(PerceiverBlock(width, heads, intensity_dim) for _ in range(layers))
        self.proj_out = nn.Sequential(nn.Linear(width, output_dim), nn.LayerNorm(output_dim))

    def forward(self, features: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        frames = self.proj_in(features).unsqueeze(1)
        queries = self.latents + self.intensity_aware_linear(F.silu(intensity))
        queries = queries.expand(len(features), -1, -1)
        for block in self.perceiver_blocks:
            queries = block(queries, frames, intensity)
        return self.proj_out(queries)


class IntensityAwareMotionRefiner(ModelMixin, ConfigMixin):
    """([n, input_dim] expression features, head bucket [1], expression bucket [1]) -> [n, num_queries, output_dim].

    Keys match `motion_proj.pth`: `position_head`, `position_exp` (bucket embeddings) and `connector.*`.
    One intensity vector (sum of the two bucket embeddings) conditions the whole chunk.
    """

    @register_to_config
    def __init__(
        self,
        input_dim: int = 512,
        output_dim: int = 1018,
        num_queries: int = 64,
        intensity_embed_dim: int = 768,
        width: int = 768,
        layers: int = 6,
        heads: int = 8,
    ) -> None:
        super().__init__()
        self.position_head = nn.Embedding(NUM_BUCKETS, intensity_embed_dim)
        self.position_exp = nn.Embedding(NUM_BUCKETS, intensity_embed_dim)
        self.connector = MotionConnector(
            input_dim, output_dim, num_queries, intensity_embed_dim, width, layers, heads
        )

    def forward(
        self, features: torch.Tensor, head_bucket_id: torch.Tensor, exp_bucket_id: torch.Tensor
    ) -> torch.Tensor:
        intensity = self.position_head(head_bucket_id.long()) + self.position_exp(exp_bucket_id.long())
        return self.connector(features, intensity.reshape(1, -1))
