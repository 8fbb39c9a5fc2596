"""One launch of each kernel the kernel issue's missed targets turn on, for Nsight Compute.

    ncu --clock-control none --cache-control all --nvtx --nvtx-include "profiled/" \
        --section SpeedOfLight --section WarpStateStats --section SourceCounters \
        python benchmarks/lab/ncu_targets.py

Every kernel is launched once to compile and warm up, then once more inside the NVTX range
"profiled": ``--nvtx-include`` keeps ncu to those second launches, in the order below.
``--cache-control all`` flushes the caches before each profiled kernel, so the weights come from
HBM as with the benchmarks' weight rotation; ``--clock-control none`` leaves the clocks as the
benchmarks see them.

1. ``act_quant_1x128``, x [1, 4096] bf16;
2. the shipped split-K GEMM (tuned config), M = 1, N = K = 4096, tickets pre-zeroed (one launch);
3. bf16 ``torch.mm``, M = 1, N = K = 4096 (cuBLAS's GEMV);
4. the split-K GEMM at M = 16, N = K = 4096;
5. the persistent TMA GEMM (``tma_128x128``), M = N = K = 4096;
6. cuBLAS blockwise ``torch._scaled_mm``, M = N = K = 4096.

Written 2026-12-08 and not run on a GPU yet (no device was lent after the small-M lab's run).
"""

from __future__ import annotations

import torch

from fp8inductor.kernels import cublas
from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.block_gemm import CONFIGS, _default_config, _split_plan, fp8_block_gemm
from fp8inductor.kernels.weight_quant import weight_quant_128x128


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    n = k = 4096
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=g) * k**-0.5
    wq, ws = weight_quant_128x128(w)
    x1 = torch.randn(1, k, device=dev, dtype=torch.bfloat16, generator=g)
    x16 = torch.randn(16, k, device=dev, dtype=torch.bfloat16, generator=g)
    xl = torch.randn(4096, k, device=dev, dtype=torch.bfloat16, generator=g)
    q1, s1 = act_quant_1x128(x1)
    q16, s16 = act_quant_1x128(x16)
    ql, sl = act_quant_1x128(xl)
    qlc, slc = act_quant_1x128(xl, col_major_scales=True)
    cfg1 = _default_config(dev, 1, n, k, True, cublas_ok=False)
    cfg16 = _default_config(dev, 16, n, k, True, cublas_ok=False)
    tickets = torch.zeros(max(_split_plan(c, 16, n, k)[2] for c in (cfg1, cfg16)), dtype=torch.int32, device=dev)
    steps = [
        ("act_quant_1x128 M=1 K=4096", lambda: act_quant_1x128(x1)),
        (f"split-K GEMM M=1 {cfg1}", lambda: fp8_block_gemm(q1, s1, wq, ws, config=cfg1, tickets=tickets)),
        ("bf16 torch.mm M=1", lambda: torch.mm(x1, w.t())),  # w: [N, K] row-major, as F.linear
        (f"split-K GEMM M=16 {cfg16}", lambda: fp8_block_gemm(q16, s16, wq, ws, config=cfg16, tickets=tickets)),
        ("TMA GEMM 4096^3 tma_128x128", lambda: fp8_block_gemm(ql, sl, wq, ws, config=CONFIGS["tma_128x128"])),
        ("cuBLAS blockwise 4096^3", lambda: cublas.block_gemm(qlc, slc, wq, ws, None, torch.bfloat16)),
    ]
    for rnd in ("warm-up", "profiled"):
        if rnd == "profiled":
            torch.cuda.nvtx.range_push("profiled")
        for name, fn in steps:
            fn()
            torch.cuda.synchronize()
            print(f"{rnd}: {name}", flush=True)
    torch.cuda.nvtx.range_pop()


if __name__ == "__main__":
    main()
