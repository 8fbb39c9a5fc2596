"""Kernel lab: candidate block-scaled FP8 GEMM kernels for sm_90, checked and timed in one run.

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/kernel_lab.py --part all --budget-s 330
    TRITON_INTERPRET=1 python benchmarks/kernel_lab.py --dry-run        # CPU, tiny shapes, plumbing + numerics

GEMM (fp8inductor.reference.block_gemm_ref): ``y[m, n] = sum_kb xs[m, kb] * ws[n // 128, kb] *
sum_{k in kb} xq[m, k] * wq[n, k] (+ bias[n])``; xq [M, K] fp8 e4m3 row-major, xs [M, K/128] fp32,
wq [N, K] fp8 row-major (K-major), ws [N/128, K/128] fp32, y [M, N] bf16. BLOCK_K = 128: one scale
product per K block.

Variants (each a kernel + launcher below):

* ``v0_auto``      the shipped ``fp8_block_gemm`` with its own ``pick_config`` (the lab run of 2026-11-25 measured the earlier fp16-upcast kernel under the name v0_fp16)
* ``v1_naive``     fp8 x fp8 dot per K block into a fresh accumulator, ``acc += d * (sa * sb)``
* ``v2_unroll2``   two K blocks per iteration: two independent dots, each promoted with its own scales
* ``v3_lag``       the promotion of block kb is issued after the dot of block kb + 1 (software pipelined)
* ``v4_tma``       persistent grid (cps programs per SM) + TMA tensor descriptors, naive or lag promotion
* ``v7_ws``        v4 (naive promotion) with Triton's automatic warp specialization (``tl.range(...,
                   warp_specialize=True)``) on the tile loop (ws=outer) or the K loop (ws=inner): a producer
                   warp issues the TMA loads, consumer warpgroups run the dots and promotions
* ``v5_splitk``    small M: K split over programs, fp32 partials [SPLIT_K, M, N], the last split of a tile sums them and adds the bias
* ``v6_rescale``   one accumulator fed to each dot: ``acc = dot(a, b, acc * (s_prev / s))``, ``y = acc * s_last``
* ``x_chain``      ceiling, NOT a correct GEMM: ``acc = dot(a, b, acc)`` ignoring block scales (no error check)
* ``cublas_bw``    torch._scaled_mm blockwise (1x128 x 128x128); ``bf16``: torch.mm on bf16 weights

For every (variant, config, shape): one call (includes compilation), error stats against an exact
float64 reference of the same quantized inputs (dequantize, fp64 matmul), then timing:

* ``rel``    ||y - ref||_F / ||ref||_F (includes the bf16 output rounding, ~1.6e-3 for any path)
* ``err``    max |y - ref| / max_{m,n} sum_k |x_k w_k| (as testing.gemm_abs_sum_max), shown as log2
* ``errx``   the same after taking off half a bf16 ulp of ref per element: ~ the accumulation error
  alone (~0 for exact fp32 accumulation on GPU; the interpreter truncates to bf16, so not there)
* ``tolf``   fraction of outputs outside testing.gemm_tolerance(bf16): |d| > 2^-7 |ref| + 2^-18 abs_sum_max
  (0 for an exact-fp32-accumulation kernel; Hopper fp8 wgmma accumulation gives > 0, as cuBLAS may)

A result with rel >= 1e-2 (or NaN) is WRONG and not timed. Timing: triton.testing.do_bench median
(clears L2 before each call); for M <= 64 also do_bench_cudagraph (weights rotated over enough copies
to exceed 4 x L2). Writes ``$OUT/kernel_lab.json`` (else ./kernel_lab.json) after every shape.
``benchmarks/lab/compile_check.py`` compiles every config for sm_90 without a GPU (shared memory,
registers, spills, CTAs/SM, wgmma wait depths): see the notes above the config lists.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # must be set before triton is imported (kernels are made at decoration time)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse
import dataclasses
import itertools
import json
import math
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fp8inductor.reference import quantize_activation_ref, quantize_weight_ref

QBLOCK = 128  # scale block: activation group along K, weight block along N and K; also BLOCK_K
WRONG_REL = 1e-2  # rel Frobenius error at or above this: the result is wrong
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# Shared helpers and the production kernels (v1 = tiles, v5 = split-K) come from the package, so the
# lab measures exactly what ships; only the experimental variants are defined here.
from fp8inductor.kernels.block_gemm import (
    _fp8_gemm_tiles_kernel as _v1_naive_kernel,
)
from fp8inductor.kernels.block_gemm import (
    _grouped_tile,
    _kblock_scale,
    _load_kblock,
    _scale_ptrs,
    _store_tile,
    _tile_ptrs,
)

# =============================================================================================
# Grid kernels v1, v2, v3, v6, x_chain: one program per output tile, grouped order, pointer loads,
# one signature (launched by _launch_grid_kernel). int32 offsets: the launcher checks M*K, N*K, M*N < 2**31.
# =============================================================================================


@triton.jit(do_not_specialize=["M"])
def _v2_unroll2_kernel(
    xq_ptr,  # [M, K] float8e4nv activation codes, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32 activation scales, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv weight codes, strides (stride_wn, stride_wk); K-major is fast
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16 (any float) output, strides (stride_ym, stride_yn)
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_xsm,
    stride_xsk,
    stride_wn,
    stride_wk,
    stride_wsn,
    stride_wsk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    a_ptrs, b_ptrs = _tile_ptrs(
        xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K
    )
    xs_ptrs, ws_ptrs = _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    nkb = tl.cdiv(K, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(nkb // 2):  # two K blocks per iteration: two independent dots
        kb = 2 * i
        a0, b0 = _load_kblock(a_ptrs, b_ptrs, kb, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        a1, b1 = _load_kblock(a_ptrs, b_ptrs, kb + 1, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        d0 = tl.dot(a0, tl.trans(b0))
        d1 = tl.dot(a1, tl.trans(b1))
        acc += d0 * _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
        acc += d1 * _kblock_scale(xs_ptrs, ws_ptrs, kb + 1, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    if nkb % 2 == 1:  # odd number of K blocks: the last one alone
        a, b = _load_kblock(a_ptrs, b_ptrs, nkb - 1, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        d = tl.dot(a, tl.trans(b))
        acc += d * _kblock_scale(xs_ptrs, ws_ptrs, nkb - 1, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    _store_tile(acc, y_ptr, bias_ptr, pid_m, pid_n, M, N, stride_ym, stride_yn, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=["M"])
def _v3_lag_kernel(
    xq_ptr,  # [M, K] float8e4nv activation codes, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32 activation scales, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv weight codes, strides (stride_wn, stride_wk); K-major is fast
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16 (any float) output, strides (stride_ym, stride_yn)
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_xsm,
    stride_xsk,
    stride_wn,
    stride_wk,
    stride_wsn,
    stride_wsk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    a_ptrs, b_ptrs = _tile_ptrs(
        xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K
    )
    xs_ptrs, ws_ptrs = _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    # Prologue: the raw dot of block 0 and its scale are carried into the loop (K >= 1 block).
    a, b = _load_kblock(a_ptrs, b_ptrs, 0, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
    d_prev = tl.dot(a, tl.trans(b))
    s_prev = _kblock_scale(xs_ptrs, ws_ptrs, 0, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(1, tl.cdiv(K, BLOCK_K)):
        a, b = _load_kblock(a_ptrs, b_ptrs, kb, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        d = tl.dot(a, tl.trans(b))  # issued before the previous block is promoted
        acc += d_prev * s_prev  # promotion of block kb - 1 (may overlap the MMA of block kb)
        d_prev = d
        s_prev = _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    acc += d_prev * s_prev  # epilogue: the last block
    _store_tile(acc, y_ptr, bias_ptr, pid_m, pid_n, M, N, stride_ym, stride_yn, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=["M"])
def _v6_rescale_kernel(
    xq_ptr,  # [M, K] float8e4nv activation codes, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32 activation scales, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv weight codes, strides (stride_wn, stride_wk); K-major is fast
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16 (any float) output, strides (stride_ym, stride_yn)
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_xsm,
    stride_xsk,
    stride_wn,
    stride_wk,
    stride_wsn,
    stride_wsk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # acc holds sum_{j <= kb} s_j d_j / s_kb (in units of the current block's scale), so each dot
    # accumulates into it directly: acc_kb = dot(a_kb, b_kb, acc_{kb-1} * (s_{kb-1} / s_kb)).
    # (FBGEMM's fastacc rescale idea, per row. Scales are > 0: max(amax, 1e-4) / 448.)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    a_ptrs, b_ptrs = _tile_ptrs(
        xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K
    )
    xs_ptrs, ws_ptrs = _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    a, b = _load_kblock(a_ptrs, b_ptrs, 0, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
    acc = tl.dot(a, tl.trans(b))
    s_prev = _kblock_scale(xs_ptrs, ws_ptrs, 0, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    for kb in range(1, tl.cdiv(K, BLOCK_K)):
        a, b = _load_kblock(a_ptrs, b_ptrs, kb, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        s = _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
        acc = tl.dot(a, tl.trans(b), acc * (s_prev / s))
        s_prev = s
    acc = acc * s_prev
    _store_tile(acc, y_ptr, bias_ptr, pid_m, pid_n, M, N, stride_ym, stride_yn, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=["M"])
def _x_chain_kernel(
    xq_ptr,  # [M, K] float8e4nv activation codes, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32 activation scales, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv weight codes, strides (stride_wn, stride_wk); K-major is fast
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16 (any float) output, strides (stride_ym, stride_yn)
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_xsm,
    stride_xsk,
    stride_wn,
    stride_wk,
    stride_wsn,
    stride_wsk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Speed ceiling, NOT the block-scaled GEMM: an unbroken accumulator chain, scales of block 0 only.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    a_ptrs, b_ptrs = _tile_ptrs(
        xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K
    )
    xs_ptrs, ws_ptrs = _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(tl.cdiv(K, BLOCK_K)):
        a, b = _load_kblock(a_ptrs, b_ptrs, kb, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        acc = tl.dot(a, tl.trans(b), acc)
    acc = acc * _kblock_scale(xs_ptrs, ws_ptrs, 0, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    _store_tile(acc, y_ptr, bias_ptr, pid_m, pid_n, M, N, stride_ym, stride_yn, HAS_BIAS, BLOCK_M, BLOCK_N)


# =============================================================================================
# v4: persistent grid (NUM_SMS x cps programs loop over the tiles) + TMA tensor descriptors for xq, wq, y.
# =============================================================================================


@triton.jit(do_not_specialize=["M", "num_progs"])
def _v4_tma_kernel(
    xq_ptr,  # [M, K] float8e4nv, contiguous (descriptor: row stride K bytes, K % 16 == 0)
    xs_ptr,  # [M, ceil(K/128)] fp32, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv, contiguous
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16, contiguous (descriptor: N * 2 bytes % 16 == 0)
    M,
    N,
    K,
    num_progs,  # persistent programs (the grid size): min(tiles, NUM_SMS x CTAs per SM)
    stride_xsm,
    stride_xsk,
    stride_wsn,
    stride_wsk,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
    LAG: tl.constexpr,  # True: v3-style promotion (block kb promoted after the dot of kb + 1); False: naive
    FLATTEN: tl.constexpr,  # tl.range(flatten=...) over the tile loop (tutorial 09 uses True)
    WS_OUTER: tl.constexpr = False,  # v7: warp_specialize the persistent tile loop (tutorial 09's place)
    WS_INNER: tl.constexpr = False,  # v7: warp_specialize the K loop instead
):
    # Out-of-bounds TMA reads give zeros (partial M, N, K tiles); out-of-bounds stores are dropped.
    x_desc = tl.make_tensor_descriptor(xq_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(wq_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    y_desc = tl.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    nkb = tl.cdiv(K, BLOCK_K)
    tile_id_c = start_pid - num_progs  # separate epilogue counter, as tutorial 09 (pipeliner workaround)
    for tile_id in tl.range(start_pid, num_tiles, num_progs, flatten=FLATTEN, warp_specialize=WS_OUTER):
        pid_m, pid_n = _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        xs_ptrs, ws_ptrs = _scale_ptrs(
            xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK
        )
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if LAG:
            a = x_desc.load([off_m, 0])
            b = w_desc.load([off_n, 0])
            d_prev = tl.dot(a, b.T)
            s_prev = _kblock_scale(xs_ptrs, ws_ptrs, 0, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
            for kb in range(1, nkb):
                a = x_desc.load([off_m, kb * BLOCK_K])
                b = w_desc.load([off_n, kb * BLOCK_K])
                d = tl.dot(a, b.T)
                acc += d_prev * s_prev
                d_prev = d
                s_prev = _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
            acc += d_prev * s_prev
        else:
            for kb in tl.range(0, nkb, warp_specialize=WS_INNER):
                a = x_desc.load([off_m, kb * BLOCK_K])
                b = w_desc.load([off_n, kb * BLOCK_K])
                acc += tl.dot(a, b.T) * _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
        tile_id_c += num_progs
        pid_m, pid_n = _grouped_tile(tile_id_c, num_pid_m, num_pid_n, GROUP_M)
        if HAS_BIAS:
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(y_ptr.dtype.element_ty))


# =============================================================================================
# Launchers
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class Cfg:
    """One kernel configuration; ``extra`` holds variant-specific knobs (lag, flatten, cps, split)."""

    bm: int = 128
    bn: int = 128
    warps: int = 8
    stages: int = 4
    group_m: int = 8
    extra: tuple[tuple[str, object], ...] = ()

    def get(self, key: str, default=None):
        return dict(self.extra).get(key, default)

    @property
    def label(self) -> str:
        if self.bm == 0:
            return "auto"
        base = f"{self.bm}x{self.bn} w{self.warps} s{self.stages}"
        return " ".join([base] + [f"{k}={v}" for k, v in self.extra])


def _cfg(bm, bn, warps, stages, **extra) -> Cfg:
    return Cfg(bm, bn, warps, stages, 8, tuple(extra.items()))


AUTO = Cfg(0, 0, 0, 0, 0)  # library / self-configured implementations (v0, cuBLAS, bf16)


def _check_sizes(m: int, n: int, k: int) -> None:
    if max(m * k, n * k, m * n) >= 2**31:
        raise ValueError("lab kernels use int32 offsets: M*K, N*K, M*N must be < 2**31")


def _launch_grid_kernel(kernel, xq, xs, wq, ws, bias, cfg: Cfg) -> torch.Tensor:
    """One program per [bm, bn] output tile; kernel has the common grid-kernel signature."""
    m, k = xq.shape
    n = wq.shape[0]
    _check_sizes(m, n, k)
    if cfg.bn > QBLOCK and cfg.bn % QBLOCK or cfg.bn <= QBLOCK and QBLOCK % cfg.bn:
        raise ValueError("BLOCK_N must divide 128 or be a multiple of it")
    y = torch.empty((m, n), dtype=torch.bfloat16, device=xq.device)
    grid = (triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bn),)
    kernel[grid](
        xq,
        xs,
        wq,
        ws,
        bias,
        y,
        m,
        n,
        k,
        xq.stride(0),
        xq.stride(1),
        xs.stride(0),
        xs.stride(1),
        wq.stride(0),
        wq.stride(1),
        ws.stride(0),
        ws.stride(1),
        y.stride(0),
        y.stride(1),
        HAS_BIAS=bias is not None,
        EVEN_K=k % QBLOCK == 0,
        BLOCK_M=cfg.bm,
        BLOCK_N=cfg.bn,
        BLOCK_K=QBLOCK,
        QBLOCK=QBLOCK,
        GROUP_M=cfg.group_m,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
    )
    return y


def _grid_impl(kernel) -> Callable:
    return lambda xq, xs, wq, ws, bias, cfg: _launch_grid_kernel(kernel, xq, xs, wq, ws, bias, cfg)


NUM_SMS = 4  # set in main() from the device (dry run: 4, so programs loop over several tiles)


def _v4_tma(xq, xs, wq, ws, bias, cfg: Cfg) -> torch.Tensor:
    m, k = xq.shape
    n = wq.shape[0]
    _check_sizes(m, n, k)
    if k % 16 or n % 8 or not (xq.is_contiguous() and wq.is_contiguous()):
        raise ValueError("TMA descriptors need contiguous operands, K % 16 == 0 and N % 8 == 0")
    y = torch.empty((m, n), dtype=torch.bfloat16, device=xq.device)
    num_progs = min(NUM_SMS * int(cfg.get("cps", 1)), triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bn))
    _v4_tma_kernel[(num_progs,)](
        xq,
        xs,
        wq,
        ws,
        bias,
        y,
        m,
        n,
        k,
        num_progs,
        xs.stride(0),
        xs.stride(1),
        ws.stride(0),
        ws.stride(1),
        HAS_BIAS=bias is not None,
        BLOCK_M=cfg.bm,
        BLOCK_N=cfg.bn,
        BLOCK_K=QBLOCK,
        QBLOCK=QBLOCK,
        GROUP_M=cfg.group_m,
        LAG=bool(cfg.get("lag", True)),
        FLATTEN=bool(cfg.get("flatten", True)),
        WS_OUTER=cfg.get("ws") == "outer",
        WS_INNER=cfg.get("ws") == "inner",
        num_warps=cfg.warps,
        num_stages=cfg.stages,
    )
    return y


def _v5_splitk(xq, xs, wq, ws, bias, cfg: Cfg) -> torch.Tensor:
    from fp8inductor.kernels.block_gemm import GemmConfig, fp8_block_gemm

    split = GemmConfig("splitk", cfg.bm, cfg.bn, cfg.warps, cfg.stages, split_k=int(cfg.get("split", 4)))
    return fp8_block_gemm(xq, xs, wq, ws, bias, torch.bfloat16, config=split)


def _v0_auto(xq, xs, wq, ws, bias, cfg: Cfg) -> torch.Tensor:
    from fp8inductor.kernels.block_gemm import fp8_block_gemm

    return fp8_block_gemm(xq, xs, wq, ws, bias)


def _cublas_bw(xq, xs_cm, wq, ws, bias, cfg: Cfg) -> torch.Tensor:
    # xs_cm: [M, K/128] with strides (1, M); ws.t(): a view [K/128, N/128], strides (1, K/128).
    # M = 1 raises CUBLAS_STATUS_NOT_SUPPORTED (M % 4 == 0 needed).
    return torch._scaled_mm(xq, wq.t(), xs_cm, ws.t(), out_dtype=torch.bfloat16)


def _bf16_mm(x, w, bias, cfg: Cfg) -> torch.Tensor:
    return torch.mm(x, w.t())


# =============================================================================================
# Variants and configs
# =============================================================================================

# Configs, pruned with benchmarks/lab/compile_check.py (triton 3.6, sm_90; shared memory must stay
# <= 232448 B; it also prints CTAs/SM). In the PTX of every promoted variant the wgmma is waited for
# (wait_group 0) right after it is issued, before the promotion FMAs, even in v3 (x_chain keeps one
# in flight): the promotion only overlaps MMAs of *another* CTA on the same SM, hence the 4-warp
# 64x128 / 128x64 tiles (2-3 CTAs/SM) next to the 8-warp 128x128 ones (1 CTA/SM: 167+ regs).
# v1/v3/v4 hold two [BM, BN] fp32 tiles (acc and the fresh dot): 128x256 and 256x128 with 8 warps
# and 128x128 with 4 warps spill (kept for v1 only, as measured baselines; 16 warps cap registers
# at 128 and spill too). v2 buffers two K blocks per stage (s3 = 196 KB). v4 with lag + flatten
# keeps 2 * stages + 1 buffers (s3 = 262 KB: too big), hence flatten=0 there; cps = persistent
# programs per SM. v6 has one accumulator: 128x128 w8 takes 124 regs (2 CTAs/SM with s3).
V1_CFGS = [
    _cfg(128, 128, 8, 3),
    _cfg(128, 128, 8, 4),
    _cfg(64, 128, 4, 3),
    _cfg(64, 128, 4, 4),
    _cfg(128, 64, 4, 3),
    _cfg(128, 64, 4, 4),
    _cfg(64, 64, 4, 4),
    _cfg(128, 256, 8, 3),
    _cfg(128, 128, 4, 4),
    _cfg(256, 128, 8, 3),
]
V2_CFGS = [_cfg(128, 128, 8, 2), _cfg(64, 128, 4, 2), _cfg(128, 64, 4, 2)]
V3_CFGS = [_cfg(128, 128, 8, 3), _cfg(64, 128, 4, 4), _cfg(128, 64, 4, 4)]
V4_CFGS = [
    _cfg(128, 128, 8, 3, lag=0, flatten=1),
    _cfg(128, 128, 8, 4, lag=0, flatten=0),
    _cfg(128, 128, 8, 4, lag=1, flatten=0),
    _cfg(128, 128, 8, 2, lag=1, flatten=1),
    _cfg(64, 128, 4, 3, lag=0, flatten=1, cps=2),
    _cfg(64, 128, 4, 4, lag=0, flatten=1, cps=2),
    _cfg(128, 64, 4, 4, lag=0, flatten=1, cps=2),
    _cfg(64, 128, 4, 4, lag=1, flatten=0, cps=2),
]
# v7 (first tried 2026-12-06): Hopper warp specialization in triton 3.6 (triton PR #7136 / #7642: descriptor
# loops only). 4 warps = one consumer warpgroup; 8 = two, which may split the tile along M.
V7_CFGS = [
    _cfg(128, 128, 4, 4, lag=0, flatten=0, ws="outer"),
    _cfg(128, 128, 8, 4, lag=0, flatten=0, ws="outer"),
    _cfg(128, 128, 8, 3, lag=0, flatten=1, ws="outer"),
    _cfg(128, 256, 8, 3, lag=0, flatten=0, ws="outer"),
    _cfg(256, 128, 8, 3, lag=0, flatten=0, ws="outer"),
    _cfg(64, 128, 4, 4, lag=0, flatten=0, ws="outer", cps=2),
    _cfg(128, 128, 8, 4, lag=0, flatten=0, ws="inner"),
    _cfg(128, 128, 4, 4, lag=0, flatten=0, ws="inner"),
]
V6_CFGS = [_cfg(128, 128, 8, 3), _cfg(128, 128, 8, 4), _cfg(128, 128, 4, 4), _cfg(64, 128, 4, 4), _cfg(256, 128, 8, 3)]
CHAIN_CFGS = [_cfg(128, 128, 4, 4), _cfg(128, 128, 8, 4), _cfg(256, 128, 8, 3)]  # probe: 1338 / 1202 TF
SMALL_V1_CFGS = [_cfg(16, 64, 4, 4), _cfg(16, 128, 4, 4), _cfg(32, 128, 4, 4), _cfg(64, 64, 4, 4), _cfg(64, 128, 4, 4)]
SMALL_V5_CFGS = [_cfg(16, bn, 4, st, split=sp) for bn in (64, 128) for st in (3, 4) for sp in (2, 4, 8, 16)]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "fp8": fn(xq, xs, wq, ws, bias, cfg); "cublas": xs column-major; "bf16": fn(x, w, bias, cfg)
    fn: Callable
    large: tuple[Cfg, ...]  # configs for M > 64 (empty: not run)
    small: tuple[Cfg, ...]  # configs for M <= 64
    checked: bool = True  # False: not a correct GEMM (ceiling) or different inputs (bf16): no error gate


VARIANTS = [
    Variant("v0_auto", "fp8", _v0_auto, (AUTO,), (AUTO,)),
    Variant("v1_naive", "fp8", _grid_impl(_v1_naive_kernel), tuple(V1_CFGS), tuple(SMALL_V1_CFGS)),
    Variant("v2_unroll2", "fp8", _grid_impl(_v2_unroll2_kernel), tuple(V2_CFGS), ()),
    Variant("v3_lag", "fp8", _grid_impl(_v3_lag_kernel), tuple(V3_CFGS), ()),
    Variant("v5_splitk", "fp8", _v5_splitk, (), tuple(SMALL_V5_CFGS)),
    Variant("v6_rescale", "fp8", _grid_impl(_v6_rescale_kernel), tuple(V6_CFGS), ()),
    Variant("x_chain", "fp8", _grid_impl(_x_chain_kernel), tuple(CHAIN_CFGS), (), checked=False),
    Variant("cublas_bw", "cublas", _cublas_bw, (AUTO,), (AUTO,)),
    Variant("bf16", "bf16", _bf16_mm, (AUTO,), (AUTO,), checked=False),
    # Last in each shape: a device-side fault here (TMA) would end the run (see Lab.run_case).
    Variant("v4_tma", "fp8", _v4_tma, tuple(V4_CFGS), ()),
    Variant("v7_ws", "fp8", _v4_tma, tuple(V7_CFGS), ()),
]

# (M, N, K). Check shapes first (cheap), then the calibration-probe shapes, then the rest.
LARGE_SHAPES = [
    (512, 2112, 7168),
    (256, 4096, 4096),
    (4096, 4096, 4096),
    (2048, 6144, 4096),
    (8192, 7168, 16384),
    (2048, 2112, 7168),
    (512, 4096, 14336),
]
SMALL_SHAPES = [(m, n, k) for (n, k) in ((4096, 4096), (28672, 4096), (7168, 16384), (2112, 7168)) for m in (1, 16, 64)]
DRY_LARGE_SHAPES = [(96, 256, 256), (70, 200, 384), (130, 256, 320)]  # partial M/N tiles, odd nkb, K % 128 != 0
DRY_SMALL_SHAPES = [(1, 256, 384), (5, 200, 256), (16, 256, 320)]
SMALL_M = 64  # M <= SMALL_M: small-M variant/config set, cudagraph timing, GB/s


# =============================================================================================
# Data, reference, errors, timing
# =============================================================================================


@dataclasses.dataclass
class ShapeData:
    m: int
    n: int
    k: int
    x: torch.Tensor  # [M, K] bf16
    xq: torch.Tensor  # [M, K] fp8
    xs: torch.Tensor  # [M, K/128] fp32 row-major
    xs_cm: torch.Tensor  # [M, K/128] fp32, strides (1, M) (cuBLAS layout)
    wq: list[torch.Tensor]  # rotated [N, K] fp8 copies ([0] is the checked one)
    ws: list[torch.Tensor]  # matching [N/128, K/128] fp32 scales
    w16: list[torch.Tensor]  # rotated [N, K] bf16 copies (for the bf16 baseline)
    bias: torch.Tensor  # [N] bf16 (bias check only)
    ref: torch.Tensor  # [M, N] float64: exact block-scaled product of the quantized inputs
    abs_sum_max: float  # max_{m,n} sum_k |x w| (dequantized), float64


def _n_copies(bytes_one: int, small: bool, l2_bytes: int, max_copies: int, cap_bytes: int) -> int:
    if not small:
        return 1  # do_bench clears L2 before each call; a large-M GEMM reuses its tiles anyway
    want = math.ceil(4 * l2_bytes / bytes_one) + 1
    return max(1, min(want, max_copies, max(2, cap_bytes // bytes_one)))


def make_data(m: int, n: int, k: int, device: torch.device, small: bool, args) -> ShapeData:
    g = torch.Generator(device=device).manual_seed(1000 * m + n + k)
    x = torch.randn(m, k, generator=g, device=device).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g, device=device) / math.sqrt(k)).to(torch.bfloat16)
    bias = torch.randn(n, generator=g, device=device).to(torch.bfloat16)
    xq, xs = quantize_activation_ref(x)
    wq, ws = quantize_weight_ref(w)
    l2 = args.l2_bytes
    n8 = _n_copies(n * k + ws.numel() * 4, small, l2, args.max_copies, args.copy_cap_bytes)
    n16 = _n_copies(2 * n * k, small, l2, args.max_copies, args.copy_cap_bytes)
    wqs = [wq] + [wq.clone() for _ in range(n8 - 1)]
    wss = [ws] + [ws.clone() for _ in range(n8 - 1)]
    w16 = [w] + [w.clone() for _ in range(n16 - 1)]
    # Exact reference in float64 (dequantized products are exact to 2**-53 relative).
    kb = triton.cdiv(k, QBLOCK)
    xd = xq.double() * xs.double().repeat_interleave(QBLOCK, dim=1)[:, :k]
    wd = wq.double() * ws.double().repeat_interleave(QBLOCK, dim=0)[:n].repeat_interleave(QBLOCK, dim=1)[:, :k]
    assert xs.shape[1] == kb
    ref = xd @ wd.t()
    abs_sum_max = float((xd.abs() @ wd.abs().t()).max())
    del xd, wd
    return ShapeData(m, n, k, x, xq, xs, xs.t().contiguous().t(), wqs, wss, w16, bias, ref, abs_sum_max)


def error_stats(y: torch.Tensor, ref: torch.Tensor, abs_sum_max: float) -> dict:
    """rel: Frobenius; err: max |y - ref| / abs_sum_max; errx: the same after taking off half a bf16
    ulp of ref per element (what an exact fp32 sum rounded to bf16 may differ by), i.e. roughly the
    accumulation error alone; tolf: fraction outside testing.gemm_tolerance(bf16)."""
    d = (y.double() - ref).abs_()
    ref_norm = float(ref.norm())
    rel = float(d.norm()) / ref_norm if ref_norm > 0 else float(d.norm())
    scale = abs_sum_max if abs_sum_max > 0 else 1.0
    err = float(d.max()) / scale
    tolf = float((~(d <= 2.0**-7 * ref.abs() + 2.0**-18 * abs_sum_max)).double().mean())  # NaN counts as outside
    _, expo = torch.frexp(ref)  # |ref| in [2**(e-1), 2**e): a bf16 ulp is 2**(e-8), half of it 2**(e-9)
    half_ulp = torch.where(ref == 0, torch.zeros_like(ref), torch.ldexp(torch.ones_like(ref), expo - 9))
    errx = float((d - half_ulp).clamp_(min=0).max()) / scale
    if not math.isfinite(float(d.sum())):
        rel = err = errx = float("nan")
    return {"rel": rel, "err": err, "errx": errx, "tolf": tolf}


def _do_bench(fn, warmup: float, rep: float) -> float:
    from triton.testing import do_bench

    try:
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    except TypeError:  # older signature
        return float(do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5]))


def _do_bench_graph(fn, rep: float) -> float:
    from triton.testing import do_bench_cudagraph

    try:
        return float(do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    except TypeError:
        return float(do_bench_cudagraph(fn, rep=rep, quantiles=[0.5]))


# =============================================================================================
# Runner
# =============================================================================================


# Errors after which the CUDA context is unusable (every later call fails): stop measuring.
STICKY_CUDA_ERRORS = (
    "illegal memory access",
    "illegal instruction",
    "unspecified launch failure",
    "misaligned address",
    "device-side assert",
    "CUDA_ERROR_ILLEGAL",
    "an illegal",
)


def _fmt_err(e: float | None) -> str:
    if e is None:
        return "   -  "
    if not math.isfinite(e):
        return "  nan "
    return f"2^{math.log2(e):5.1f}" if e > 0 else "   0  "


class Lab:
    def __init__(self, args, device: torch.device):
        self.args = args
        self.device = device
        self.rows: list[dict] = []
        self.env: dict = {}
        self.out_path = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "kernel_lab.json"
        self.over_budget = False
        self.cuda_dead = ""  # set after a device-side fault: the CUDA context is unusable from then on

    def budget_left(self) -> bool:
        if self.cuda_dead:
            return False
        if time.time() - T0 > self.args.budget_s:
            if not self.over_budget:
                log(f"BUDGET: {self.args.budget_s:.0f} s used up; no new measurements")
            self.over_budget = True
        return not self.over_budget

    def _call(self, v: Variant, d: ShapeData, i: int, bias, cfg: Cfg):
        """Returns a no-argument callable running variant v on weight copy i."""
        if v.kind == "fp8":
            return lambda: v.fn(d.xq, d.xs, d.wq[i], d.ws[i], bias, cfg)
        if v.kind == "cublas":
            return lambda: v.fn(d.xq, d.xs_cm, d.wq[i], d.ws[i], bias, cfg)
        return lambda: v.fn(d.x, d.w16[i % len(d.w16)], bias, cfg)

    def run_case(self, v: Variant, cfg: Cfg, d: ShapeData, with_bias: bool = False) -> dict:
        a = self.args
        small = d.m <= SMALL_M
        row = {
            "m": d.m,
            "n": d.n,
            "k": d.k,
            "variant": v.name,
            "cfg": cfg.label + (" +bias" if with_bias else ""),
            "status": "ok",
        }
        bias = d.bias if with_bias else None
        try:
            t = time.time()
            y = self._call(v, d, 0, bias, cfg)()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            row["first_call_s"] = round(time.time() - t, 3)
            ref = d.ref + d.bias.double()[None, :] if with_bias else d.ref
            if v.kind != "bf16":
                row.update(error_stats(y, ref, d.abs_sum_max))
                if v.checked and not row["rel"] < WRONG_REL:
                    row["status"] = "WRONG"
            del y
            if row["status"] == "ok" and not with_bias:
                row.update(self.time_case(v, cfg, d, small))
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
            row["status"] = "fail"
            row["note"] = " | ".join(s.strip() for s in msg if s.strip())[:300]
            if a.verbose:
                traceback.print_exc()
            if any(t in str(exc) for t in STICKY_CUDA_ERRORS):
                self.cuda_dead = f"{v.name} [{row['cfg']}] at M={d.m} N={d.n} K={d.k}"
                log(
                    f"FATAL: device-side fault in {self.cuda_dead}; the CUDA context is lost. Rerun with "
                    f"--skip {v.name} (or without that config)."
                )
        self.rows.append(row)
        self.print_row(row)
        return row

    def time_case(self, v: Variant, cfg: Cfg, d: ShapeData, small: bool) -> dict:
        a = self.args
        copies = len(d.w16) if v.kind == "bf16" else len(d.wq)
        fns = [self._call(v, d, i, None, cfg) for i in range(copies)]
        it = itertools.cycle(fns)

        def fn():
            return next(it)()

        out: dict = {"copies": copies}
        if a.dry_run:  # interpreter: one timed call, plumbing only
            t = time.perf_counter()
            fn()
            out["ms"] = (time.perf_counter() - t) * 1e3
        else:
            out["ms"] = _do_bench(fn, a.warmup_ms, a.rep_ms)
            if small and not a.no_cudagraph:
                try:
                    out["ms_graph"] = _do_bench_graph(fn, a.graph_rep_ms)
                except Exception as exc:
                    out["graph_note"] = f"{type(exc).__name__}: {exc}"[:200]
        flops = 2.0 * d.m * d.n * d.k
        best_ms = min(out["ms"], out.get("ms_graph", math.inf))
        out["tflops"] = flops / (out["ms"] * 1e-3) / 1e12
        if "ms_graph" in out:
            out["tflops_graph"] = flops / (out["ms_graph"] * 1e-3) / 1e12
        if small:  # minimal bytes moved: weights + scales (+ x, xs, y)
            nkb = triton.cdiv(d.k, QBLOCK)
            if v.kind == "bf16":
                nbytes = 2 * d.n * d.k + 2 * d.m * d.k + 2 * d.m * d.n
            else:
                nbytes = d.n * d.k + 4 * triton.cdiv(d.n, QBLOCK) * nkb + d.m * d.k + 4 * d.m * nkb + 2 * d.m * d.n
            out["gbps"] = nbytes / (best_ms * 1e-3) / 1e9
        return out

    def print_row(self, r: dict) -> None:
        head = f"M={r['m']:5d} N={r['n']:5d} K={r['k']:5d} {r['variant']:<10s} {r['cfg']:<32s}"
        if r["status"] == "fail":
            log(f"{head} fail: {r.get('note', '')}")
            return
        s = f"{head} {r['status']:<5s}"
        if "ms" in r:
            s += f" {r['ms']:8.4f} ms {r['tflops']:7.1f} TF"
            if "ms_graph" in r:
                s += f" | graph {r['ms_graph']:8.4f} ms {r['tflops_graph']:7.1f} TF"
            if "gbps" in r:
                s += f" {r['gbps']:6.0f} GB/s"
        if "rel" in r:
            s += f"  rel {r['rel']:.2e} err {_fmt_err(r['err'])} errx {_fmt_err(r['errx'])} tolf {100 * r['tolf']:.3g}%"
        s += f"  (first {r.get('first_call_s', 0):.1f}s)"
        log(s)

    def run_shape(self, m: int, n: int, k: int, variants: list[Variant], bias_check: bool) -> None:
        small = m <= SMALL_M
        if not self.budget_left():
            return
        t = time.time()
        try:
            d = make_data(m, n, k, self.device, small, self.args)
        except Exception as exc:
            log(f"M={m} N={n} K={k}: data/reference failed: {type(exc).__name__}: {exc}")
            return
        log(
            f"== M={m} N={n} K={k}: data + fp64 reference {time.time() - t:.1f}s, {len(d.wq)} fp8 / "
            f"{len(d.w16)} bf16 weight copies, abs_sum_max {d.abs_sum_max:.4g}"
        )
        for v in variants:
            cfgs = v.small if small else v.large
            if self.device.type != "cuda" and v.kind != "fp8":
                continue  # dry run: no cuBLAS, no bf16 timing
            for cfg in cfgs:
                if not self.budget_left():
                    break
                self.run_case(v, cfg, d)
            if bias_check and v.checked and v.kind == "fp8" and cfgs and self.budget_left():
                ok = [
                    r
                    for r in self.rows
                    if (r["m"], r["n"], r["k"], r["variant"]) == (m, n, k, v.name) and r["status"] == "ok"
                ]
                cfg = next((c for c in cfgs if ok and c.label == ok[0]["cfg"]), cfgs[0])
                self.run_case(v, cfg, d, with_bias=True)
        self.print_shape_summary(m, n, k)
        del d
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.write_json()

    def best(self, m: int, n: int, k: int) -> dict[str, dict]:
        """Fastest ok (timed) row per variant for one shape."""
        out: dict[str, dict] = {}
        for r in self.rows:
            if (r["m"], r["n"], r["k"]) != (m, n, k) or r["status"] != "ok" or "ms" not in r:
                continue
            key = min(r["ms"], r.get("ms_graph", math.inf))
            cur = out.get(r["variant"])
            if cur is None or key < min(cur["ms"], cur.get("ms_graph", math.inf)):
                out[r["variant"]] = r
        return out

    def print_shape_summary(self, m: int, n: int, k: int) -> None:
        best = self.best(m, n, k)
        print(f"\n  best per variant, M={m} N={n} K={k}:", flush=True)
        for name, r in best.items():
            g = f" graph {r['tflops_graph']:7.1f} TF" if "tflops_graph" in r else ""
            bw = f" {r['gbps']:6.0f} GB/s" if "gbps" in r else ""
            e = (
                f" rel {r['rel']:.2e} err {_fmt_err(r['err'])} errx {_fmt_err(r['errx'])} tolf {100 * r['tolf']:.3g}%"
                if "rel" in r
                else ""
            )
            print(f"    {name:<11s} {r['tflops']:7.1f} TF{g}{bw}{e}   [{r['cfg']}]", flush=True)
        bad = [r for r in self.rows if (r["m"], r["n"], r["k"]) == (m, n, k) and r["status"] in ("WRONG", "fail")]
        for r in bad:
            print(f"    ! {r['variant']} [{r['cfg']}] {r['status']} {r.get('note', '')[:120]}", flush=True)
        print(flush=True)

    def print_final(self) -> None:
        shapes = list(dict.fromkeys((r["m"], r["n"], r["k"]) for r in self.rows))
        names = [v.name for v in VARIANTS if any(r["variant"] == v.name for r in self.rows)]
        print(
            "\n==== SUMMARY: best TFLOP/s per variant (do_bench median; small M: max of do_bench and"
            " cudagraph, GB/s in brackets) ====",
            flush=True,
        )
        print(f"{'M x N x K':<20s}" + "".join(f"{nm:>16s}" for nm in names), flush=True)
        for s in shapes:
            best = self.best(*s)
            cells = []
            for nm in names:
                r = best.get(nm)
                if r is None:
                    st = {x["status"] for x in self.rows if (x["m"], x["n"], x["k"]) == s and x["variant"] == nm}
                    cells.append(f"{'/'.join(sorted(st)) or '-':>16s}")
                    continue
                tf = max(r["tflops"], r.get("tflops_graph", 0.0))
                cells.append(f"{tf:9.1f}" + (f" [{r['gbps']:4.0f}]" if "gbps" in r else "       "))
            print(f"{'x'.join(map(str, s)):<20s}" + "".join(cells), flush=True)
        print("\n==== ERRORS over all checked runs: max rel | max err | max errx | max tolf ====", flush=True)
        for nm in names:
            rs = [r for r in self.rows if r["variant"] == nm and "rel" in r and r["status"] in ("ok", "WRONG")]
            if not rs:
                continue
            nwrong = sum(r["status"] == "WRONG" for r in rs)
            print(
                f"  {nm:<11s} rel {max(r['rel'] for r in rs):.2e}  err {_fmt_err(max(r['err'] for r in rs))}"
                f"  errx {_fmt_err(max(r['errx'] for r in rs))}"
                f"  tolf {100 * max(r['tolf'] for r in rs):.3g}%  ({len(rs)} runs, {nwrong} WRONG)",
                flush=True,
            )
        nfail = sum(r["status"] == "fail" for r in self.rows)
        print(f"\n{len(self.rows)} runs, {nfail} failed to run; JSON: {self.out_path}", flush=True)
        if self.over_budget:
            print(f"STOPPED EARLY: budget of {self.args.budget_s:.0f} s reached (see --part / --shapes)", flush=True)
        if self.cuda_dead:
            print(f"STOPPED EARLY: CUDA context lost after {self.cuda_dead}", flush=True)

    def write_json(self) -> None:
        try:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "env": self.env,
                "args": vars(self.args),
                "over_budget": self.over_budget,
                "cuda_dead": self.cuda_dead,
                "elapsed_s": round(time.time() - T0, 1),
                "rows": self.rows,
            }
            self.out_path.write_text(json.dumps(payload, indent=1, default=str))
        except OSError as exc:
            log(f"could not write {self.out_path}: {exc}")


def _env_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "interpret": os.environ.get("TRITON_INTERPRET", ""),
        "device": str(device),
        "num_sms": NUM_SMS,
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, cc=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    if os.environ.get("FP8_BENCH_GIT_SHA"):  # a copy without (or with stale) git metadata names it
        info["git"] = os.environ["FP8_BENCH_GIT_SHA"]
        return info
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git"] = "unknown"
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("large", "small", "all"), default="all")
    p.add_argument("--budget-s", type=float, default=330.0, help="start no new measurement after this")
    p.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny shapes")
    p.add_argument("--variants", default="", help="comma list of variant names to run (default: all)")
    p.add_argument("--skip", default="", help="comma list of variant names not to run")
    p.add_argument("--shapes", default="", help="override shapes: MxNxK,MxNxK (variant set chosen by M)")
    p.add_argument("--warmup-ms", type=float, default=10.0)
    p.add_argument("--rep-ms", type=float, default=40.0)
    p.add_argument("--graph-rep-ms", type=float, default=10.0)
    p.add_argument("--no-cudagraph", action="store_true", help="skip do_bench_cudagraph for small M")
    p.add_argument("--max-copies", type=int, default=64)
    p.add_argument("--copy-cap-bytes", type=int, default=2 * 2**30, help="cap on rotated weight bytes per format")
    p.add_argument("--out", default="", help="JSON path (default $OUT/kernel_lab.json or ./kernel_lab.json)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing configs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    global NUM_SMS
    args = parse_args(argv)
    dry = args.dry_run
    if dry and os.environ.get("TRITON_INTERPRET") != "1":
        print("--dry-run needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if not dry and not torch.cuda.is_available():
        print("no GPU: use --dry-run (with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if dry else torch.device("cuda")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        NUM_SMS = props.multi_processor_count
        args.l2_bytes = int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        args.l2_bytes = 64 * 2**10  # dry run: exercise the rotation with a few copies
        args.max_copies = 3

    def alloc(size: int, alignment: int, stream):  # workspace of device-side TMA descriptors (v4)
        return torch.empty(size, device=device, dtype=torch.int8)

    triton.set_allocator(alloc)

    lab = Lab(args, device)
    lab.env = _env_info(device)
    log(f"kernel lab: {lab.env}")
    wanted = {s for s in args.variants.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    unknown = (wanted | skip) - {v.name for v in VARIANTS}
    if unknown:
        print(f"unknown variants {sorted(unknown)}; known: {[v.name for v in VARIANTS]}", file=sys.stderr)
        return 2
    variants = [v for v in VARIANTS if (not wanted or v.name in wanted) and v.name not in skip]

    if args.shapes:
        shapes = [tuple(int(t) for t in s.lower().split("x")) for s in args.shapes.split(",") if s]
    else:
        large, small = (DRY_LARGE_SHAPES, DRY_SMALL_SHAPES) if dry else (LARGE_SHAPES, SMALL_SHAPES)
        shapes = (large if args.part in ("large", "all") else []) + (small if args.part in ("small", "all") else [])
    seen_small = seen_large = False
    for m, n, k in shapes:
        small = m <= SMALL_M
        bias_check = (not seen_small) if small else (not seen_large)  # once per part, on its first shape
        seen_small |= small
        seen_large |= not small
        lab.run_shape(m, n, k, variants, bias_check or dry)
    lab.write_json()
    lab.print_final()

    if dry:  # every checked variant must have run correctly somewhere, and nothing may be wrong
        bad = [r for r in lab.rows if r["status"] != "ok" and r["variant"] != "x_chain"]
        ran = {r["variant"] for r in lab.rows if r["status"] == "ok"}
        expected = [
            v.name
            for v in variants
            if v.kind == "fp8" and any(v.small if m <= SMALL_M else v.large for m, _, _ in shapes)
        ]
        missing = [name for name in expected if name not in ran]
        tol_bad = [r for r in lab.rows if VARIANT_BY_NAME[r["variant"]].checked and r.get("tolf", 0) > 0]
        if bad or missing or tol_bad:
            print(
                f"DRY RUN FAILED: {len(bad)} bad rows, missing {missing}, {len(tol_bad)} outside tolerance",
                file=sys.stderr,
            )
            return 1
        print("DRY RUN OK: every variant and config within the exact-fp32 tolerance", flush=True)
    return 0


VARIANT_BY_NAME = {v.name: v for v in VARIANTS}

if __name__ == "__main__":
    sys.exit(main())
