"""Block-scaled FP8 GEMM (DeepSeek-V3 layout) for sm_90, three kernels chosen by shape.

``y[m, n] = sum_kb xs[m, kb] * ws[n // 128, kb] * sum_{k in kb} xq[m, k] * wq[n, k]  (+ bias[n])``

Each 128-wide K block is one fp8 x fp8 ``tl.dot`` into a fresh fp32 accumulator, promoted with the
outer product of that block's scales into the running fp32 sum ("promotion", as DeepGEMM does).

| kernel | when (``pick_config``) | why |
|---|---|---|
| ``_fp8_gemm_tma_kernel`` | M > 64, TMA-compatible layout | persistent grid, TMA tensor descriptors: 841-920 TFLOP/s at M >= 2048 on the H100 |
| ``_fp8_gemm_tiles_kernel`` | otherwise, enough output tiles | one program per tile, pointer loads, any strides |
| ``_fp8_gemm_splitk_kernel`` | M <= 64 with too few tiles to fill the GPU | weight streaming: K split over programs; the last split of a tile (atomic ticket) sums the partials in fixed order (deterministic) |

Measured on the H100 (triton 3.6, ``benchmarks/kernel_lab.py``, 2026-11-25), best config TFLOP/s:
M=4096 N=K=4096: TMA 841, tiles 738, cuBLAS blockwise 1186, bf16 735; M=8192 N=7168 K=16384: TMA 920,
tiles 799, cuBLAS blockwise 1076, bf16 722. Triton 3.6 waits for each fp8 wgmma before the promotion
FMAs (the PTX shows a full wait): the MMA chain is broken once per K block, which costs ~25% against
an unbroken chain (1177-1315 TFLOP/s, wrong numbers by design). Overlap comes only from several CTAs
per SM; the lab's "lag" (promote block k while block k+1 multiplies) and 2-block unrolling were slower.

Accuracy. An fp8 wgmma (BLOCK_M >= 64) accumulates with ~14 bits inside a K block, as on every Hopper
fp8 path (cuBLAS blockwise, DeepGEMM; DeepSeek-V3 report section 3.3.2). Measured against the exact
reference: max |y - ref| beyond the bf16 output rounding = 2^-15.8 of the largest sum of term
magnitudes, identical to cuBLAS blockwise on the same inputs (2^-15.8); normwise relative error
1.67e-3 for both (the bf16 output rounding). BLOCK_M = 16 uses mma.sync, which accumulates exactly
(2^-27). ``fp8inductor.testing.gemm_tolerance`` states the tolerance each path is tested against.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..reference import FP8_DTYPE, ceil_div, check_weight_scale
from . import cublas, pdl
from .act_quant import act_quant_1x128
from .config import CONFIGS, QBLOCK, GemmConfig, pick_config  # noqa: F401 (re-exported)
from .pdl import launch_options, pdl_enabled, prefetch_l2

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# ----------------------------------------------------------------------------------------------
# Shared @triton.jit helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Tile index -> (pid_m, pid_n), grouped order: GROUP_M row tiles sweep the columns together (L2 reuse)."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, QBLOCK: tl.constexpr):
    """Scale pointers of one tile at K block 0 (add kb * stride_*sk for block kb).

    xs_ptrs: [BLOCK_M] (rows past M clamped to row 0: valid memory, results never stored).
    ws_ptrs: a scalar pointer when BLOCK_N divides 128 (the tile lies in one 128-row weight block),
    else [BLOCK_N] (one scale row per output column).
    """
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    xs_ptrs = xs_ptr + tl.where(offs_m < M, offs_m, 0).to(tl.int64) * stride_xsm
    if BLOCK_N <= QBLOCK:
        ws_ptrs = ws_ptr + ((pid_n * BLOCK_N) // QBLOCK) * stride_wsn
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ws_ptrs = ws_ptr + (tl.where(offs_n < N, offs_n, 0) // QBLOCK) * stride_wsn
    return xs_ptrs, ws_ptrs


@triton.jit
def _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N: tl.constexpr, QBLOCK: tl.constexpr):
    """xs[m, kb] * ws[n // 128, kb] for the tile: [BLOCK_M, 1] (one weight scale) or [BLOCK_M, BLOCK_N]."""
    sa = tl.load(xs_ptrs + kb * stride_xsk)  # [BLOCK_M]
    sb = tl.load(ws_ptrs + kb * stride_wsk)  # scalar or [BLOCK_N]
    if BLOCK_N > QBLOCK:
        sb = sb[None, :]
    return sa[:, None] * sb


@triton.jit
def _tile_ptrs(xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Code pointers of one tile at K block 0: a [BLOCK_M, BLOCK_K] into xq, b [BLOCK_N, BLOCK_K] into wq.

    Rows/columns past M/N are clamped to 0, so the loads need no M/N mask (those outputs are never
    stored); int64 row offsets, since M * K may exceed 2**31.
    """
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rm = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    rn = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    a_ptrs = xq_ptr + rm[:, None] * stride_xm + offs_k[None, :] * stride_xk
    b_ptrs = wq_ptr + rn[:, None] * stride_wn + offs_k[None, :] * stride_wk
    return a_ptrs, b_ptrs


@triton.jit
def _pdl_start(wq_ptr, pid_n, N, stride_wn, stride_wk, kb_lo, kb_hi, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               PREFETCH: tl.constexpr):
    """Start of a PDL-launched GEMM (kernels/pdl.py): prefetch the first PREFETCH K blocks of this
    tile's weight rows into L2 (no kernel writes weights), then wait for the previous kernel."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = wq_ptr + tl.where(offs_n < N, offs_n, 0).to(tl.int64) * stride_wn  # [BLOCK_N]
    for i in tl.static_range(PREFETCH):
        if kb_lo + i < kb_hi:
            prefetch_l2(w_rows + (kb_lo + i) * BLOCK_K * stride_wk)  # one 128-byte line per row
    tl.extra.cuda.gdc_wait()


@triton.jit
def _load_kblock(a_ptrs, b_ptrs, kb, K, stride_xk, stride_wk, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """fp8 codes of K block kb: a [BLOCK_M, BLOCK_K], b [BLOCK_N, BLOCK_K]; a partial last block reads zeros."""
    k0 = kb * BLOCK_K
    if EVEN_K:
        a = tl.load(a_ptrs + k0 * stride_xk)
        b = tl.load(b_ptrs + k0 * stride_wk)
    else:
        mask_k = tl.arange(0, BLOCK_K) < K - k0
        a = tl.load(a_ptrs + k0 * stride_xk, mask=mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs + k0 * stride_wk, mask=mask_k[None, :], other=0.0)
    return a, b


@triton.jit
def _store_tile(acc, y_ptr, bias_ptr, pid_m, pid_n, M, N, stride_ym, stride_yn, HAS_BIAS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] fp32 (+ bias[n], bias contiguous) -> y (its dtype), masked to M x N."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & mask_n[None, :])


@triton.jit
def _mainloop_tma(x_desc, w_desc, xs_ptrs, ws_ptrs, pid_m, pid_n, nkb, stride_xsk, stride_wsk,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, QBLOCK: tl.constexpr):
    """The promoted fp32 sum of one [BLOCK_M, BLOCK_N] tile over K blocks [0, nkb), TMA loads.

    The main loop of the persistent kernel below and of the Inductor template
    (``fp8inductor.kernels.template``): one source for both. x_desc: [M, K] fp8 descriptor with
    block [BLOCK_M, BLOCK_K]; w_desc: [N, K] fp8 descriptor with block [BLOCK_N, BLOCK_K]; xs_ptrs,
    ws_ptrs from ``_scale_ptrs``. Out-of-bounds TMA reads are zeros (partial M, N, K tiles).
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(nkb):
        a = x_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
        b = w_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
        acc += tl.dot(a, b.T) * _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    return acc


@triton.jit
def _mainloop_ptr(a_ptrs, b_ptrs, xs_ptrs, ws_ptrs, kb_lo, kb_hi, K, stride_xk, stride_wk, stride_xsk, stride_wsk,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, QBLOCK: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """The promoted fp32 sum of one [BLOCK_M, BLOCK_N] tile over K blocks [kb_lo, kb_hi), pointer loads.

    The main loop of the tiles and split-K kernels and of the Inductor template; a_ptrs, b_ptrs from
    ``_tile_ptrs`` (any strides), xs_ptrs, ws_ptrs from ``_scale_ptrs``.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_lo, kb_hi):
        a, b = _load_kblock(a_ptrs, b_ptrs, kb, K, stride_xk, stride_wk, BLOCK_K, EVEN_K)
        d = tl.dot(a, tl.trans(b))  # fp8 x fp8 -> fresh fp32 accumulator (one K block)
        acc += d * _kblock_scale(xs_ptrs, ws_ptrs, kb, stride_xsk, stride_wsk, BLOCK_N, QBLOCK)
    return acc


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["M"])
def _fp8_gemm_tiles_kernel(
    xq_ptr,  # [M, K] float8e4nv activation codes, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32 activation scales (multipliers), strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv weight codes, strides (stride_wn, stride_wk); K-major is fast
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16/fp16/fp32 output, strides (stride_ym, stride_yn)
    M, N, K,
    stride_xm, stride_xk, stride_xsm, stride_xsk, stride_wn, stride_wk, stride_wsn, stride_wsk, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % 128 == 0: no K mask
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # == QBLOCK: one scale product per K block
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
    PDL: tl.constexpr = False,  # launched with launch_pdl (kernels/pdl.py)
    PREFETCH: tl.constexpr = 0,  # with PDL: weight K blocks prefetched into L2 before the wait
):  # fmt: skip
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    if PDL:
        _pdl_start(wq_ptr, pid_n, N, stride_wn, stride_wk, 0, tl.cdiv(K, BLOCK_K), BLOCK_N, BLOCK_K, PREFETCH)
    a_ptrs, b_ptrs = _tile_ptrs(
        xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K
    )
    xs_ptrs, ws_ptrs = _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    acc = _mainloop_ptr(a_ptrs, b_ptrs, xs_ptrs, ws_ptrs, 0, tl.cdiv(K, BLOCK_K), K, stride_xk, stride_wk,
                        stride_xsk, stride_wsk, BLOCK_M, BLOCK_N, BLOCK_K, QBLOCK, EVEN_K)
    _store_tile(acc, y_ptr, bias_ptr, pid_m, pid_n, M, N, stride_ym, stride_yn, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=["M", "num_progs"])
def _fp8_gemm_tma_kernel(
    xq_ptr,  # [M, K] float8e4nv, contiguous (descriptor: K % 16 == 0)
    xs_ptr,  # [M, ceil(K/128)] fp32, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv, contiguous
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    y_ptr,  # [M, N] bf16/fp16/fp32, contiguous (descriptor: N * itemsize % 16 == 0)
    M, N, K,
    num_progs,  # persistent programs (the grid size)
    stride_xsm, stride_xsk, stride_wsn, stride_wsk,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr,  # tl.range(flatten=...) over the tile loop
):  # fmt: skip
    # Out-of-bounds TMA reads give zeros (partial M, N, K tiles); out-of-bounds stores are dropped.
    x_desc = tl.make_tensor_descriptor(xq_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(wq_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
    y_desc = tl.make_tensor_descriptor(y_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, BLOCK_N])
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    nkb = tl.cdiv(K, BLOCK_K)
    tile_id_c = tl.program_id(0) - num_progs  # separate epilogue counter, as Triton tutorial 09
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, num_progs, flatten=FLATTEN):
        pid_m, pid_n = _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        xs_ptrs, ws_ptrs = _scale_ptrs(
            xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK
        )
        acc = _mainloop_tma(x_desc, w_desc, xs_ptrs, ws_ptrs, pid_m, pid_n, nkb, stride_xsk, stride_wsk,
                            BLOCK_M, BLOCK_N, BLOCK_K, QBLOCK)
        tile_id_c += num_progs
        pid_m, pid_n = _grouped_tile(tile_id_c, num_pid_m, num_pid_n, GROUP_M)
        if HAS_BIAS:
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(y_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=["M", "kb_per_split"])
def _fp8_gemm_splitk_kernel(
    xq_ptr,  # [M, K] float8e4nv, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32, strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv, strides (stride_wn, stride_wk)
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32, strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] float, contiguous; unused unless HAS_BIAS
    part_ptr,  # [num_splits, M, N] fp32 partial sums (scratch), contiguous
    ticket_ptr,  # [tiles] int32, all zero on entry and again on exit (scratch)
    y_ptr,  # [M, N] bf16/fp16/fp32, contiguous
    M, N, K,
    kb_per_split,  # K blocks per split; the grid's axis 1 is the number of splits
    stride_xm, stride_xk, stride_xsm, stride_xsk, stride_wn, stride_wk, stride_wsn, stride_wsk,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    QBLOCK: tl.constexpr,
    PDL: tl.constexpr = False,  # launched with launch_pdl (kernels/pdl.py)
    PREFETCH: tl.constexpr = 0,  # with PDL: weight K blocks prefetched into L2 before the wait
):  # fmt: skip
    """One [BLOCK_M, BLOCK_N] tile over K blocks [split * kb_per_split, ...) per program; one launch.

    Small M streams the weights: K is split over programs so that every SM reads. Each split writes
    its fp32 partial tile, then takes a ticket (an acq_rel atomic on the tile's counter); the split
    that draws the last ticket sums the partials in split order (fixed, so deterministic), adds the
    bias, stores y and puts the ticket back to zero. This replaced a second, reduction kernel (one
    launch less per linear).
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_pid_m  # neighbouring programs share a weight tile (L2)
    pid_n = pid // num_pid_m
    a_ptrs, b_ptrs = _tile_ptrs(
        xq_ptr, wq_ptr, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K
    )
    xs_ptrs, ws_ptrs = _scale_ptrs(xs_ptr, ws_ptr, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    kb_lo = split * kb_per_split
    kb_hi = tl.minimum(kb_lo + kb_per_split, tl.cdiv(K, BLOCK_K))
    if PDL:  # before any read of xq/xs/tickets and any write
        _pdl_start(wq_ptr, pid_n, N, stride_wn, stride_wk, kb_lo, kb_hi, BLOCK_N, BLOCK_K, PREFETCH)
    acc = _mainloop_ptr(a_ptrs, b_ptrs, xs_ptrs, ws_ptrs, kb_lo, kb_hi, K, stride_xk, stride_wk, stride_xsk,
                        stride_wsk, BLOCK_M, BLOCK_N, BLOCK_K, QBLOCK, EVEN_K)
    _splitk_finish(acc, part_ptr, ticket_ptr, y_ptr, bias_ptr, pid, pid_m, pid_n, split, num_splits, M, N,
                   HAS_BIAS, BLOCK_M, BLOCK_N)  # fmt: skip


@triton.jit
def _splitk_finish(acc, part_ptr, ticket_ptr, y_ptr, bias_ptr, pid, pid_m, pid_n, split, num_splits, M, N,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """The end of a split-K program: store its partial tile acc [BLOCK_M, BLOCK_N] fp32 into
    part [num_splits, M, N], take the tile's ticket; the last split sums the partials in split order
    (deterministic), stores y [M, N] (+ bias) and puts the ticket back to zero.

    The reset is a plain store. It was an acq_rel ``atomic_xchg`` until 2026-12-08, which compiles
    (triton 3.9, sm_90) to BAR.SYNC + MEMBAR.ALL.GPU + ATOMG.EXCH + CCTL.IVALL + BAR.SYNC at the very
    end of the kernel's last program: a wait for every y store to reach L2, on the critical path of
    a decode linear. Nothing in this launch reads the ticket after the last split drew it, and the
    next launch that does (a GEMM reusing the buffer) is ordered after this one by the stream (and
    under PDL by its griddepcontrol.wait, which waits for this grid's memory)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    p_ptrs = part_ptr + (offs_m.to(tl.int64))[:, None] * N + offs_n[None, :]  # split 0's partial
    tl.store(p_ptrs + (split * M).to(tl.int64) * N, acc, mask=mask)  # int64: splits * M * N may pass 2**31
    tl.debug_barrier()  # every thread's partial is written before the (one-thread) release below
    ticket = tl.atomic_add(ticket_ptr + pid, 1, sem="acq_rel", scope="gpu")
    if ticket == num_splits - 1:  # last split of this tile: every other partial is visible
        total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for s in range(num_splits):  # fixed order: deterministic
            total += tl.load(p_ptrs + (s * M).to(tl.int64) * N, mask=mask, other=0.0, cache_modifier=".cg")
        _store_tile(total, y_ptr, bias_ptr, pid_m, pid_n, M, N, N, 1, HAS_BIAS, BLOCK_M, BLOCK_N)
        tl.store(ticket_ptr + pid, 0)  # back to zero: a tickets buffer can serve the next launch


# ----------------------------------------------------------------------------------------------
# Configurations (GemmConfig, CONFIGS, pick_config: kernels/config.py)
# ----------------------------------------------------------------------------------------------


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # Triton interpreter: a few programs, so the persistent loop runs over several tiles


@functools.cache
def _device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def _tuned_config(device: torch.device, m: int, n: int, k: int, tma_ok: bool, cublas_ok: bool) -> GemmConfig | None:
    """The shipped tuned config for this device and shape (``fp8inductor.tuned``), if it fits the layout
    (a "tma" config needs ``tma_ok``, a "cublas" one ``cublas_ok``: else the heuristic decides)."""
    name = _device_name(device)
    if name is None:
        return None
    from ..tuned import lookup

    cfg = lookup(name, m, n, k)
    if cfg is None or (cfg.kind == "tma" and not tma_ok) or (cfg.kind == "cublas" and not cublas_ok):
        return None
    return cfg


def _tma_ok(xq: torch.Tensor, wq: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """TMA descriptors need contiguous row-major operands with 16-byte aligned rows and bases."""
    return xq.is_contiguous() and xq.data_ptr() % 16 == 0 and _tma_ok_weight(wq, out_dtype)


def _tma_ok_weight(wq: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """The weight's and the output's part of ``_tma_ok`` (K % 16 == 0 covers xq's rows too)."""
    n, k = wq.shape
    return wq.is_contiguous() and k % 16 == 0 and (n * out_dtype.itemsize) % 16 == 0 and wq.data_ptr() % 16 == 0


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _check_gemm_inputs(xq, xs, wq, ws, bias, out_dtype) -> None:
    if xq.dtype != FP8_DTYPE:
        raise TypeError(f"fp8_block_gemm: xq must be {FP8_DTYPE}, got {xq.dtype}")
    if xq.dim() != 2:
        raise ValueError(f"fp8_block_gemm: xq must be 2-D [M, K], got shape {tuple(xq.shape)}")
    check_weight_scale(wq, ws, (QBLOCK, QBLOCK), name="fp8_block_gemm")
    m, k = xq.shape
    n, wk = wq.shape
    if wk != k:
        raise ValueError(f"fp8_block_gemm: xq is [M, K] = {tuple(xq.shape)} but wq is [N, K] = {tuple(wq.shape)}")
    if xs.dtype != torch.float32:
        raise TypeError(f"fp8_block_gemm: xs must be float32, got {xs.dtype}")
    if tuple(xs.shape) != (m, ceil_div(k, QBLOCK)):
        raise ValueError(
            f"fp8_block_gemm: xs has shape {tuple(xs.shape)}, expected {(m, ceil_div(k, QBLOCK))} "
            f"for xq of shape {(m, k)} in groups of {QBLOCK}"
        )
    if bias is not None:
        if not bias.is_floating_point() or bias.element_size() < 2:
            raise TypeError(f"fp8_block_gemm: bias must be a float tensor, got {bias.dtype}")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"fp8_block_gemm: bias must have shape ({n},), got {tuple(bias.shape)}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"fp8_block_gemm: out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    tensors = {"xq": xq, "xs": xs, "wq": wq, "ws": ws}
    if bias is not None:
        tensors["bias"] = bias
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"fp8_block_gemm: all inputs must be on one device, got {devices}")


def _tma_workspace(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Triton's allocator for device-side tensor descriptors: [size] int8 scratch on the current CUDA
    device, where Triton launches (the ops set it to the tensors' device); the CPU under the interpreter."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def _ensure_tma_allocator() -> None:
    """Device-side tensor descriptors need a workspace allocator. Triton keeps it per thread (a
    ContextVar), so it is set before every TMA launch (a ContextVar set): it was set once per process
    until 2026-12-08, and a TMA GEMM in any other thread (transformers' streaming ``generate`` in a
    ``Thread``) raised "no allocator was set"; the old allocator also kept the first call's device."""
    triton.set_allocator(_tma_workspace)


def _launch(xq, xs, wq, ws, bias, y, cfg: GemmConfig, tickets: torch.Tensor | None = None) -> None:
    m, k = xq.shape
    n = wq.shape[0]
    common = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=QBLOCK, QBLOCK=QBLOCK)
    launch = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.kind == "tma":
        _ensure_tma_allocator()
        tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
        num_progs = min(tiles, _num_sms(xq.device) * cfg.ctas_per_sm)
        _fp8_gemm_tma_kernel[(num_progs,)](
            xq, xs, wq, ws, bias, y, m, n, k, num_progs, xs.stride(0), xs.stride(1), ws.stride(0), ws.stride(1),
            HAS_BIAS=bias is not None, GROUP_M=cfg.group_m, FLATTEN=cfg.flatten, **common, **launch,
        )  # fmt: skip
    elif cfg.kind == "tiles":
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
        _fp8_gemm_tiles_kernel[grid](
            xq, xs, wq, ws, bias, y, m, n, k,
            xq.stride(0), xq.stride(1), xs.stride(0), xs.stride(1), wq.stride(0), wq.stride(1),
            ws.stride(0), ws.stride(1), y.stride(0), y.stride(1),
            HAS_BIAS=bias is not None, EVEN_K=k % QBLOCK == 0, GROUP_M=cfg.group_m, **common, **launch,
            **_pdl_kwargs(xq.device, m),
        )  # fmt: skip
    else:
        _launch_splitk(xq, xs, wq, ws, bias, y, cfg, tickets)


def _pdl_kwargs(device: torch.device, m: int) -> dict:
    """Keywords of a tiles / split-K launch: PDL with an L2 weight prefetch where enabled (kernels/pdl.py)."""
    if not pdl_enabled(device, m):
        return {}
    return {"PDL": True, "PREFETCH": pdl.PDL_PREFETCH_K_BLOCKS, **launch_options(True)}


def _split_plan(cfg: GemmConfig, m: int, n: int, k: int) -> tuple[int, int, int]:
    """(K blocks per split, number of splits, output tiles) of a split-K config: at most
    ``cfg.split_k`` splits, none empty."""
    nkb = triton.cdiv(k, QBLOCK)
    kb_per_split = triton.cdiv(nkb, min(cfg.split_k, nkb))
    return kb_per_split, triton.cdiv(nkb, kb_per_split), triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)


def _launch_splitk(xq, xs, wq, ws, bias, y, cfg: GemmConfig, tickets: torch.Tensor | None) -> None:
    """``_fp8_gemm_splitk_kernel``; tickets: [>= tiles] int32 already zero (cleared by the activation
    quant or norm kernel), or None: zeros allocated here (one more launch). Tickets too few for
    this launch's tiles (a caller's plan that did not foresee this config) are not used."""
    m, k = xq.shape
    n = wq.shape[0]
    kb_per_split, num_splits, tiles = _split_plan(cfg, m, n, k)
    part = torch.empty((num_splits, m, n), dtype=torch.float32, device=xq.device)
    if tickets is None or tickets.numel() < tiles:
        tickets = torch.zeros((tiles,), dtype=torch.int32, device=xq.device)
    _fp8_gemm_splitk_kernel[(tiles, num_splits)](
        xq, xs, wq, ws, bias, part, tickets, y, m, n, k, kb_per_split,
        xq.stride(0), xq.stride(1), xs.stride(0), xs.stride(1), wq.stride(0), wq.stride(1),
        ws.stride(0), ws.stride(1),
        HAS_BIAS=bias is not None, EVEN_K=k % QBLOCK == 0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=QBLOCK, QBLOCK=QBLOCK,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_pdl_kwargs(xq.device, m),
    )  # fmt: skip


def fp8_block_gemm(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    config: GemmConfig | None = None,
    tickets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-scaled FP8 GEMM ``y = (xq * xs) @ (wq * ws).T + bias`` with fp32 promotion per K block.

    Args:
        xq: [M, K] float8_e4m3fn activation codes, any strides (contiguous enables TMA).
        xs: [M, ceil(K / 128)] float32 activation scales (multipliers), any strides.
        wq: [N, K] float8_e4m3fn weight codes, any strides (row-major, i.e. K-major, is fast).
        ws: [ceil(N / 128), ceil(K / 128)] float32 weight scales (multipliers), any strides.
        bias: [N] any float dtype, or None; added in fp32 before the final cast.
        out_dtype: bfloat16, float16 or float32.
        config: force a configuration (tests, tuning); default ``pick_config``. A "tma" config on a
            layout TMA cannot take is an error.
        tickets: [T] int32, contiguous, all zero, or None: the tile tickets a split-K launch uses
            when T covers its tiles (``splitk_tickets``), left all zero again; none are allocated
            then. Other kernels do not touch it.
    Returns:
        y: [M, N] ``out_dtype``, contiguous.
    """
    return _gemm(xq, xs, wq, ws, bias, out_dtype, config, tickets=tickets)


def _k_offsets_in_int32(codes: torch.Tensor) -> torch.Tensor:
    """codes [rows, K] fp8, any strides: itself, or a contiguous copy when its K offsets could pass
    2**31. The pointer kernels step along K in int32 (``_tile_ptrs``' ``offs_k * stride_k``,
    ``_load_kblock``'s ``k0 * stride_k``; rows are int64), which wraps for a K-strided operand of
    about 2**31 elements or more (a transposed [46341, 46341] weight): a crash or wrong reads,
    reproduced under the interpreter on 2026-12-08. Row-major operands (every operand the ops and
    the lowering pass) never copy."""
    if codes.stride(1) == 1:  # the common case, on every call: nothing to compute
        return codes
    k_span = triton.cdiv(codes.shape[1], QBLOCK) * QBLOCK * codes.stride(1)  # past the last K block's offset
    return codes.contiguous() if k_span >= 2**31 else codes


def _gemm(
    xq, xs, wq, ws, bias, out_dtype, config: GemmConfig | None, tickets: torch.Tensor | None, forced: bool | None = None
) -> torch.Tensor:
    """``fp8_block_gemm``; tickets: a split-K config's zeroed tile tickets (``fp8_block_linear``) or None.

    forced: the config is the caller's order (a cuBLAS config cuBLAS cannot take, or a cuBLAS error,
    is raised) rather than a default choice (``fp8_block_linear`` passes its own pick with False: then
    cuBLAS trouble falls back to the Triton kernels). Default: forced when a config is given.
    """
    _check_gemm_inputs(xq, xs, wq, ws, bias, out_dtype)
    forced = config is not None if forced is None else forced
    m, k = xq.shape
    n = wq.shape[0]
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0 or n == 0:
        return y
    if k == 0:  # empty sum: y = bias (or 0), no launch; a fresh tensor, never a view of bias
        return y.copy_(bias.float().expand(m, n)) if bias is not None else y.zero_()
    if bias is not None:
        bias = bias.contiguous()
    xq, wq = _k_offsets_in_int32(xq), _k_offsets_in_int32(wq)
    tma_ok = _tma_ok(xq, wq, out_dtype)
    # cuBLAS admission is checked only where it decides something: a given Triton config (the
    # linear's split-K or tile pick at decode sizes) skips it on this per-call path.
    if config is None:
        config = _default_config(xq.device, m, n, k, tma_ok, cublas.usable(xq, wq, ws, bias, out_dtype))
    elif config.kind == "tma" and not tma_ok:
        raise ValueError("fp8_block_gemm: TMA needs contiguous xq/wq, K % 16 == 0 and 16-byte aligned output rows")
    elif config.kind == "cublas" and not cublas.usable(xq, wq, ws, bias, out_dtype):
        if forced:
            raise ValueError(
                "fp8_block_gemm: cuBLAS blockwise does not take this call (kernels/cublas.py lists when it does)"
            )
        config = _default_config(xq.device, m, n, k, tma_ok, cublas_ok=False)
    if config.kind == "cublas":
        try:
            return cublas.block_gemm(xq, xs, wq, ws, bias, out_dtype)
        except RuntimeError as exc:  # a cuBLAS limit the measured guard missed: never fail the model over it
            if forced:
                raise
            cublas.warn_failure(f"M={m} N={n} K={k} {out_dtype}: {str(exc).splitlines()[0][:120]}")
            config = _default_config(xq.device, m, n, k, tma_ok, cublas_ok=False)
    _launch(xq, xs, wq, ws, bias, y, config, tickets)
    return y


def static_choice(
    device: torch.device, m: int, n: int, k: int, out_dtype: torch.dtype, bias_dtype: torch.dtype | None
) -> GemmConfig:
    """The config ``fp8_block_linear`` will pick for an [M, K] activation against a row-major [N, K]
    weight, from sizes and dtypes alone: what compile-time decisions (the Inductor lowering, sibling
    fusion) know of the run-time choice. TMA needs K % 16 == 0 (fresh, aligned operands); cuBLAS
    what ``cublas.admits``."""
    return _default_config(device, m, n, k, k % 16 == 0, cublas.admits(device, m, n, k, out_dtype, bias_dtype))


def splitk_tickets(
    device: torch.device, m: int, n: int, k: int, out_dtype: torch.dtype, bias_dtype: torch.dtype | None
) -> int:
    """How many tile tickets the launch ``static_choice`` foresees needs: its output tiles when it is
    split-K, else 0. (A split-K GEMM leaves its tickets zero, so one buffer of the largest count
    serves several such GEMMs that run one after another on a stream.)"""
    cfg = static_choice(device, m, n, k, out_dtype, bias_dtype)
    return _split_plan(cfg, m, n, k)[2] if cfg.kind == "splitk" else 0


def _default_config(device: torch.device, m: int, n: int, k: int, tma_ok: bool, cublas_ok: bool) -> GemmConfig:
    """The shipped tuned config for this device and shape, else the heuristic."""
    return _tuned_config(device, m, n, k, tma_ok, cublas_ok) or pick_config(
        m, n, k, _num_sms(device), tma_ok, cublas_ok
    )


def fp8_block_linear(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale_fmt: str = "float",
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """``act_quant_1x128`` then ``fp8_block_gemm``; matches ``block_fp8_linear_ref`` for 2-D x.

    Two launches for every config: with a split-K config the quant kernel also clears the GEMM's
    tile tickets. (Quantizing inside the split-K main loop instead, one launch, was measured slower
    on the H100: ``benchmarks/lab/small_m_lab.py``, see docs/architecture.md.)

    Args:
        x: [M, K] bfloat16/float16/float32, any strides.
        wq: [N, K] float8_e4m3fn; ws: [ceil(N/128), ceil(K/128)] float32 (multipliers).
        bias: [N] or None.
        scale_fmt: activation scale format, "float" or "ue8m0".
        config: force a configuration (tests, benchmarks); default: tuned table or ``pick_config``.
    Returns:
        y: [M, N] in x.dtype, contiguous.
    """
    if x.dim() != 2:
        raise ValueError(f"fp8_block_linear: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if wq.dim() != 2 or wq.shape[1] != x.shape[1]:
        raise ValueError(f"fp8_block_linear: x has K={x.shape[1]} but the weight is {tuple(wq.shape)} ([N, K])")
    m, k = x.shape
    n = wq.shape[0]
    tickets = None
    forced = config is not None
    if m > 0 and n > 0 and k > 0 and x.dtype in _OUT_DTYPES and wq.device == x.device:
        if config is None:  # the config fp8_block_gemm would pick for the fresh, contiguous xq
            cublas_ok = cublas.usable_weight(m, wq, ws, bias, x.dtype)
            config = _default_config(x.device, m, n, k, _tma_ok_weight(wq, x.dtype), cublas_ok)
        if config.kind == "splitk":
            tickets = torch.empty((_split_plan(config, m, n, k)[2],), dtype=torch.int32, device=x.device)
    # cuBLAS reads the activation scales column-major: the quant kernel writes them so (no copy),
    # and for M % 4 != 0 it writes the zero rows cuBLAS is padded with (cublas.padded_rows)
    col_major = config is not None and config.kind == "cublas"
    rows = cublas.padded_rows(m) if col_major and m > 0 else m
    xq, xs = act_quant_1x128(x, scale_fmt, zero=tickets, col_major_scales=col_major, rows=rows)
    y = _gemm(xq, xs, wq, ws, bias, x.dtype, config, tickets, forced=forced)
    return y[:m] if rows != m else y  # the first M rows: a view at offset 0, contiguous
