"""128x128 block weight quantization, bit-exact with ``quantize_weight_ref(w, (128, 128), fmt)``.

Per block: ``amax = max|w|`` in fp32 over the (possibly partial) block, ``s = max(amax, 1e-4) / 448``
(``ue8m0``: rounded up to a power of two), ``q = rne_e4m3(clamp(w / s, -448, 448))`` (+-240 where a
ue8m0 scale is 2**120: ``reference.code_bound``); a NaN in a block makes its scale and all its codes
NaN. The arithmetic helpers are shared with ``act_quant`` so both kernels round identically.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import FLOAT_DTYPES, FP8_DTYPE, _check_scale_fmt, ceil_div
from .act_quant import _amax_to_scale, _fp32_to_e4m3_rne, _saturate_top_scale, _upcast_fp32

WEIGHT_BLOCK = 128  # block_n == block_k


@triton.jit
def _weight_quant_128x128_kernel(
    w_ptr,  # [N, K] bf16/fp16/fp32 weight, strides (stride_wn, stride_wk)
    q_ptr,  # [N, K] float8e4nv codes (out), contiguous
    s_ptr,  # [ceil(N/128), ceil(K/128)] fp32 block scales (multipliers) (out), contiguous
    N,
    K,
    stride_wn,
    stride_wk,
    UE8M0: tl.constexpr,  # scale_fmt == "ue8m0"
    BLOCK: tl.constexpr,  # 128: rows and columns of one scale block
):
    # One program quantizes one BLOCK x BLOCK block (masked where N or K is not a multiple).
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = (pid_n * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # N * K may exceed 2**31
    offs_k = (pid_k * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = (offs_n < N)[:, None] & (offs_k < K)[None, :]
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
    v = _upcast_fp32(tl.load(w_ptrs, mask=mask, other=0.0))  # padding is 0: never raises the amax

    amax = tl.max(tl.max(tl.abs(v), axis=1), axis=0)  # scalar
    has_nan = tl.max(tl.max((v != v).to(tl.int32), axis=1), axis=0) > 0
    s = _amax_to_scale(amax, has_nan, UE8M0)
    quotient = tl.math.div_rn(v, s)
    if UE8M0:
        quotient = _saturate_top_scale(quotient, s)
    q = _fp32_to_e4m3_rne(quotient)

    tl.store(q_ptr + offs_n[:, None] * K + offs_k[None, :], q, mask=mask)
    tl.store(s_ptr + pid_n * tl.cdiv(K, BLOCK) + pid_k, s)


def weight_quant_128x128(w: torch.Tensor, scale_fmt: str = "float") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight in 128x128 blocks.

    Args:
        w: [N, K] bfloat16/float16/float32, any strides (a transposed view is fine).
        scale_fmt: "float" (fp32 scales) or "ue8m0" (scales rounded up to powers of two).
    Returns:
        q: [N, K] float8_e4m3fn, contiguous.
        s: [ceil(N / 128), ceil(K / 128)] float32, contiguous (multiplier, ``weight_scale_inv``).
    Bit-exact with ``quantize_weight_ref(w, (128, 128), scale_fmt)`` (up to the sign of zero codes).
    """
    _check_scale_fmt(scale_fmt)
    if w.dim() != 2:
        raise ValueError(f"weight_quant_128x128: w must be 2-D [N, K], got shape {tuple(w.shape)}")
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight_quant_128x128: w must be float32, float16 or bfloat16, got {w.dtype}")
    n, k = w.shape
    nb, kb = ceil_div(n, WEIGHT_BLOCK), ceil_div(k, WEIGHT_BLOCK)
    q = torch.empty((n, k), dtype=FP8_DTYPE, device=w.device)
    s = torch.empty((nb, kb), dtype=torch.float32, device=w.device)
    if n == 0 or k == 0:
        return q, s
    _weight_quant_128x128_kernel[(nb, kb)](
        w,
        q,
        s,
        n,
        k,
        w.stride(0),
        w.stride(1),
        UE8M0=scale_fmt == "ue8m0",
        BLOCK=WEIGHT_BLOCK,
        num_warps=8,
    )
    return q, s
