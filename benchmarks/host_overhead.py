"""Host (CPU) time per call of the FP8 linear path, and where it goes (cProfile).

    PYTHONPATH=. python benchmarks/host_overhead.py

Launch-bound calls (small M) cost host time, not GPU time; this measures the Python side: wall time
per call with the GPU never the bottleneck (M = 1), for the custom op and for each launcher.
"""

from __future__ import annotations

import cProfile
import pstats
import time

import torch

import fp8inductor
from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.block_gemm import fp8_block_gemm, fp8_block_linear


def per_call_us(fn, n=300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def main() -> None:
    x = torch.randn(1, 7168, device="cuda", dtype=torch.bfloat16)
    q, s = fp8inductor.quantize_weight(torch.randn(2112, 7168, device="cuda", dtype=torch.bfloat16) / 80)
    xq, xs = act_quant_1x128(x)
    cases = {
        "torch.mm bf16 (reference point)": lambda: torch.mm(x, x.new_empty(7168, 2112)),
        "act_quant_1x128": lambda: act_quant_1x128(x),
        "fp8_block_gemm (split-K: ticket fill + GEMM)": lambda: fp8_block_gemm(xq, xs, q, s),
        "fp8_block_linear (quant + GEMM)": lambda: fp8_block_linear(x, q, s),
        "torch.ops.fp8inductor.block_linear": lambda: torch.ops.fp8inductor.block_linear(x, q, s, None),
    }
    for name, fn in cases.items():
        print(f"{name:<40} {per_call_us(fn):8.1f} us/call (host)")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        torch.ops.fp8inductor.block_linear(x, q, s, None)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
