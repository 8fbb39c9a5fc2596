"""Gluon lab: a block-scaled FP8 GEMM whose promotion overlaps the next K block's wgmma (sm_90).

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/lab/gluon_gemm_lab.py --out $OUT/gluon_lab.json  # H100
    python benchmarks/lab/gluon_gemm_lab.py --compile-only     # any machine: compile for sm_90, resources

Why. Triton 3.6 lowers ``acc += tl.dot(a, b) * scale`` to a wgmma followed by a full
``wgmma.wait_group 0`` before the promotion FMAs, so the tensor cores idle once per 128-wide K block
(fp8inductor/kernels/block_gemm.py: 0.76x cuBLAS blockwise at M >= 2048). Gluon (Triton's
explicit-layout dialect, ``triton.experimental.gluon``, shipped with triton 3.6) lets the kernel
issue block kb + 1's wgmma *before* waiting for block kb (``warpgroup_mma_wait(num_outstanding=1)``)
and promote block kb while kb + 1 multiplies: the DeepGEMM order.

Kernel (one output tile per program, grouped tile order):
  xq [M, K] fp8 e4m3 row-major (TMA), xs [M, ceil(K/128)] fp32 any strides,
  wq [N, K] fp8 e4m3 row-major (TMA), ws [ceil(N/128), ceil(K/128)] fp32 any strides,
  y  [M, N] bf16 row-major (TMA store).  BLOCK_K = 128 = the scale block; BLOCK_N divides 128.
  STAGES-deep TMA ring of (a, b) K blocks, one mbarrier per stage. Per K block kb:
    wait stage kb; cur = wgmma(a[kb], b[kb]^T, 0) async;  prev = wait(1) -> block kb - 1 done;
    acc += prev * xs[:, kb-1] * ws[n-block, kb-1];  refill block kb-1's stage with block kb-1+STAGES.
  Registers: acc, cur and prev are live at once (3 x BLOCK_M*BLOCK_N/threads fp32).

Checked against fp8inductor.reference.block_gemm_ref (fp64 of the same quantized inputs) with the
project's gemm tolerance; timed with triton.testing.do_bench (median) against cuBLAS blockwise
(torch._scaled_mm) and the shipped Triton TMA kernel, weights rotated over copies beyond L2.
"""

# ruff: noqa: B023  (the timed closures run within their loop iteration)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

QBLOCK = 128


@gluon.jit
def _tile_offsets(M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """This program's output tile (off_m, off_n), grouped order: GROUP_M row tiles sweep the columns together."""
    pid = gl.program_id(0)
    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_size_m = gl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size_m)
    pid_n = (pid % num_in_group) // group_size_m
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@gluon.jit
def _scale_rows(xs_ptr, ws_ptr, off_m, off_n, M, stride_xsm, stride_wsn, BLOCK_M: gl.constexpr, layout: gl.constexpr):
    """Scale pointers at K block 0: xs rows [BLOCK_M] (rows past M read row 0, never stored) in
    ``layout``, and the tile's one weight-scale row (BLOCK_N divides 128)."""
    offs_m = off_m + gl.arange(0, BLOCK_M, layout=layout)
    return xs_ptr + gl.where(offs_m < M, offs_m, 0).to(gl.int64) * stride_xsm, ws_ptr + (off_n // 128) * stride_wsn


@gluon.jit
def _store_tile(y_desc, acc, off_m, off_n):
    """acc [BLOCK_M, BLOCK_N] fp32 -> y's tile at (off_m, off_n) in y's dtype, through shared memory
    and a TMA store (rows/columns past M/N are dropped by the TMA unit)."""
    y_smem = gl.allocate_shared_memory(y_desc.dtype, y_desc.block_type.shape, y_desc.layout)
    y_smem.store(acc.to(y_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(y_desc, [off_m, off_n], y_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _gluon_fp8_gemm_kernel(
    x_desc,  # TMA over xq [M, K] fp8, block [BLOCK_M, 128]
    w_desc,  # TMA over wq [N, K] fp8, block [BLOCK_N, 128]
    y_desc,  # TMA over y [M, N] bf16, block [BLOCK_M, BLOCK_N]
    xs_ptr,  # [M, nkb] fp32
    ws_ptr,  # [ceil(N/128), nkb] fp32
    M, N, K,
    stride_xsm, stride_xsk, stride_wsn, stride_wsk,
    STAGES: gl.constexpr,
    GROUP_M: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    BLOCK_M: gl.constexpr = y_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = y_desc.block_type.shape[1]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    gl.static_assert(BLOCK_K == 128)
    gl.static_assert(128 % BLOCK_N == 0)

    off_m, off_n = _tile_offsets(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    nkb = gl.cdiv(K, BLOCK_K)

    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32]
    )
    row_layout: gl.constexpr = gl.SliceLayout(1, mma_layout)

    a_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    b_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    stage_bytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes

    # prologue: K blocks 0 .. STAGES-2 in flight
    for i in gl.static_range(STAGES - 1):
        ok = i < nkb
        mbarrier.expect(bars.index(i), stage_bytes, pred=ok)
        tma.async_copy_global_to_shared(x_desc, [off_m, i * BLOCK_K], bars.index(i), a_bufs.index(i), pred=ok)
        tma.async_copy_global_to_shared(w_desc, [off_n, i * BLOCK_K], bars.index(i), b_bufs.index(i), pred=ok)

    xs_rows, ws_row = _scale_rows(xs_ptr, ws_ptr, off_m, off_n, M, stride_xsm, stride_wsn, BLOCK_M, row_layout)

    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)

    # K block 0: load block STAGES-1 into the last stage, start block 0's MMA
    nxt = STAGES - 1
    ok = nxt < nkb
    mbarrier.expect(bars.index(STAGES - 1), stage_bytes, pred=ok)
    tma.async_copy_global_to_shared(
        x_desc, [off_m, nxt * BLOCK_K], bars.index(STAGES - 1), a_bufs.index(STAGES - 1), pred=ok
    )
    tma.async_copy_global_to_shared(
        w_desc, [off_n, nxt * BLOCK_K], bars.index(STAGES - 1), b_bufs.index(STAGES - 1), pred=ok
    )
    mbarrier.wait(bars.index(0), 0)
    prev = warpgroup_mma(a_bufs.index(0), b_bufs.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    s_prev = gl.load(xs_rows) * gl.load(ws_row)  # [BLOCK_M] scale of block 0

    for kb in range(1, nkb):
        s = kb % STAGES
        mbarrier.wait(bars.index(s), (kb // STAGES) & 1)
        cur = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), zero, use_acc=False, is_async=True)
        s_cur = gl.load(xs_rows + kb * stride_xsk) * gl.load(ws_row + kb * stride_wsk)
        done = warpgroup_mma_wait(num_outstanding=1, deps=(prev,))  # block kb-1 finished; kb still running
        acc += done * s_prev[:, None]
        # block kb-1's stage is free: load block kb-1+STAGES into it
        ps = (kb - 1) % STAGES
        nxt = kb - 1 + STAGES
        ok = nxt < nkb
        mbarrier.expect(bars.index(ps), stage_bytes, pred=ok)
        tma.async_copy_global_to_shared(x_desc, [off_m, nxt * BLOCK_K], bars.index(ps), a_bufs.index(ps), pred=ok)
        tma.async_copy_global_to_shared(w_desc, [off_n, nxt * BLOCK_K], bars.index(ps), b_bufs.index(ps), pred=ok)
        prev = cur
        s_prev = s_cur

    done = warpgroup_mma_wait(num_outstanding=0, deps=(prev,))
    acc += done * s_prev[:, None]

    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
    _store_tile(y_desc, acc, off_m, off_n)


# ----------------------------------------------------------------------------------------------
# Warp-specialized variant: a 1-warp TMA producer and the consumer warpgroup(s), per-stage
# ready/empty mbarriers instead of CTA-wide bar.sync (the first kernel's loop had four per K block)
# ----------------------------------------------------------------------------------------------


@gluon.jit
def _ws_loader(x_desc, w_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, nkb):
    """Producer (1 warp): K block kb into stage kb % STAGES once the consumers released it."""
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    for kb in range(nkb):
        s = kb % STAGES
        # a fresh mbarrier counts as having completed the phase before 0: the first lap passes
        mbarrier.wait(empty.index(s), ((kb // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(s), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(x_desc, [off_m, kb * BLOCK_K], ready.index(s), a_bufs.index(s))
        tma.async_copy_global_to_shared(w_desc, [off_n, kb * BLOCK_K], ready.index(s), b_bufs.index(s))


@gluon.jit
def _ws_consumer(y_desc, a_bufs, b_bufs, ready, empty, xs_rows, ws_row, stride_xsk, stride_wsk, off_m, off_n, nkb,
                 num_warps: gl.constexpr):  # fmt: skip
    """MMA + promotion (num_warps warps): block kb's wgmma runs while block kb-1 is promoted; a stage
    is released (empty arrive) once its wgmma is known complete."""
    STAGES: gl.constexpr = a_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = y_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = y_desc.block_type.shape[1]
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32]
    )
    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)
    mbarrier.wait(ready.index(0), 0)
    prev = warpgroup_mma(a_bufs.index(0), b_bufs.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    s_prev = gl.load(xs_rows) * gl.load(ws_row)
    for kb in range(1, nkb):
        s = kb % STAGES
        mbarrier.wait(ready.index(s), (kb // STAGES) & 1)
        cur = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), zero, use_acc=False, is_async=True)
        s_cur = gl.load(xs_rows + kb * stride_xsk) * gl.load(ws_row + kb * stride_wsk)
        done = warpgroup_mma_wait(num_outstanding=1, deps=(prev,))
        mbarrier.arrive(empty.index((kb - 1) % STAGES), count=1)
        acc += done * s_prev[:, None]
        prev = cur
        s_prev = s_cur
    done = warpgroup_mma_wait(num_outstanding=0, deps=(prev,))
    acc += done * s_prev[:, None]
    _store_tile(y_desc, acc, off_m, off_n)


@gluon.jit
def _gluon_fp8_gemm_ws_kernel(
    x_desc, w_desc, y_desc, xs_ptr, ws_ptr, M, N, K,
    stride_xsm, stride_xsk, stride_wsn, stride_wsk,
    STAGES: gl.constexpr, GROUP_M: gl.constexpr, LOADER_REGS: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """The kernel above, warp-specialized (same operands and layouts)."""
    BLOCK_M: gl.constexpr = y_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = y_desc.block_type.shape[1]
    BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
    gl.static_assert(BLOCK_K == 128)
    gl.static_assert(128 % BLOCK_N == 0)
    off_m, off_n = _tile_offsets(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    nkb = gl.cdiv(K, BLOCK_K)

    a_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    b_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)

    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32]
    )
    row_layout: gl.constexpr = gl.SliceLayout(1, mma_layout)
    xs_rows, ws_row = _scale_rows(xs_ptr, ws_ptr, off_m, off_n, M, stride_xsm, stride_wsn, BLOCK_M, row_layout)

    gl.warp_specialize(
        [
            (_ws_consumer, (y_desc, a_bufs, b_bufs, ready, empty, xs_rows, ws_row, stride_xsk, stride_wsk,
                            off_m, off_n, nkb, num_warps)),
            (_ws_loader, (x_desc, w_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, nkb)),
        ],
        [1],
        [LOADER_REGS],
    )  # fmt: skip


def gluon_fp8_gemm_ws(xq, xs, wq, ws, block_m=128, block_n=128, stages=5, num_warps=8, group_m=8, loader_regs=40):
    """``gluon_fp8_gemm`` with the warp-specialized kernel (same arguments and result)."""
    return gluon_fp8_gemm(xq, xs, wq, ws, block_m, block_n, stages, num_warps, group_m, ws_loader_regs=loader_regs)


def gluon_fp8_gemm(
    xq: torch.Tensor,  # [M, K] fp8 e4m3, row-major
    xs: torch.Tensor,  # [M, ceil(K/128)] fp32
    wq: torch.Tensor,  # [N, K] fp8 e4m3, row-major
    ws: torch.Tensor,  # [ceil(N/128), ceil(K/128)] fp32
    block_m: int = 128,
    block_n: int = 128,
    stages: int = 5,
    num_warps: int = 8,
    group_m: int = 8,
    ws_loader_regs: int | None = None,
) -> torch.Tensor:
    """y [M, N] bf16 = the block-scaled product (see module docstring); ``ws_loader_regs``: run the
    warp-specialized kernel, its producer warp limited to that many registers."""
    m, k = xq.shape
    n = wq.shape[0]
    if k % 16 or n % 8 or not xq.is_contiguous() or not wq.is_contiguous():
        raise ValueError(f"TMA needs K % 16 == 0, N % 8 == 0 and contiguous operands (M={m} N={n} K={k})")
    y = torch.empty(m, n, dtype=torch.bfloat16, device=xq.device)
    f8 = gl.float8e4nv
    x_desc = TensorDescriptor.from_tensor(
        xq, [block_m, QBLOCK], gl.NVMMASharedLayout.get_default_for([block_m, QBLOCK], f8)
    )
    w_desc = TensorDescriptor.from_tensor(
        wq, [block_n, QBLOCK], gl.NVMMASharedLayout.get_default_for([block_n, QBLOCK], f8)
    )
    y_desc = TensorDescriptor.from_tensor(
        y, [block_m, block_n], gl.NVMMASharedLayout.get_default_for([block_m, block_n], gl.bfloat16)
    )
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    strides = (xs.stride(0), xs.stride(1), ws.stride(0), ws.stride(1))
    if ws_loader_regs is None:
        _gluon_fp8_gemm_kernel[grid](
            x_desc, w_desc, y_desc, xs, ws, m, n, k, *strides, STAGES=stages, GROUP_M=group_m, num_warps=num_warps,
        )  # fmt: skip
    else:
        _gluon_fp8_gemm_ws_kernel[grid](
            x_desc, w_desc, y_desc, xs, ws, m, n, k, *strides,
            STAGES=stages, GROUP_M=group_m, LOADER_REGS=ws_loader_regs, num_warps=num_warps,
        )  # fmt: skip
    return y


# (block_m, block_n, stages, num_warps): 128x128 with 8 warps = two consumer warpgroups, 1 CTA/SM;
# 64x128 with 4 warps = one warpgroup, 2 CTAs/SM (one's epilogue under the other's main loop).
CONFIGS = [(128, 128, 4, 8), (128, 128, 5, 8), (128, 128, 6, 8), (64, 128, 3, 4), (64, 128, 4, 4)]
# warp-specialized (block_m, block_n, stages, consumer warps): plus one producer warp
WS_CONFIGS = [(128, 128, 4, 8), (128, 128, 5, 8), (128, 128, 6, 8)]  # 64x128: 255 regs, 1 CTA/SM (compile check)
SHAPES = [  # (M, N, K): the kernel issue's M >= 512 suite members
    (4096, 4096, 4096), (2048, 6144, 4096), (2048, 4096, 4096), (2048, 28672, 4096), (2048, 4096, 14336),
    (2048, 7168, 16384), (2048, 24576, 1536), (2048, 2112, 7168), (8192, 4096, 14336), (8192, 6144, 4096),
    (512, 4096, 14336), (512, 6144, 4096),
]  # fmt: skip


def compile_only() -> int:
    """Compile every config for sm_90 behind a fake driver (benchmarks/lab/compile_check.py's)."""
    import compile_check as cc  # benchmarks/lab
    from triton.runtime.jit import KernelInterface

    triton.runtime.driver.set_active(cc.FakeCudaDriver())
    KernelInterface.__getitem__ = cc._warmup_getitem
    from fp8inductor.reference import quantize_activation_ref, quantize_weight_ref

    g = torch.Generator().manual_seed(0)
    xq, xs = quantize_activation_ref(torch.randn(256, 1024, generator=g))
    wq, ws = quantize_weight_ref(torch.randn(512, 1024, generator=g))
    bad = 0
    for cfg, ws_kernel in [(c, False) for c in CONFIGS] + [(c, True) for c in WS_CONFIGS]:
        cc.COMPILED.clear()
        try:
            if ws_kernel:
                gluon_fp8_gemm_ws(xq, xs, wq, ws, *cfg)
            else:
                gluon_fp8_gemm(xq, xs, wq, ws, *cfg)
        except Exception as exc:  # noqa: BLE001
            bad += 1
            print(cfg, "COMPILE FAIL", type(exc).__name__, str(exc)[:2000])
            continue
        for name, kern, dt in cc.COMPILED:
            print(cfg, name, f"{dt:.1f}s shared {kern.metadata.shared}", cc.resources(kern), flush=True)
            ptx = kern.asm["ptx"]
            Path(f"/tmp/gluon_{'ws_' if ws_kernel else ''}{'_'.join(map(str, cfg))}.ptx").write_text(ptx)
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--out", default="gluon_lab.json")
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--ws-only", action="store_true", help="skip the non-warp-specialized Gluon configs")
    args = p.parse_args(argv)
    if args.compile_only:
        sys.path.insert(0, str(HERE))
        return compile_only()

    from fp8inductor.kernels import cublas
    from fp8inductor.kernels.block_gemm import fp8_block_gemm
    from fp8inductor.reference import block_gemm_ref, quantize_activation_ref, quantize_weight_ref, scales_column_major
    from fp8inductor.testing import gemm_abs_sum_max, gemm_tolerance

    dev = torch.device("cuda")
    t_start = time.time()
    rows = []
    env = {
        "device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    print(env, flush=True)
    for m, n, k in SHAPES:
        if time.time() - t_start > args.budget_s:
            print("budget spent; stopping", flush=True)
            break
        g = torch.Generator(device=dev).manual_seed(m * 7 + n * 3 + k)
        xq, xs = quantize_activation_ref(torch.randn(m, k, device=dev, generator=g))
        copies = max(1, min(8, int(4 * 50e6 // (n * k)) + 1))  # weights beyond L2
        ws_list = [quantize_weight_ref(torch.randn(n, k, device=dev, generator=g)) for _ in range(copies)]
        wq, ws = ws_list[0]
        ref = block_gemm_ref(xq, xs, wq, ws, out_dtype=torch.float32).double()
        abs_max = gemm_abs_sum_max(xq, xs, wq, ws)
        tol = gemm_tolerance(torch.bfloat16, abs_max, hopper_fp8_mma=True)
        rtol, atol = tol["rtol"], tol["atol"]
        flops = 2.0 * m * n * k
        it = [0]

        def rot(fn):
            def call():
                it[0] = (it[0] + 1) % copies
                w, s = ws_list[it[0]]
                return fn(w, s)

            return call

        row = {"M": m, "N": n, "K": k}
        xs_cm = scales_column_major(xs)
        cands = {
            "cublas_bw": lambda w, s: cublas.block_gemm(xq, xs_cm, w, s, None, torch.bfloat16),
            "triton_shipped": lambda w, s: fp8_block_gemm(xq, xs, w, s, out_dtype=torch.bfloat16),
        }
        for cfg in [] if args.ws_only else CONFIGS:
            cands["gluon_" + "x".join(map(str, cfg))] = lambda w, s, cfg=cfg: gluon_fp8_gemm(xq, xs, w, s, *cfg)
        for cfg in WS_CONFIGS:
            cands["gluon_ws_" + "x".join(map(str, cfg))] = lambda w, s, cfg=cfg: gluon_fp8_gemm_ws(xq, xs, w, s, *cfg)
        for name, fn in cands.items():
            try:
                y = fn(wq, ws).double()
                bad = ((y - ref).abs() > rtol * ref.abs() + atol).float().mean().item()
                rel = ((y - ref).norm() / ref.norm()).item()
                if not (rel < 1e-2):
                    row[name] = {"rel": rel, "bad": bad, "wrong": True}
                    print(f"{m}x{n}x{k} {name}: WRONG rel {rel:.3g} bad {bad:.3g}", flush=True)
                    continue
                ms = triton.testing.do_bench(rot(fn), warmup=25, rep=100)
                row[name] = {"rel": rel, "bad": bad, "ms": ms, "tflops": flops / ms / 1e9}
            except Exception as exc:  # noqa: BLE001
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        base = row.get("cublas_bw", {}).get("tflops")
        line = " ".join(
            f"{nm}={v['tflops']:.0f}" + (f"({v['tflops'] / base:.2f}x)" if base else "") + (f" bad{v['bad']:.1g}" if v['bad'] else "")
            if "tflops" in v else f"{nm}={'ERR ' + v['error'][:80] if 'error' in v else 'WRONG'}"
            for nm, v in row.items() if isinstance(v, dict)
        )  # fmt: skip
        print(f"{m}x{n}x{k}: {line}", flush=True)
        rows.append(row)
        Path(args.out).write_text(json.dumps({"env": env, "configs": CONFIGS, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
