"""DINOv2 ViT-L/14 with 4 registers and ID-aware multi-scale adapters (SPEC 4.1).

The reference image's appearance tokens, conditioned on its ArcFace identity: blocks listed in
`add_adapter_layer` add 0.2 x IMAdapter(LN2(x), id) to their MLP branch.
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

ADAPTER_WEIGHT = 0.2
POS_EMBED_OFFSET = 0.1  # the release resizes by (grid + 0.1) / trained_grid, not to the grid size
ID_DIM = 512
CROSS_ATTENTION_DIM = 256
CROSS_ATTENTION_HEADS = 8
NUM_ADAPTER_PREFIX_TOKENS = 5  # CLS + 4 registers, hard-coded in the release's adapter


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class BasicConv(nn.Module):
    """Conv (with bias), BatchNorm (eps 1e-3, eval statistics), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class IdCrossAttention(nn.Module):
    """Patch tokens (queries) attend to the identity vector; keys match the release's MultiHeadCrossAttention."""

    def __init__(self, adapter_dim: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(adapter_dim, CROSS_ATTENTION_DIM)
        self.id_proj = nn.Linear(ID_DIM, CROSS_ATTENTION_DIM)
        self.multihead_attn = nn.MultiheadAttention(CROSS_ATTENTION_DIM, CROSS_ATTENTION_HEADS)
        self.back_proj = nn.Linear(CROSS_ATTENTION_DIM, adapter_dim)

    def forward(self, id_features: torch.Tensor) -> torch.Tensor:
        """[B, 1, ID_DIM] -> [B, 1, adapter_dim], the same for every query.

        With one key the softmax weight is exactly 1 for every query and head, so attention
        returns the value projection unchanged and the queries (hence `image_proj` and the
        adapter's conv branches feeding it) cannot affect the result, in floating point too.
        We therefore skip them; their weights are kept only so the checkpoint loads strictly.
        """
        if id_features.shape[1] != 1:
            raise ValueError(f"expected one identity vector per image, got {id_features.shape[1]}")
        attn = self.multihead_attn
        _, _, value_weight = attn.in_proj_weight.chunk(3)
        _, _, value_bias = attn.in_proj_bias.chunk(3)
        value = F.linear(self.id_proj(id_features), value_weight, value_bias)
        return self.back_proj(attn.out_proj(value))


class IMAdapter(nn.Module):
    """ID-aware multi-scale adapter: [B, T, dim] tokens + [B, 1, 512] identity -> [B, T, dim]."""

    def __init__(self, dim: int, adapter_dim: int = 384) -> None:
        super().__init__()
        self.D_fc1 = nn.Linear(dim, adapter_dim)
        self.D_fc2 = nn.Linear(adapter_dim, dim)
        self.branch1 = BasicConv(adapter_dim, adapter_dim // 2, 1)
        self.branch2 = nn.Sequential(
            BasicConv(adapter_dim, adapter_dim // 16, 1), BasicConv(adapter_dim // 16, adapter_dim // 4, 3)
        )
        self.branch3 = nn.Sequential(
            BasicConv(adapter_dim, adapter_dim // 16, 1), BasicConv(adapter_dim // 16, adapter_dim // 4, 5)
        )
        self.cross_attn = IdCrossAttention(adapter_dim)

    def forward(self, tokens: torch.Tensor, id_features: torch.Tensor) -> torch.Tensor:
        x0 = F.relu(self.D_fc1(tokens))
        identity = self.cross_attn(id_features)
        # The release prepends x0's CLS and register rows to the attention output and then adds x0
        # to every row, so those rows become 2 * x0 while the patch rows become x0 + identity.
        prefix = 2 * x0[:, :NUM_ADAPTER_PREFIX_TOKENS]
        patches = x0[:, NUM_ADAPTER_PREFIX_TOKENS:] + identity
        return self.D_fc2(torch.cat([prefix, patches], dim=1))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float, adapter_dim: int | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)
        self.adapter = None if adapter_dim is None else IMAdapter(dim, adapter_dim)

    def forward(self, x: torch.Tensor, id_features: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        normed = self.norm2(x)
        update = self.mlp(normed)
        if self.adapter is not None:
            update = update + ADAPTER_WEIGHT * self.adapter(normed, id_features)
        return x + self.ls2(update)


class DinoV2WithIdAdapters(ModelMixin, ConfigMixin):
    """([B, 3, H, W] ImageNet-normalised image, [B, 1, 512] ArcFace) -> [B, 1 + registers + patches, dim].

    Keys match `dino.pth` (stored with block_chunks=0: `blocks.{i}.*`). The output is the final
    LayerNorm over every token: CLS, registers, then the patch grid row by row.
    """

    @register_to_config
    def __init__(
        self,
        img_size: int = 526,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
        add_adapter_layer: tuple[int, ...] = (3, 7, 11, 15, 19, 23),
        visual_adapter_dim: int = 384,
    ) -> None:
        super().__init__()
        if num_register_tokens + 1 != NUM_ADAPTER_PREFIX_TOKENS and add_adapter_layer:
            raise ValueError("the release's adapter assumes exactly 4 register tokens")
        self.patch_size = patch_size
        self.trained_grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.trained_grid**2 + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training-only, kept for strict loads
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values, visual_adapter_dim if i in add_adapter_layer else None)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        for parameter in (self.cls_token, self.pos_embed, self.register_tokens):
            nn.init.trunc_normal_(parameter, std=0.02)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, 1 + grid_h * grid_w, dim]: the CLS row as is, the trained patch grid resized bicubically.

        The release passes a scale factor of (grid + 0.1) / trained_grid instead of a target
        size; the scale factor sets the sampling coordinates, so we do the same.
        """
        cls_row, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        if (grid_h, grid_w) == (self.trained_grid, self.trained_grid):
            return self.pos_embed
        grid = grid.unflatten(1, (self.trained_grid, self.trained_grid)).permute(0, 3, 1, 2)
        scale = ((grid_h + POS_EMBED_OFFSET) / self.trained_grid, (grid_w + POS_EMBED_OFFSET) / self.trained_grid)
        resized = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
        if resized.shape[-2:] != (grid_h, grid_w):
            raise ValueError(f"positional grid resized to {tuple(resized.shape[-2:])}, expected {(grid_h, grid_w)}")
        resized = resized.to(grid.dtype).flatten(2).transpose(1, 2)
        return torch.cat([cls_row, resized], dim=1)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Tokens entering block 0: [CLS, registers, patches] with positions on CLS and patches."""
        patches = self.patch_embed.proj(image)
        grid_h, grid_w = patches.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(len(image), -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        tokens = tokens + self.interpolated_pos_embed(grid_h, grid_w)
        registers = self.register_tokens.expand(len(image), -1, -1)
        return torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)

    def forward(self, image: torch.Tensor, id_features: torch.Tensor) -> torch.Tensor:
        x = self.embed(image)
        for block in self.blocks:
            x = block(x, id_features)
        return self.norm(x)
