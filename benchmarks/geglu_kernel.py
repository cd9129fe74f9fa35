"""The fused GEGLU kernel against cuBLAS and inductor at the UNet's three feed-forward widths (CUDA).

For each [M, K] activation of one 25-frame, two-branch UNet call (M = 50 frames x pixels at
64², 32² and 16²; K = 320, 640, 1280; the projection is K -> 8K, the output 4K) it prints TFLOP/s
of the projection's FLOPs for: the projection alone (cuBLAS, no GEGLU: a ceiling), diffusers'
eager GEGLU, the same under `torch.compile` (cuBLAS plus one fused GELU-multiply kernel, as the
compiled UNet without `fused.py`), the autotuned fused kernel, each of its tile configs, and the
persistent configs (`geglu_triton.PERSISTENT_CONFIGS`, marked `p`); each writer of the fused
output is first checked against the formula (`wrong` if it is off), a config that cannot be built
says so.

    python benchmarks/geglu_kernel.py
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from portraitflow.models.hunyuan import geglu_triton

SHAPES = [(50 * 64 * 64, 320), (50 * 32 * 32, 640), (50 * 16 * 16, 1280)]


def stock_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    hidden, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return hidden * F.gelu(gate)


def rate(run: Callable[[], object], flop: int, check: Callable[[Callable[[], object]], bool] | None = None) -> str:
    """TFLOP/s of `run` (Triton's `do_bench`: median of warmed-up calls), `wrong` when `check(run)`
    finds its output off the formula, or why it failed (a candidate config this Triton cannot build, say)."""
    try:
        if check is not None and not check(run):
            return "wrong"
        return f"{flop / do_bench(run) / 1e9:.0f}"
    except Exception as error:  # noqa: BLE001 (any build or launch failure is a result here)
        return f"failed ({type(error).__name__})"


def main() -> None:
    compiled = torch.compile(stock_geglu, dynamic=False)
    print(f"{torch.cuda.get_device_name()}, fp16, TFLOP/s of the projection (2 M K 8K)")
    for rows, depth in SHAPES:
        width = 4 * depth
        x = torch.randn(rows, depth, device="cuda", dtype=torch.float16)
        weight = torch.randn(2 * width, depth, device="cuda", dtype=torch.float16) / depth**0.5
        bias = torch.randn(2 * width, device="cuda", dtype=torch.float16)
        out = torch.empty(rows, width, device="cuda", dtype=torch.float16)
        flop = 2 * rows * depth * 2 * width
        expected = stock_geglu(x.float(), weight.float(), bias.float())

        def matches(run: Callable[[], object]) -> bool:
            out.fill_(float("nan"))  # noqa: B023 (this shape's: every element must be written)
            run()
            return torch.allclose(out.float(), expected, rtol=2e-2, atol=2e-2)  # noqa: B023

        runs = {"projection only": lambda: F.linear(x, weight, bias),  # noqa: B023 (timed before the next shape)
                "eager": lambda: stock_geglu(x, weight, bias),  # noqa: B023
                "compiled": lambda: compiled(x, weight, bias),  # noqa: B023
                "fused": lambda: geglu_triton.launch(x, weight, bias, out)}  # noqa: B023
        for config in geglu_triton.CONFIGS + geglu_triton.PERSISTENT_CONFIGS:
            meta = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
            name = f"{meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']}/{config.num_stages}{'p' * meta['PERSISTENT']}"
            runs[name] = lambda meta=meta: geglu_triton.launch(x, weight, bias, out, meta)  # noqa: B023
        fused = [name for name in runs if name not in ("projection only", "eager", "compiled")]  # write `out`
        print(f"M {rows:6d} K {depth:4d} | " + " | ".join(
            f"{name} {rate(run, flop, matches if name in fused else None)}" for name, run in runs.items()), flush=True)


if __name__ == "__main__":
    main()
