"""The Triton kernel behind `fused.FusedGEGLU`: a linear layer whose output goes through GEGLU
before it is stored.

Each program computes one [BLOCK_M, BLOCK_N] tile of the GEGLU output from two accumulators, the
projection's hidden half (weight rows n) and its gate half (rows N + n), so the 2N-wide projection
never reaches device memory. Imported only where Triton is installed; registered as the custom op
`portraitflow::linear_geglu` so `torch.compile` keeps it as one opaque call.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: tile shapes tried on the first call of each (M, N, K); K must be a multiple of every BLOCK_K.
#: The best of a wider sweep on an H100 at the UNet's three widths (benchmarks/geglu_kernel.py).
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=stages, num_warps=8)
    for stages in (4, 5, 6)
] + [triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8)]
K_MULTIPLE = 64


@triton.jit
def linear_geglu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    """out[m, n] = (x[m] . w[n] + b[n]) * gelu(x[m] . w[N + n] + b[N + n]); x [M, K], w [2N, K]."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # groups of GROUP_M row tiles walk the columns together, so their weight tiles stay in L2
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows[:, None] < M
    col_ok = cols[None, :] < N
    x_ptrs = x_ptr + rows[:, None] * stride_xm + ks[None, :]
    hidden_ptrs = w_ptr + cols[None, :] * stride_wn + ks[:, None]
    gate_ptrs = hidden_ptrs + N * stride_wn
    hidden = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        x = tl.load(x_ptrs, mask=row_ok, other=0.0)
        hidden = tl.dot(x, tl.load(hidden_ptrs, mask=col_ok, other=0.0), hidden)
        gate = tl.dot(x, tl.load(gate_ptrs, mask=col_ok, other=0.0), gate)
        x_ptrs += BLOCK_K
        hidden_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
    hidden += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    gate += tl.load(b_ptr + N + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out = hidden * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))  # exact (erf) GELU
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok & col_ok)


_autotuned = triton.autotune(configs=CONFIGS, key=["M", "N", "K"])(linear_geglu_kernel)


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
           config: dict | None = None) -> None:
    """Fill out [M, N] from x [M, K] and the projection's weight [2N, K] and bias [2N], all with a
    unit last stride. `config` (tile sizes, `num_warps`, `num_stages`) skips the autotuning."""
    rows, depth = x.shape
    half = weight.shape[0] // 2
    args = (x, weight, bias, out, rows, half, depth, x.stride(0), weight.stride(0), out.stride(0))
    if config is None:
        grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(half, meta["BLOCK_N"]),)  # noqa: E731
        _autotuned[grid](*args)
        return
    grid = (triton.cdiv(rows, config["BLOCK_M"]) * triton.cdiv(half, config["BLOCK_N"]),)
    linear_geglu_kernel[grid](*args, **config)


@torch.library.custom_op("portraitflow::linear_geglu", mutates_args=())
def linear_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GEGLU(x @ weight.T + bias) for x [..., K] on CUDA; the output is [..., weight.shape[0] // 2]."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = rows.new_empty(rows.shape[0], weight.shape[0] // 2)
    launch(rows, weight.contiguous(), bias.contiguous(), out)
    return out.reshape(*x.shape[:-1], out.shape[-1])


@linear_geglu.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)
