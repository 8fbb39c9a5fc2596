"""Small-M lab: where the fixed cost of a decode linear goes, and a one-launch quant + split-K GEMM.

    PYTHONPATH=. python benchmarks/lab/fused_small_m_lab.py [--out results.json] [--check-only]

A decode-size linear (M <= 16) is two launches today: the activation quant kernel (which also
clears the split-K tile tickets) and the split-K GEMM. Under CUDA graphs it sits ~4-6 us above its
weight bytes' streaming time, bf16 cuBLAS a similar amount. This lab times, in one CUDA graph per
variant (``triton.testing.do_bench_cudagraph``, weights rotated over > 4x L2), per shape of the
kernel issue's suite and M in {1, 16}:

* ``bf16``: ``torch.mm`` on bf16 weights;
* ``linear``: ``fp8_block_linear`` as shipped (quant + GEMM, PDL at M <= 8);
* ``quant``: ``act_quant_1x128`` alone;
* ``gemm1``: the shipped split-K GEMM alone on pre-quantized x with a persistent zeroed tickets
  buffer (one launch: the kernel puts its tickets back to zero);
* ``fused``: ``_fused_linear_splitk_kernel`` below, one launch: each program quantizes the slice of
  x its K range needs (bit-exact with ``act_quant_1x128``; the next K block's x is loaded one
  iteration ahead, ``XPREFETCH``, since Triton's pipeliner prefetches only loads that feed the dot)
  and runs the split-K main loop; a grid of configs, each checked bit for bit against ``linear``;
* ``empty``: an empty Triton kernel of 132 programs: the cost of one node of the graph.

History: a first in-loop quant without the x prefetch (2026-11-25, ``small_m_lab.py``) lost
(M=1 4096x4096 17.4 vs 13.7 us): each K block waited on one load latency.

Answer (H100, triton 3.6, 2026-12-08, ``docs/fused_small_m_lab_h100.json``; docs/benchmarks.md
"Small M"): the quant costs 1.0-2.9 us inside the linear; the fused kernel, bit-exact, was
1.14-1.46x slower than quant + GEMM at M = 16 and 1.9-2.4x at M = 1; the one-launch GEMM alone sits
4.6-6.9 us above its weight bytes at 3.0 TB/s, of which an empty graph node is 1.2 us. Not shipped.
"""

# ruff: noqa: B023 -- each closure is timed at once, inside its own loop iteration

from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
import triton
import triton.language as tl
import triton.testing

from fp8inductor.kernels.act_quant import (
    _amax_to_scale,
    _fp32_to_e4m3,
    _saturate_top_scale,
    _upcast_fp32,
    act_quant_1x128,
    native_fp8_cast,
)
from fp8inductor.kernels.block_gemm import (
    QBLOCK,
    GemmConfig,
    _default_config,
    _pdl_start,
    _scale_ptrs,
    _split_plan,
    _splitk_finish,
    _tile_ptrs,
    fp8_block_gemm,
    fp8_block_linear,
)
from fp8inductor.kernels.weight_quant import weight_quant_128x128

SUITE_NK = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 16384), (24576, 1536), (2112, 7168)]
MS = (1, 16)
GRID = [
    GemmConfig("splitk", 16, bn, 4, st, split_k=sk)
    for bn, sk, st in itertools.product((32, 64, 128), (4, 8, 16), (4, 6))
    if not (bn == 128 and st == 6)
]
L2 = 50 * 2**20


@triton.jit(do_not_specialize=["M", "kb_per_split"])
def _fused_linear_splitk_kernel(
    x_ptr,  # [M, K] bf16/fp16/fp32 activations, strides (stride_xm, stride_xk)
    wq_ptr,  # [N, K] float8e4nv weight codes, strides (stride_wn, stride_wk)
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    part_ptr,  # [num_splits, M, N] fp32 partial sums (scratch), contiguous
    ticket_ptr,  # [tiles] int32, all zero on entry and again on exit
    y_ptr,  # [M, N] out, contiguous
    M, N, K,
    kb_per_split,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_wsn, stride_wsk,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    UE8M0: tl.constexpr,
    NATIVE_CAST: tl.constexpr,
    XPREFETCH: tl.constexpr,  # load the next K block's x one iteration ahead
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
    PREFETCH: tl.constexpr = 0,
):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_pid_m
    pid_n = pid // num_pid_m
    # weight pointers as the split-K kernel; x pointers of the raw activations (rows past M masked)
    _, b_ptrs = _tile_ptrs(x_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk,
                           BLOCK_M, BLOCK_N, BLOCK_K)  # fmt: skip
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    _, ws_ptrs = _scale_ptrs(
        x_ptr, ws_ptr, pid_m, pid_n, M, N, 0, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK
    )  # x scales: unused
    kb_lo = split * kb_per_split
    kb_hi = tl.minimum(kb_lo + kb_per_split, tl.cdiv(K, BLOCK_K))
    if PDL:
        _pdl_start(wq_ptr, pid_n, N, stride_wn, stride_wk, kb_lo, kb_hi, BLOCK_N, BLOCK_K, PREFETCH)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xv = tl.load(x_ptrs + kb_lo * BLOCK_K * stride_xk, mask=mask_m[:, None] & (offs_k < K - kb_lo * BLOCK_K)[None, :],
                 other=0.0)  # fmt: skip
    for kb in range(kb_lo, kb_hi):
        k0 = kb * BLOCK_K
        if XPREFETCH:
            k1 = k0 + BLOCK_K
            k_left = tl.where(kb + 1 < kb_hi, K - k1, 0)  # nothing past this split's last K block
            x_next = tl.load(x_ptrs + k1 * stride_xk, mask=mask_m[:, None] & (offs_k < k_left)[None, :], other=0.0)
        else:
            xv = tl.load(x_ptrs + k0 * stride_xk, mask=mask_m[:, None] & (offs_k < K - k0)[None, :], other=0.0)
        if EVEN_K:
            b = tl.load(b_ptrs + k0 * stride_wk)
        else:
            b = tl.load(b_ptrs + k0 * stride_wk, mask=(offs_k < K - k0)[None, :], other=0.0)
        # the act_quant_1x128 numerics, one 128-group per row
        v = _upcast_fp32(xv)
        amax = tl.max(tl.abs(v), axis=1)
        has_nan = tl.max((v != v).to(tl.int32), axis=1) > 0  # noqa: PLR0124 -- the NaN test
        s = _amax_to_scale(amax, has_nan, UE8M0)  # [BLOCK_M]
        quotient = tl.math.div_rn(v, s[:, None])
        if UE8M0:
            quotient = _saturate_top_scale(quotient, s[:, None])
        a = _fp32_to_e4m3(quotient, NATIVE_CAST)
        d = tl.dot(a, tl.trans(b))
        sb = tl.load(ws_ptrs + kb * stride_wsk)
        if BLOCK_N > QBLOCK:
            sb = sb[None, :]
        acc += d * (s[:, None] * sb)
        if XPREFETCH:
            xv = x_next
    _splitk_finish(acc, part_ptr, ticket_ptr, y_ptr, bias_ptr, pid, pid_m, pid_n, split, num_splits, M, N,
                   HAS_BIAS, BLOCK_M, BLOCK_N)  # fmt: skip (the shipped kernel's tail)


def fused_linear(x, wq, ws, cfg: GemmConfig, tickets: torch.Tensor, xprefetch: bool = True, scale_fmt="float"):
    """One launch: y = linear(x) with x quantized in the kernel. tickets: int32, zero, >= tiles."""
    m, k = x.shape
    n = wq.shape[0]
    kb_per_split, num_splits, tiles = _split_plan(cfg, m, n, k)
    assert tickets.numel() >= tiles
    part = torch.empty((num_splits, m, n), dtype=torch.float32, device=x.device)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _fused_linear_splitk_kernel[(tiles, num_splits)](
        x, wq, ws, None, part, tickets, y, m, n, k, kb_per_split,
        x.stride(0), x.stride(1), wq.stride(0), wq.stride(1), ws.stride(0), ws.stride(1),
        HAS_BIAS=False, EVEN_K=k % QBLOCK == 0, UE8M0=scale_fmt == "ue8m0", NATIVE_CAST=native_fp8_cast(x.device),
        XPREFETCH=xprefetch, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=QBLOCK, QBLOCK=QBLOCK,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return y


@triton.jit
def _empty_kernel(p):
    pass


def bench(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=40) * 1e3  # us


def check(dev, shapes, ms, grid) -> None:
    """Bit-exactness of the fused kernel against quant + split-K GEMM of the same config."""
    tickets = torch.zeros(1 << 14, dtype=torch.int32, device=dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    for (n, k), m, cfg, xp, fmt in itertools.product(shapes, ms, grid, (True, False), ("float", "ue8m0")):
        x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 10).to(dev, torch.bfloat16)
        if m > 1:
            x[m // 2, : min(k, 300)] = 0  # an all-zero group
        wq, ws = weight_quant_128x128((torch.randn(n, k, generator=g) * k**-0.5).to(dev, torch.bfloat16))
        xq, xs = act_quant_1x128(x, fmt)
        ref = fp8_block_gemm(xq, xs, wq, ws, None, torch.bfloat16, config=cfg)
        y = fused_linear(x, wq, ws, cfg, tickets, xprefetch=xp, scale_fmt=fmt)
        if not torch.equal(y, ref):
            bad = (y != ref).sum().item()
            raise SystemExit(f"fused != quant + gemm: M={m} N={n} K={k} {cfg} xprefetch={xp} {fmt}: {bad} differ")
        if tickets.any():
            raise SystemExit("tickets not back to zero")
    print(f"check: fused == quant + gemm bit for bit ({len(shapes)} shapes x {len(ms)} M x {len(grid)} configs x 4)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--check-only", action="store_true", help="bit-exactness only (runs under TRITON_INTERPRET=1)")
    args = ap.parse_args()
    if args.check_only:
        dev = torch.device("cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu")
        check(dev, [(192, 640), (256, 384)], (1, 5), [GemmConfig("splitk", 16, 64, 4, 2, split_k=2),
                                                        GemmConfig("splitk", 16, 256, 4, 2, split_k=3)])  # fmt: skip
        return
    dev = torch.device("cuda")
    check(dev, [(4096, 4096), (2112, 7168), (512, 1000)], (1, 16), GRID[:4] + GRID[-2:])
    tickets = torch.zeros(1 << 16, dtype=torch.int32, device=dev)
    rows = []
    dummy = torch.empty(1, device=dev)
    t_empty = bench(lambda: _empty_kernel[(132,)](dummy))
    print(f"empty kernel (132 programs) in a graph: {t_empty:.2f} us", flush=True)
    for n, k in SUITE_NK:
        copies = max(2, -(-4 * L2 // (n * k)))
        wl = [
            weight_quant_128x128(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k**-0.5) for _ in range(copies)
        ]
        wb = [torch.randn(k, n, device=dev, dtype=torch.bfloat16) for _ in range(max(2, copies // 2))]
        for m in MS:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            xq, xs = act_quant_1x128(x)
            it, itb = itertools.cycle(range(copies)), itertools.cycle(range(len(wb)))
            cfg = _default_config(dev, m, n, k, True, cublas_ok=False)
            r = {"m": m, "n": n, "k": k, "default": str(cfg), "empty": t_empty}
            r["bf16"] = bench(lambda: torch.mm(x, wb[next(itb)]))
            r["linear"] = bench(lambda: fp8_block_linear(x, *wl[next(it)]))
            r["quant"] = bench(lambda: act_quant_1x128(x))
            if cfg.kind == "splitk":
                r["gemm1"] = bench(lambda: fp8_block_gemm(xq, xs, *wl[next(it)], None, torch.bfloat16, config=cfg,
                                                          tickets=tickets))  # fmt: skip
            fused = {}
            for c, xp in itertools.product(GRID, (True, False)):
                if xp is False and c not in (cfg, GRID[0]):
                    continue
                fused[f"{c} xprefetch={xp}"] = bench(lambda: fused_linear(x, *wl[next(it)], c, tickets, xp))
            best = min(fused, key=fused.get)
            r["fused"], r["fused_best"], r["fused_all"] = fused[best], best, fused
            if cfg.kind == "splitk":
                r["fused_default_cfg"] = fused.get(f"{cfg} xprefetch=True")
            r["stream_us_at_3TBps"] = (n * k + n * triton.cdiv(k, 128) * 4 / 128) / 3.0e6
            rows.append(r)
            print(f"M={m:2d} {n:5d}x{k:5d} bf16 {r['bf16']:6.1f} linear {r['linear']:6.1f} quant {r['quant']:5.1f} "
                  f"gemm1 {r.get('gemm1', float('nan')):6.1f} fused {r['fused']:6.1f} ({best}) "
                  f"stream@3TB/s {r['stream_us_at_3TBps']:5.1f} | bf16/linear {r['bf16'] / r['linear']:.2f} "
                  f"bf16/fused {r['bf16'] / r['fused']:.2f}", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "git": os.environ.get("FP8_BENCH_GIT_SHA"), "rows": rows}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
