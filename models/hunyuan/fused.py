"""Faster kernels for the same sums in diffusers' SVD modules, swapped in without changing a key.

- `FusedGEGLU`: diffusers' GEGLU projects C channels to 8C, writes them and reads them back to
  compute hidden * gelu(gate): 48 times per UNet call, memory-bound, about 7% of a compiled call on
  an H100. The Triton kernel (`geglu_triton`) keeps both halves in registers and writes only the
  4C result.
- `FrameConv`: a convolution over frames only, computed as a 2-D one.

Both run on CUDA only; elsewhere (the CPU, float32, no Triton) and when switched off with
`use_fused_kernels(module, False)` (the benchmark's baseline) they compute diffusers' stock way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward
from torch import nn

try:
    from portraitflow.models.hunyuan import geglu_triton
except ModuleNotFoundError as missing:  # no Triton (the CPU wheels of torch): the unfused formula everywhere
    if missing.name != "triton":
        raise
    geglu_triton = None  # type: ignore[assignment]

class FusedGEGLU(nn.Module):
    """GEGLU(x) = (x W_h + b_h) * gelu(x W_g + b_g), in one kernel where it can be."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj
        self.fused = True

    @classmethod
    def replacing(cls, geglu: GEGLU) -> FusedGEGLU:
        """The same computation on the same parameters as diffusers' `geglu`."""
        return cls(geglu.proj)

    def can_fuse(self, hidden_states: torch.Tensor) -> bool:
        return (self.fused and geglu_triton is not None
                and geglu_triton.refusal(hidden_states, self.proj.weight, self.proj.bias) is None)

    def forward(self, hidden_states: torch.Tensor, *_: object, **__: object) -> torch.Tensor:
        if self.can_fuse(hidden_states):
            return torch.ops.portraitflow.linear_geglu(hidden_states, self.proj.weight, self.proj.bias)
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return hidden_states * F.gelu(gate)


class FrameConv(nn.Conv3d):
    """A convolution over frames only (the temporal blocks' (3, 1, 1)) of [B, C, F, H, W], computed
    as a (3, 1) 2-D convolution of [B, C, F, H*W]: the same sums, but a 2-D convolution runs
    channels-last as the rest of the compiled UNet does, where cuDNN wraps each 3-D one in
    transposes of its input, weight and output (7 ms of a 185-ms UNet call on an H100; what the
    2-D form saves was measured only together with the fused GEGLU)."""

    def __init__(self, conv: nn.Conv3d) -> None:
        if not self.convolves_frames_only(conv):
            raise ValueError(f"not a convolution over frames only: {conv}")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                         bias=conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.as_2d = True

    @staticmethod
    def convolves_frames_only(conv: nn.Conv3d) -> bool:
        return (conv.kernel_size[1:] == (1, 1) and conv.stride == (1, 1, 1) and conv.padding[1:] == (0, 0)
                and conv.dilation == (1, 1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.as_2d and hidden_states.is_cuda:  # on the CPU the 3-D form is the faster one
            return self.forward_2d(hidden_states)
        return super().forward(hidden_states)

    def forward_2d(self, hidden_states: torch.Tensor) -> torch.Tensor:
        height, width = hidden_states.shape[-2:]
        out = F.conv2d(hidden_states.flatten(3), self.weight.squeeze(-1), self.bias, padding=(self.padding[0], 0))
        return out.unflatten(3, (height, width))


def substitute_fused_kernels(root: nn.Module) -> None:
    """Swap every feed-forward GEGLU and every convolution over frames only in `root` in place."""
    for module in list(root.modules()):
        if isinstance(module, FeedForward) and isinstance(module.net[0], GEGLU):
            module.net[0] = FusedGEGLU.replacing(module.net[0])
        for name, child in list(module.named_children()):
            if type(child) is nn.Conv3d and FrameConv.convolves_frames_only(child):
                setattr(module, name, FrameConv(child))


def geglu_kernel_state(device: torch.device) -> str:
    """What computes the feed-forward GEGLUs on `device`, for a job's `model` record: the fused
    kernel, or diffusers' formula and why."""
    if device.type != "cuda":
        return "formula (not CUDA)"
    if geglu_triton is None:
        return "formula (no Triton)"
    if geglu_triton.kernel_failure:
        return f"formula (the kernel failed: {geglu_triton.kernel_failure})"
    return "fused kernel"


def use_fused_kernels(root: nn.Module, enabled: bool) -> bool:
    """Switch the substituted kernels in `root` on or off (off: diffusers' stock computation);
    returns whether they were on, so a caller can put them back as it found them."""
    were_on = True
    for module in root.modules():
        if isinstance(module, FusedGEGLU):
            were_on, module.fused = module.fused, enabled
        elif isinstance(module, FrameConv):
            were_on, module.as_2d = module.as_2d, enabled
    return were_on
