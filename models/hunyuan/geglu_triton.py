"""The Triton kernel behind `fused.FusedGEGLU`: a linear layer whose output goes through GEGLU
before it is stored.

Each [BLOCK_M, BLOCK_N] tile of the GEGLU output comes from two accumulators, the projection's
hidden half (weight rows n) and its gate half (rows N + n), so the 2N-wide projection never
reaches device memory; a program computes one tile, or (persistent) several in turn. Imported only where Triton is installed; registered as the custom op
`portraitflow::linear_geglu` so `torch.compile` keeps it as one opaque call.
"""
from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

#: tile shapes the autotuner times on the first call of each (M, N, K), keeping the fastest; K must
#: be a multiple of every BLOCK_K. The best of a wider sweep on an H100 at the UNet's three widths
#: (benchmarks/geglu_kernel.py), one tile per program.
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8, "PERSISTENT": False},
                  num_stages=stages, num_warps=8)
    for stages in (4, 5, 6)
] + [triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "PERSISTENT": False},
                   num_stages=3, num_warps=8)]
#: timed beside CONFIGS by the autotuner too: one program per multiprocessor walking the tiles in
#: one flattened loop, so the next tile's loads overlap this tile's GELU epilogue (at K = 320 the
#: main loop is only ten 32-wide steps, where the one-tile kernel runs at 57% of cuBLAS's rate).
PERSISTENT_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": block_k, "GROUP_M": 8, "PERSISTENT": True},
                  num_stages=stages, num_warps=8)
    for block_k, stages in ((32, 4), (32, 5), (64, 3), (64, 4))
]
K_MULTIPLE = math.lcm(*(config.kwargs["BLOCK_K"] for config in CONFIGS + PERSISTENT_CONFIGS))
logger = logging.getLogger(__name__)


@triton.jit
def _tile_position(tile, grid_m, grid_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of tile number `tile`: groups of GROUP_M row tiles walk the columns
    together, so their weight tiles stay in L2."""
    per_group = GROUP_M * grid_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = min(grid_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_rows, (tile % per_group) // group_rows


@triton.jit
def linear_geglu_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr):
    """out[m, n] = (x[m] . w[n] + b[n]) * gelu(x[m] . w[N + n] + b[N + n]); x [M, K], w [2N, K],
    K a multiple of BLOCK_K. Each program computes the tiles program_id, + num_programs, ..."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, tl.num_programs(0), flatten=PERSISTENT):
        pid_m, pid_n = _tile_position(tile, grid_m, grid_n, GROUP_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # rows and columns past the end read row 0 instead (never stored), so no load needs a mask
        load_rows = tl.where(rows < M, rows, 0).to(tl.int64)
        load_cols = tl.where(cols < N, cols, 0).to(tl.int64)
        hidden = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(tl.cdiv(K, BLOCK_K)):
            k = step * BLOCK_K + ks
            x = tl.load(x_ptr + load_rows[:, None] * stride_xm + k[None, :])
            hidden = tl.dot(x, tl.load(w_ptr + load_cols[None, :] * stride_wn + k[:, None]), hidden)
            gate = tl.dot(x, tl.load(w_ptr + (load_cols[None, :] + N) * stride_wn + k[:, None]), gate)
        hidden += tl.load(b_ptr + load_cols).to(tl.float32)[None, :]
        gate += tl.load(b_ptr + N + load_cols).to(tl.float32)[None, :]
        out = hidden * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))  # exact (erf) GELU
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < N))


_autotuned = triton.autotune(configs=CONFIGS + PERSISTENT_CONFIGS, key=["M", "N", "K"])(linear_geglu_kernel)


def _programs(x: torch.Tensor, tiles: int, persistent: bool) -> int:
    """One program per tile, or per multiprocessor (persistent)."""
    if not persistent:
        return tiles
    # off CUDA only Triton's interpreter runs the kernel: a few programs still walk several tiles each
    processors = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    return min(tiles, processors)


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
           config: dict | None = None) -> None:
    """Fill out [M, N] from x [M, K] and the projection's weight [2N, K] and bias [2N], all with a
    unit last stride. `config` (tile sizes, `PERSISTENT`, `num_warps`, `num_stages`) skips the autotuning."""
    rows, depth = x.shape
    half = weight.shape[0] // 2
    args = (x, weight, bias, out, rows, half, depth, x.stride(0), weight.stride(0), out.stride(0))

    def grid(meta: dict) -> tuple[int]:
        tiles = triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(half, meta["BLOCK_N"])
        return (_programs(x, tiles, meta["PERSISTENT"]),)

    if config is None:
        _autotuned[grid](*args)
    else:
        linear_geglu_kernel[grid(config)](*args, **config)


#: why the kernel stopped being used in this process (it failed to build or launch), else None
kernel_failure: str | None = None


def refusal(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why the kernel cannot compute GEGLU(x @ weight.T + bias), or None: it takes CUDA tensors of
    one device, float16 or bfloat16 alike, and K a multiple of every tile's K (it reads whole tiles)."""
    if bias is None:
        return "no bias"
    if not (x.is_cuda and weight.device == x.device and bias.device == x.device):
        return "not CUDA tensors of one device"
    if not (x.dtype in (torch.float16, torch.bfloat16) and weight.dtype == bias.dtype == x.dtype):
        return f"{x.dtype}/{weight.dtype}, not float16 or bfloat16 alike"
    if not (x.shape[-1] == weight.shape[1] and x.shape[-1] % K_MULTIPLE == 0 and weight.shape[0] % 2 == 0):
        return f"x {tuple(x.shape)} and weight {tuple(weight.shape)}: K not a multiple of {K_MULTIPLE}, or an odd output"
    return None


@torch.library.custom_op("portraitflow::linear_geglu", mutates_args=())
def linear_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GEGLU(x @ weight.T + bias) for x [..., K] on CUDA; the output is [..., weight.shape[0] // 2].
    If the kernel fails to build or launch (a Triton that does not support this GPU, say), this and
    every later call compute diffusers' formula instead, with one warning. Running out of memory
    is no such failure and propagates; a fault on the device itself would poison the CUDA context,
    which `refusal` guards against by keeping the kernel to inputs it reads within bounds."""
    global kernel_failure
    reason = refusal(x, weight, bias)
    torch._check(reason is None, lambda: f"portraitflow::linear_geglu: {reason}")
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    if kernel_failure is None:
        out = rows.new_empty(rows.shape[0], weight.shape[0] // 2)
        try:
            with torch.cuda.device(x.device):
                launch(rows, weight.contiguous(), bias.contiguous(), out)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 (any build or launch failure; the formula is the same)
            kernel_failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logger.warning("the fused GEGLU kernel failed, diffusers' GEGLU runs instead: %s", kernel_failure)
    hidden, gate = torch.nn.functional.linear(rows, weight, bias).chunk(2, dim=-1)
    return (hidden * torch.nn.functional.gelu(gate)).reshape(*x.shape[:-1], hidden.shape[-1])


@linear_geglu.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)
