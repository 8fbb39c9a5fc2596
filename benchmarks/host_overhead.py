"""Host (CPU) time per call of the FP8 linear path, and where it goes (cProfile).

    PYTHONPATH=. python benchmarks/host_overhead.py [--m 1 --n 2112 --k 7168]

Launch-bound calls (small M) cost host time, not GPU time; this measures the Python side: wall time
per call with the GPU never the bottleneck (M = 1; a larger --m shows where the GPU takes over), for
the custom op and for each launcher.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import fp8inductor
from fp8inductor.kernels import cublas
from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.block_gemm import fp8_block_gemm, fp8_block_linear


def _choice(m: int, n: int, k: int, wq: torch.Tensor, ws: torch.Tensor):
    from fp8inductor.kernels import cublas
    from fp8inductor.kernels.block_gemm import _default_config, _tma_ok_weight

    return _default_config(wq.device, m, n, k, _tma_ok_weight(wq, torch.bfloat16),
                           cublas.usable_weight(m, wq, ws, None, torch.bfloat16))  # fmt: skip


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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=1, help="rows (1: the GPU is never the bottleneck)")
    ap.add_argument("--n", type=int, default=2112)
    ap.add_argument("--k", type=int, default=7168)
    args = ap.parse_args()
    m, n, k = args.m, args.n, args.k
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q, s = fp8inductor.quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / 80)
    xq, xs = act_quant_1x128(x)
    w_bf16 = x.new_empty(k, n)
    xs_cols = xs.t().contiguous().t()  # the layout cuBLAS blockwise reads
    cases = {"torch.mm bf16 (reference point)": lambda: torch.mm(x, w_bf16)}
    if cublas.usable(xq, q, s, None, torch.bfloat16):  # else it raises (M % 4 != 0) or is wrong (K)
        cases["torch._scaled_mm (cuBLAS blockwise)"] = lambda: torch._scaled_mm(
            xq, q.t(), xs_cols, s.t(), out_dtype=torch.bfloat16
        )
    cases |= {
        "act_quant_1x128": lambda: act_quant_1x128(x),
        "act_quant_1x128, column-major scales": lambda: act_quant_1x128(x, col_major_scales=True),
        "fp8_block_gemm (its default choice)": lambda: fp8_block_gemm(xq, xs, q, s),
        "fp8_block_linear (quant + GEMM)": lambda: fp8_block_linear(x, q, s),
        "torch.ops.fp8inductor.block_linear": lambda: torch.ops.fp8inductor.block_linear(x, q, s, None),
    }
    print(f"M={m} N={n} K={k}; op's GEMM choice: {_choice(m, n, k, q, s)}")
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
