"""Per-token 1x128 activation quantization, bit-exact with ``quantize_activation_ref(x, 128, fmt)``.

Also holds the ``@triton.jit`` helpers shared by both quantization kernels (``weight_quant``
imports them): the exact upcast, amax -> scale, and the fp32 -> e4m3 round-to-nearest-even cast.

Numerics (SPEC section 2, ``fp8inductor.reference``), per group of 128 elements of one row:
``amax = max|v|`` in fp32; ``s = max(amax, 1e-4) / 448`` (IEEE division); with ``ue8m0`` the
scale is rounded up to a power of two; ``q = rne_e4m3(clamp(v / s, -448, 448))`` (IEEE division;
ue8m0 with ``s = 2**120``: clamped to +-240, ``reference.code_bound``).
A NaN anywhere in the group makes its scale and all its codes NaN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import FLOAT_DTYPES, FP8_DTYPE, _check_scale_fmt, ceil_div
from .pdl import launch_options, pdl_enabled, triton_interpreting

GROUP_K = 128  # activation group along K (== the weight block's K size)

# ----------------------------------------------------------------------------------------------
# Shared helpers (also used by weight_quant.py)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _upcast_fp32(v):
    """Exact bf16/fp16/fp32 -> fp32 (any tile shape)."""
    if v.dtype == tl.bfloat16:
        # A bf16 is the upper half of an fp32: widen the bits. Exact on every backend, whereas
        # the interpreter's bf16 -> fp32 cast mangles bf16 subnormals (triton 3.9: 1e-40 -> 0.0,
        # -3.03e-39 -> -3.67e-40). On GPU both ways compile to the same shift.
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)


@triton.jit
def _amax_to_scale(amax, has_nan, UE8M0: tl.constexpr):
    """fp32 amax (>= 0) -> fp32 multiplier scale; NaN where ``has_nan`` (same shape as amax).

    ``s = max(amax, 1e-4) / 448`` with an IEEE division; ``UE8M0``: ``s = 2**ceil(log2 s)``,
    exactly, from the bits (a positive normal s with a non-zero mantissa goes up to the next
    power of two: exponent + 1, mantissa cleared; Inf and NaN pass through).
    """
    s = tl.math.div_rn(tl.maximum(amax, 1e-4), 448.0)
    if UE8M0:
        bits = s.to(tl.int32, bitcast=True)
        exp_bits = bits & 0x7F800000
        up = tl.where((bits & 0x007FFFFF) != 0, exp_bits + 0x00800000, bits)
        s = tl.where(exp_bits == 0x7F800000, bits, up).to(tl.float32, bitcast=True)
    # tl.max / tl.maximum may drop NaN on GPU (maxnum semantics), so NaN is restored explicitly:
    # as torch's amax does, a NaN in the group gives a NaN scale (and, through v / s, NaN codes).
    return tl.where(has_nan, float("nan"), s)


@triton.jit
def _saturate_top_scale(quotient, s):
    """ue8m0 only: where ``s == 2**120`` clamp the quotient ``v / s`` to +-240, so that ``q * s``
    stays finite (``reference.code_bound``; 256 * 2**120 = 2**128 would be Inf). NaN stays NaN.
    ``s`` broadcasts against ``quotient``."""
    top = s.to(tl.int32, bitcast=True) == 0x7B800000  # the bits of 2**120: exponent field 247
    quotient = tl.where(top & (quotient > 240.0), 240.0, quotient)
    return tl.where(top & (quotient < -240.0), -240.0, quotient)


@triton.jit
def _fp32_to_e4m3(x, NATIVE: tl.constexpr):
    """fp32 -> float8e4nv, RNE with saturation to +-448 and NaN -> NaN (0x7F).

    NATIVE: the hardware cast (sm_90 ``cvt.rn.satfinite.e4m3x2.f32``, RNE: the same bytes as
    ``_fp32_to_e4m3_rne`` on every tie, checked on the H100 by tests/test_kernels.py), about ten
    fp32 instructions per element cheaper; else the exact emulation (the Triton interpreter).
    """
    if NATIVE:
        is_nan = x != x
        code = tl.minimum(tl.maximum(x, -448.0), 448.0).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        return tl.where(is_nan, 0x7F, code).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
    else:
        return _fp32_to_e4m3_rne(x)


@triton.jit
def _fp32_to_e4m3_rne(x):
    """fp32 -> float8e4nv: clamp to [-448, 448], round to nearest even; NaN -> NaN (0x7F).

    Triton's own fp32 -> fp8e4nv cast is not usable directly under the interpreter. Checked
    with triton 3.9.0 (TRITON_INTERPRET=1, ``x.to(tl.float8e4nv)`` vs torch's RNE cast):
    124.33 -> 64 (torch 128: the mantissa carry is dropped), 68 -> 72 (64), 232 -> 240 (224),
    10.5 -> 11 (10), 1.0625 -> 1.125 (1.0) (ties go away from zero), 0.0029296875 = 1.5 * 2**-9
    -> 2**-9 (2**-8), and NaN -> 384 (0x7C) (the same was reported for 3.6 and 3.8). So:
    round to the e4m3 grid in fp32 first, which makes the cast exact, and set NaN codes by hand.
    On sm_90 (cvt.rn.satfinite.e4m3x2.f32) the result is the same bytes as a plain cast; checked
    natively on an H100 with triton 3.6 (tests/test_kernels.py, every tie and its neighbours).
    """
    is_nan = x != x
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)  # +-Inf -> +-448; NaN lanes are fixed below
    # floor(log2|x|) from the exponent bits (exact; 0 and fp32 subnormals read -127). Below 2**-6
    # e4m3 is subnormal with a fixed step of 2**-9, hence the lower bound of -6 on the exponent.
    e = tl.maximum(((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2**(e-3): 3 mantissa bits
    inv_step = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)  # 2**(3-e), exact reciprocal
    t = x * inv_step  # exact (power-of-two scaling), |t| <= 16
    # Adding and subtracting 1.5 * 2**23 rounds |t| < 2**22 to an integer, nearest-even (fp32 RNE).
    # (On sm_90 the multiply and the add fuse into one fma: same result, the product is exact.)
    t = (t + 12582912.0) - 12582912.0
    y = t * step  # exact, on the e4m3 grid, |y| <= 448
    code = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
    code = tl.where(is_nan, 0x7F, code).to(tl.uint8)
    return code.to(tl.float8e4nv, bitcast=True)


# ----------------------------------------------------------------------------------------------
# Activation kernel
# ----------------------------------------------------------------------------------------------


@triton.jit
def _act_quant_1x128_kernel(
    x_ptr,  # [M, K] bf16/fp16/fp32 activations, strides (stride_xm, stride_xk)
    q_ptr,  # [M_OUT, K] float8e4nv codes (out), contiguous
    s_ptr,  # [M_OUT, ceil(K/128)] fp32 scales (multipliers: x ~= q * s) (out), strides (stride_sm, stride_sg)
    zero_ptr,  # [n_zero] int32 (out: all zero), contiguous; unused unless ZERO
    M,
    M_OUT,  # rows written, >= M: rows M.. are quantized zeros (code 0; cuBLAS's padded rows)
    K,
    stride_xm,
    stride_xk,
    stride_sm,  # ceil(K/128) (row-major scales) or 1 (column-major, as cuBLAS reads them)
    stride_sg,  # 1 or M
    n_zero,
    ZERO: tl.constexpr,  # also clear zero_ptr (the next split-K GEMM's tile tickets: no extra launch)
    UE8M0: tl.constexpr,  # scale_fmt == "ue8m0"
    BLOCK_M: tl.constexpr,  # rows per program
    GROUPS: tl.constexpr,  # 128-groups per program along K
    GROUP: tl.constexpr,  # 128: elements of K per scale
    NATIVE_CAST: tl.constexpr,  # hardware fp32 -> e4m3 cast (GPU) or the exact emulation (interpreter)
    PDL: tl.constexpr,  # launched with launch_pdl: wait for the producer, then let the GEMM launch (kernels/pdl.py)
):
    # One program quantizes a [BLOCK_M, GROUPS * GROUP] tile: BLOCK_M rows of GROUPS groups.
    if PDL:
        tl.extra.cuda.gdc_wait()  # before any load or store: the previous kernel is done and visible
        tl.extra.cuda.gdc_launch_dependents()  # the GEMM may launch now (it waits for us before reading)
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    if ZERO:  # noqa: SIM102 -- a constexpr branch: compiled out unless ZERO
        if pid_m == 0 and pid_g == 0:
            for i in range(0, n_zero, 1024):
                offs_z = i + tl.arange(0, 1024)
                tl.store(zero_ptr + offs_z, tl.zeros((1024,), dtype=tl.int32), mask=offs_z < n_zero)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_g * GROUPS * GROUP + tl.arange(0, GROUPS * GROUP)
    mask_k = (offs_k < K)[None, :]
    mask_m = offs_m < M_OUT  # the rows written
    mask = mask_m[:, None] & mask_k
    rows = offs_m.to(tl.int64)  # M * K may exceed 2**31
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k.to(tl.int64)[None, :] * stride_xk
    # padding is 0 (never raises the amax); rows M .. M_OUT-1 read nothing and quantize zeros
    v = _upcast_fp32(tl.load(x_ptrs, mask=(offs_m < M)[:, None] & mask_k, other=0.0))
    v = tl.reshape(v, (BLOCK_M, GROUPS, GROUP))

    amax = tl.max(tl.abs(v), axis=2)  # [BLOCK_M, GROUPS]
    has_nan = tl.max((v != v).to(tl.int32), axis=2) > 0
    s = _amax_to_scale(amax, has_nan, UE8M0)  # [BLOCK_M, GROUPS]
    quotient = tl.math.div_rn(v, s[:, :, None])
    if UE8M0:
        quotient = _saturate_top_scale(quotient, s[:, :, None])
    q = _fp32_to_e4m3(quotient, NATIVE_CAST)
    q = tl.reshape(q, (BLOCK_M, GROUPS * GROUP))

    tl.store(q_ptr + rows[:, None] * K + offs_k[None, :], q, mask=mask)
    offs_g = pid_g * GROUPS + tl.arange(0, GROUPS)
    num_groups = tl.cdiv(K, GROUP)
    s_ptrs = s_ptr + rows[:, None] * stride_sm + offs_g.to(tl.int64)[None, :] * stride_sg
    tl.store(s_ptrs, s, mask=mask_m[:, None] & (offs_g < num_groups)[None, :])


# (BLOCK_M, GROUPS, num_warps): benchmarks/lab/act_quant_lab.py on the H100.
ACT_QUANT_CONFIG = (1, 8, 2)  # 2.67 TB/s at 16384x7168 (copy 2.93), 1.97 at 4096x4096; was (16, 1, 4): 2.52, 1.90


def act_quant_1x128(
    x: torch.Tensor,
    scale_fmt: str = "float",
    config: tuple[int, int, int] | None = None,
    zero: torch.Tensor | None = None,
    col_major_scales: bool = False,
    rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations per token in groups of 128 along K.

    Args:
        x: [M, K] bfloat16/float16/float32, any strides.
        scale_fmt: "float" (fp32 scales) or "ue8m0" (scales rounded up to powers of two).
        config: (BLOCK_M, GROUPS, num_warps), default ``ACT_QUANT_CONFIG`` (tests and the lab).
        zero: a contiguous int32 tensor on x's device that the kernel also sets to all zeros: the
            tile tickets of the split-K GEMM that follows (``block_gemm.fp8_block_linear``), so
            clearing them costs no launch of its own.
        col_major_scales: write s column-major, strides (1, M): the layout cuBLAS blockwise reads
            (``kernels/cublas.py``); same values.
        rows: write this many rows (>= M; default M): rows M.. quantize zeros (codes 0, the scale
            of an all-zero group), as cuBLAS's row padding needs (``cublas.padded_rows``), without a copy.
    Returns:
        q: [rows, K] float8_e4m3fn, contiguous.
        s: [rows, ceil(K / 128)] float32, contiguous or (``col_major_scales``) strides (1, rows); a
            multiplier: x ~= q * s.
    Bit-exact with ``quantize_activation_ref(x, 128, scale_fmt)`` (up to the sign of zero codes).
    """
    _check_scale_fmt(scale_fmt)
    if x.dim() != 2:
        raise ValueError(f"act_quant_1x128: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"act_quant_1x128: x must be float32, float16 or bfloat16, got {x.dtype}")
    m, k = x.shape
    m_out = m if rows is None else rows
    if m_out < m:
        raise ValueError(f"act_quant_1x128: rows={rows} is fewer than x's {m} rows")
    num_groups = ceil_div(k, GROUP_K)
    q = torch.empty((m_out, k), dtype=FP8_DTYPE, device=x.device)
    if col_major_scales:
        s = torch.empty((num_groups, m_out), dtype=torch.float32, device=x.device).t()  # [M, G], strides (1, M)
    else:
        s = torch.empty((m_out, num_groups), dtype=torch.float32, device=x.device)
    if zero is not None and (zero.dtype != torch.int32 or not zero.is_contiguous() or zero.device != x.device):
        raise ValueError("act_quant_1x128: zero must be a contiguous int32 tensor on x's device")
    if m_out == 0 or k == 0:
        if zero is not None:
            zero.zero_()
        return q, s
    block_m, groups, num_warps = config or ACT_QUANT_CONFIG
    grid = (triton.cdiv(m_out, block_m), triton.cdiv(num_groups, groups))
    pdl = pdl_enabled(x.device, m)
    _act_quant_1x128_kernel[grid](
        x,
        q,
        s,
        s if zero is None else zero,
        m,
        m_out,
        k,
        x.stride(0),
        x.stride(1),
        s.stride(0),
        s.stride(1),
        0 if zero is None else zero.numel(),
        ZERO=zero is not None,
        UE8M0=scale_fmt == "ue8m0",
        BLOCK_M=block_m,
        GROUPS=groups,
        GROUP=GROUP_K,
        NATIVE_CAST=native_fp8_cast(x.device),
        PDL=pdl,
        num_warps=num_warps,
        **launch_options(pdl),
    )
    return q, s


def native_fp8_cast(device: torch.device) -> bool:
    """Use the hardware fp32 -> e4m3 cast: a real GPU, not the Triton interpreter. (Callers run these
    kernels only on GPUs of compute capability >= 8.9, which have the cast; ``ops._use_triton``.)"""
    return device.type == "cuda" and not triton_interpreting()
