"""(Residual add +) RMSNorm + 1x128 activation quantization in one kernel: ``rms_norm_quant``.

The activation of a linear that follows an RMSNorm (q/k/v after ``input_layernorm``, gate/up after
``post_attention_layernorm``) is the norm's output, used only to be quantized. Inductor cannot put
the norm's row statistics (a reduction over the K elements of a row) and the quantization's group
amax (a reduction over 128 of them) in one kernel: it writes the residual sum and the statistics in
one kernel and normalizes and quantizes in a second, reading the row again (two launches, ~30 us
per norm at Llama-3-8B prefill 1 x 2048 on the H100; docs/benchmarks.md). Here one program holds a
whole row in registers: it adds the residual, writes the sum, computes the statistics, normalizes,
and quantizes each 128-group from the same registers.

Numerics, per row (``reference.rms_norm_quant_ref``; transformers' ``LlamaRMSNorm``):

    h = x + residual                       fp32 sum rounded to x's dtype (eager's bf16 add), or x
    n = (h * rsqrt(sum(h^2) / K + eps))    fp32, rounded to x's dtype (``.to(input_dtype)``)
    y = weight * n                         fp32 product rounded to x's dtype (a bf16 * bf16 multiply)
    q, s = 1x128 quantization of y         exactly as ``act_quant`` (IEEE division, RNE cast)

Two extras for the decode linears that read q and s, both as ``act_quant_1x128`` has them: at most
``pdl.PDL_MAX_M`` rows the kernel is launched with programmatic dependent launch (it waits for its
producer, then lets the GEMM launch, which prefetches its weights meanwhile), and ``zero`` clears
the tile tickets of a split-K GEMM that follows (no launch of its own for them).

The one difference from the reference: the order of the K-long sum (a tree here, torch's own order
there) and the hardware ``rsqrt`` can move ``rstd`` by an ulp, which in rare elements moves the
bf16 rounding of ``n`` or ``y`` by one bf16 ulp and so a code by one step (tests state the rate).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..reference import FP8_DTYPE, _check_scale_fmt, ceil_div, check_rms_norm_args
from .act_quant import GROUP_K, _amax_to_scale, _fp32_to_e4m3, _saturate_top_scale, _upcast_fp32, native_fp8_cast
from .config import NORM_QUANT_MAX_K
from .pdl import launch_options, pdl_enabled


@triton.jit
def _round_to(v, dtype: tl.constexpr, NATIVE: tl.constexpr):
    """fp32 -> ``dtype`` -> fp32: the rounding of a value stored in the activation dtype (RNE).

    NATIVE: the hardware cast (the GPU rounds to nearest even). Else bf16 is rounded from the bits
    (round half to even on the upper 16 bits; NaN stays NaN, overflow goes to Inf): the Triton
    interpreter's fp32 -> bf16 cast truncates (triton 3.9, measured); this gives the GPU's bytes.
    """
    if dtype == tl.float32:
        return v
    elif NATIVE or dtype == tl.float16:
        return v.to(dtype).to(tl.float32)
    else:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000).to(tl.float32, bitcast=True)
        return tl.where(v != v, v, rounded)


@triton.jit
def _div_by_scale(v, s):
    """IEEE round-to-nearest ``v / s`` for a [G, 128] tile and its [G] group scales, with one
    correctly rounded reciprocal per group instead of a division per element.

    q0 = v * rcp is within an ulp of the quotient; the residual r = v - q0 * s is exact (fma), and
    q0 + r * rcp rounds to the correctly rounded quotient (Markstein's theorem; needs no overflow,
    which v / s <= 448 excludes, and gives quotients below 2**-126 to within an ulp, all of which
    the e4m3 cast sends to 0 anyway). Checked bit for bit against IEEE division by
    tests/test_norm_quant.py. An Inf scale (an Inf in the group) gives v * 0: +-0, or NaN for Inf,
    as the division does; a NaN scale gives NaN; a zero keeps its sign.
    """
    rcp = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s)[:, None]
    q0 = v * rcp
    q = tl.math.fma(tl.math.fma(-q0, s[:, None], v), rcp, q0)
    q = tl.where(q0 == 0.0, q0, q)  # the sign of a zero quotient (-0 - -0 * s would give +0)
    return tl.where((s == float("inf"))[:, None], v * 0.0, q)


@triton.jit
def _rms_norm_quant_kernel(
    x_ptr,  # [M, K] bf16/fp16/fp32, strides (stride_xm, 1)
    r_ptr,  # [M, K] residual, x's dtype, strides (stride_rm, 1); unused unless HAS_RESIDUAL
    w_ptr,  # [K] norm weight, x's dtype, contiguous
    h_ptr,  # [M, K] out: x + residual, x's dtype, contiguous; unused unless HAS_RESIDUAL
    q_ptr,  # [M, K] float8e4nv codes (out), contiguous
    s_ptr,  # [M, ceil(K/128)] fp32 scales (out), strides (1, M): column-major, as cuBLAS reads them
    zero_ptr,  # [n_zero] int32 (out: all zero), contiguous; unused unless ZERO
    M,
    K,
    stride_xm,
    stride_rm,
    k_float,  # K as fp32 (exact below 2**24)
    eps,
    n_zero,
    HAS_RESIDUAL: tl.constexpr,
    ZERO: tl.constexpr,  # also clear zero_ptr (the next split-K GEMM's tile tickets: no extra launch)
    UE8M0: tl.constexpr,  # scale_fmt == "ue8m0"
    GROUPS: tl.constexpr,  # next power of two >= ceil(K / 128)
    GROUP: tl.constexpr,  # 128
    NATIVE_CAST: tl.constexpr,  # hardware casts (GPU) or exact emulations (interpreter)
    PDL: tl.constexpr = False,  # launched with launch_pdl: wait for the producer, then let the GEMM launch (kernels/pdl.py)
):
    # One program per row: the row as a [GROUPS, GROUP] tile (lanes past K are 0 and never stored).
    if PDL:
        tl.extra.cuda.gdc_wait()  # before any load or store: the previous kernel is done and visible
        tl.extra.cuda.gdc_launch_dependents()  # the GEMM may launch now (it waits for us before reading)
    row = tl.program_id(0).to(tl.int64)
    if ZERO:  # noqa: SIM102 -- a constexpr branch: compiled out unless ZERO
        if row == 0:
            for i in range(0, n_zero, 1024):
                offs_z = i + tl.arange(0, 1024)
                tl.store(zero_ptr + offs_z, tl.zeros((1024,), dtype=tl.int32), mask=offs_z < n_zero)
    offs_g = tl.arange(0, GROUPS)
    offs_k = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]  # [GROUPS, GROUP]
    mask = offs_k < K
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_xm + offs_k, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_rm + offs_k, mask=mask, other=0.0)
        hf = _round_to(_upcast_fp32(x) + _upcast_fp32(r), dtype, NATIVE_CAST)
        tl.store(h_ptr + row * K + offs_k, hf.to(dtype), mask=mask)  # exact: hf is on dtype's grid
    else:
        hf = _upcast_fp32(x)
    w = _upcast_fp32(tl.load(w_ptr + offs_k, mask=mask, other=0.0))

    mean_sq = tl.math.div_rn(tl.sum(tl.sum(hf * hf, axis=1), axis=0), k_float)  # torch.mean on the CPU: sum / K
    rstd = tl.math.rsqrt(mean_sq + eps)
    y = _round_to(w * _round_to(hf * rstd, dtype, NATIVE_CAST), dtype, NATIVE_CAST)  # [GROUPS, GROUP], 0 past K

    amax = tl.max(tl.abs(y), axis=1)  # [GROUPS]
    has_nan = tl.max((y != y).to(tl.int32), axis=1) > 0
    s = _amax_to_scale(amax, has_nan, UE8M0)
    quotient = _div_by_scale(y, s)
    if UE8M0:
        quotient = _saturate_top_scale(quotient, s[:, None])
    q = _fp32_to_e4m3(quotient, NATIVE_CAST)
    tl.store(q_ptr + row * K + offs_k, q, mask=mask)
    tl.store(s_ptr + row + offs_g.to(tl.int64) * M, s, mask=offs_g < tl.cdiv(K, GROUP))


def _num_warps(groups: int) -> int:
    """Warps per row: 16 fp32 values of the row per thread, 1 to 16 warps."""
    return max(1, min(16, groups * GROUP_K // (32 * 16)))


def rms_norm_quant(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    scale_fmt: str = "float",
    num_warps: int | None = None,
    zero: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``reference.rms_norm_quant_ref`` in one Triton kernel (one program per row).

    Args:
        x: [..., K] bfloat16/float16/float32; rows may be strided, K must be unit-stride (else copied).
        residual: [..., K] in x's dtype (same constraint), or None.
        weight: [K] in x's dtype.
        eps: the norm's epsilon.
        num_warps: warps per program (the lab's sweep); default ``_num_warps``.
        zero: a contiguous int32 tensor on x's device that the kernel also sets to all zeros: the
            tile tickets of the split-K GEMM that reads q and s (``ops.quantized_block_linear``), so
            clearing them costs no launch of its own (as ``act_quant_1x128``'s ``zero``).
    Returns:
        h: [..., K] x.dtype, contiguous: ``x + residual``; a [0]-shaped tensor without residual.
        q: [..., K] float8_e4m3fn, contiguous.
        s: [..., ceil(K/128)] float32, column-major over the flattened rows: strides (1, M) as [M, G].
    """
    _check_scale_fmt(scale_fmt)
    check_rms_norm_args(x, residual, weight)
    *lead, k = x.shape
    if k > NORM_QUANT_MAX_K:  # a row lives in registers (the pass checks it too, without importing Triton)
        raise ValueError(f"rms_norm_quant: K = {k} > {NORM_QUANT_MAX_K} does not fit one program's registers")
    x2 = _rows(x, k)
    r2 = _rows(residual, k) if residual is not None else None
    m = x2.shape[0]
    groups = ceil_div(k, GROUP_K)
    q = torch.empty((*lead, k), dtype=FP8_DTYPE, device=x.device)
    s = torch.empty((groups, m), dtype=torch.float32, device=x.device).t().view(*lead, groups)
    h = torch.empty((*lead, k), dtype=x.dtype, device=x.device) if r2 is not None else x.new_empty(0)
    if zero is not None and (zero.dtype != torch.int32 or not zero.is_contiguous() or zero.device != x.device):
        raise ValueError("rms_norm_quant: zero must be a contiguous int32 tensor on x's device")
    if m == 0 or k == 0:
        if zero is not None:
            zero.zero_()
        return h, q, s
    pow2_groups = triton.next_power_of_2(groups)
    pdl = pdl_enabled(x.device, m)
    _rms_norm_quant_kernel[(m,)](
        x2,
        x2 if r2 is None else r2,
        weight.contiguous(),
        x2 if r2 is None else h,  # (unused without a residual)
        q,
        s,
        s if zero is None else zero,  # (unused without zero)
        m,
        k,
        x2.stride(0),
        0 if r2 is None else r2.stride(0),
        float(k),
        float(eps),
        0 if zero is None else zero.numel(),
        HAS_RESIDUAL=r2 is not None,
        ZERO=zero is not None,
        UE8M0=scale_fmt == "ue8m0",
        GROUPS=pow2_groups,
        GROUP=GROUP_K,
        NATIVE_CAST=native_fp8_cast(x.device),
        PDL=pdl,
        num_warps=num_warps or _num_warps(pow2_groups),
        **launch_options(pdl),
    )
    return h, q, s


def _rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """t [..., K] as [M, K] with unit stride along K (a view where the layout allows, else a copy)."""
    t2 = t.reshape(math.prod(t.shape[:-1]), k)  # not -1: ambiguous when K = 0
    return t2 if k <= 1 or t2.stride(1) == 1 else t2.contiguous()
