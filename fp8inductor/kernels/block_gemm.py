"""Block-scaled FP8 GEMM (DeepSeek-V3 layout), within bf16 rounding of ``block_gemm_ref``.

``y[m, n] = sum_kb xs[m, kb] * ws[n // 128, kb] * sum_{k in kb} xq[m, k] * wq[n, k]  (+ bias[n])``

with fp32 accumulation: each 128-wide K block is one ``tl.dot`` with an fp32 result, scaled by
the outer product of that block's activation and weight scales and added to the fp32
accumulator; the bias is added in fp32 and the result cast once to the output dtype.

The codes are upcast to fp16 before ``tl.dot`` (exact: every e4m3 value is an fp16, 448 max,
2**-9 min), which makes the accumulation true fp32. A plain fp8 x fp8 ``tl.dot`` is not: on
sm_90 it becomes an fp8 wgmma, whose accumulator keeps only ~14 bits when it adds products (the
limitation DeepSeek-V3 reports). Measured on an H100 (triton 3.6) against ``block_gemm_ref``, as
max |y - ref| / max_{m,n} sum_k |terms|: fp8 wgmma 2**-13 .. 2**-16 (up to 0.9% relative error
on outputs above 1% of the largest: more than one bf16 rounding), fp8 with
``max_num_imprecise_acc=32`` 2**-16 .. 2**-18, fp16 upcast 2**-25 .. 2**-26 (fp32 summation-order
noise; bf16 upcast the same). The upcast takes about 1.1-2x the time of the fp8 dot (M >= 33,
K up to 7168); speed is later work. For M <= 32 (BLOCK_M <= 32) Triton uses mma.sync, not
wgmma, and the fp8 dot was as accurate as the upcast.
(fp16 rather than bf16: Triton's interpreter multiplies the raw bits of bf16 dot operands,
triton 3.9: a 16x16 bf16 ``tl.dot`` of randn is off by ~2e10.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import FP8_DTYPE, ceil_div, check_weight_scale
from .act_quant import act_quant_1x128

QBLOCK = 128  # scale block: activation group along K, weight block along N and K
_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _fp8_block_gemm_kernel(
    xq_ptr,  # [M, K] float8e4nv activation codes, strides (stride_xm, stride_xk)
    xs_ptr,  # [M, ceil(K/128)] fp32 activation scales (multipliers), strides (stride_xsm, stride_xsk)
    wq_ptr,  # [N, K] float8e4nv weight codes, K-major, strides (stride_wn, stride_wk)
    ws_ptr,  # [ceil(N/128), ceil(K/128)] fp32 weight block scales (multipliers), strides (stride_wsn, stride_wsk)
    bias_ptr,  # [N] any float dtype, stride stride_b; unused when HAS_BIAS is False
    y_ptr,  # [M, N] bf16/fp16/fp32 output, strides (stride_ym, stride_yn)
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
    stride_b,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # must equal QBLOCK: one scale product per K block
    QBLOCK: tl.constexpr,  # 128: rows of a weight scale block (any BLOCK_N works)
    GROUP_M: tl.constexpr,  # grouped program order, for L2 reuse (Triton matmul tutorial)
):
    tl.static_assert(BLOCK_K == QBLOCK, "BLOCK_K must equal the scale block size")
    # Grouped ordering: GROUP_M row-tiles share the sweep over column tiles.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows = offs_m.to(tl.int64)  # M * K and M * N may exceed 2**31
    cols = offs_n.to(tl.int64)
    a_ptrs = xq_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk  # [BLOCK_M, BLOCK_K]
    b_ptrs = wq_ptr + cols[:, None] * stride_wn + offs_k[None, :] * stride_wk  # [BLOCK_N, BLOCK_K]
    xs_ptrs = xs_ptr + rows * stride_xsm  # [BLOCK_M], column kb added in the loop
    ws_ptrs = ws_ptr + (offs_n // QBLOCK) * stride_wsn  # [BLOCK_N]: scale row of each output column

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        mask_k = offs_k < K - kb * BLOCK_K  # partial last K block: zeros add nothing
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        a_s = tl.load(xs_ptrs + kb * stride_xsk, mask=mask_m, other=0.0)
        b_s = tl.load(ws_ptrs + kb * stride_wsk, mask=mask_n, other=0.0)
        # fp16 operands: exact copies of the codes, and a dot that accumulates in true fp32.
        part = tl.dot(a.to(tl.float16), tl.trans(b.to(tl.float16)))
        acc += part * (a_s[:, None] * b_s[None, :])
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_b, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    y_ptrs = y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _pick_config(m: int, n: int, k: int) -> dict:
    """Tile sizes by M (decode-sized M gets a small BLOCK_M). Not tuned: correctness first."""
    if m <= 16:
        block_m = 16
    elif m <= 32:
        block_m = 32
    elif m <= 64:
        block_m = 64
    else:
        block_m = 128
    return dict(
        BLOCK_M=block_m,
        BLOCK_N=128,
        BLOCK_K=QBLOCK,
        GROUP_M=8,
        num_warps=4 if block_m <= 64 else 8,
        num_stages=3,
    )


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


def fp8_block_gemm(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Block-scaled FP8 GEMM ``y = (xq * xs) @ (wq * ws).T + bias`` with fp32 accumulation.

    Args:
        xq: [M, K] float8_e4m3fn activation codes, any strides (K-contiguous is the fast case).
        xs: [M, ceil(K / 128)] float32 activation scales (multipliers), any strides.
        wq: [N, K] float8_e4m3fn weight codes, any strides (K-major, i.e. row-major, is fast).
        ws: [ceil(N / 128), ceil(K / 128)] float32 weight scales (multipliers), any strides.
        bias: [N] any float dtype, or None; added in fp32 before the final cast.
        out_dtype: bfloat16, float16 or float32.
    Returns:
        y: [M, N] ``out_dtype``, contiguous. Within one rounding to ``out_dtype`` of
        ``block_gemm_ref`` (the fp32 summation order inside a K block differs).
    """
    _check_gemm_inputs(xq, xs, wq, ws, bias, out_dtype)
    m, k = xq.shape
    n = wq.shape[0]
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0 or n == 0:
        return y
    if k == 0:  # empty sum: y = bias (or 0), no launch
        acc = torch.zeros((m, n), dtype=torch.float32, device=xq.device)
        return (acc + bias.float() if bias is not None else acc).to(out_dtype)
    cfg = _pick_config(m, n, k)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _fp8_block_gemm_kernel[grid](
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
        bias.stride(0) if bias is not None else 0,
        y.stride(0),
        y.stride(1),
        HAS_BIAS=bias is not None,
        QBLOCK=QBLOCK,
        **cfg,
    )
    return y


def fp8_block_linear(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale_fmt: str = "float",
) -> torch.Tensor:
    """``act_quant_1x128`` then ``fp8_block_gemm``; matches ``block_fp8_linear_ref`` for 2-D x.

    Args:
        x: [M, K] bfloat16/float16/float32, any strides.
        wq: [N, K] float8_e4m3fn; ws: [ceil(N/128), ceil(K/128)] float32 (multipliers).
        bias: [N] or None.
        scale_fmt: activation scale format, "float" or "ue8m0".
    Returns:
        y: [M, N] in x.dtype.
    """
    if x.dim() != 2:
        raise ValueError(f"fp8_block_linear: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if wq.dim() != 2 or wq.shape[1] != x.shape[1]:
        raise ValueError(f"fp8_block_linear: x has K={x.shape[1]} but the weight is {tuple(wq.shape)} ([N, K])")
    xq, xs = act_quant_1x128(x, scale_fmt)
    return fp8_block_gemm(xq, xs, wq, ws, bias, out_dtype=x.dtype)
