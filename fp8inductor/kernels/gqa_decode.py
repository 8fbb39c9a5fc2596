"""Split-KV attention of one query position over grouped KV heads (decode), in Triton.

The decode attention that ``fp8inductor.gqa_heads`` puts in place of transformers' ``repeat_kv`` +
SDPA (op ``fp8inductor::gqa_decode_attention``; option ``gqa_decode_kernel``, on by default). Measured
in the model (H100, 2026-12-07, Llama-3-8B, 32 layers, batch-1 decode): 3998 us a step against 4740
with the copies and cuDNN's kernel (docs/benchmarks.md "Decode: grouped-query attention without the
repeat_kv copies"); ``benchmarks/lab/gqa_attention_lab.py`` times the call alone beside cuDNN's.

    out[b, h] = softmax(q[b, h] . k[b, h // n_rep]^T * scale + bias[b]) . v[b, h // n_rep]

Program (b, kv head, split) takes the n_rep query heads of its KV head as the rows of one tile (padded
to 16, the smallest ``tl.dot``), streams keys/values [BLOCK_S, D] of its share of the sequence once,
and keeps an online softmax (running max m, sum l, fp32 accumulator); a second kernel combines the
splits' (m, l, acc) per head. Numerics as flash attention's: fp32 scores and sums, the probabilities
rounded to the value dtype for the ``p . v`` product. A row whose keys are all masked gives zeros, as
PyTorch's SDPA does (``_safe_softmax``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .act_quant import _upcast_fp32
from .block_gemm import _num_sms
from .pdl import triton_interpreting

# exp(x) = exp2(x * log2(e)): the softmax works in natural units and exponentiates with exp2 (ex2.approx)
_LOG2E: tl.constexpr = tl.constexpr(math.log2(math.e))


@triton.jit
def _gqa_decode_split_kernel(
    q_ptr,  # [B, H_q, D] (strides stride_qb, stride_qh, 1)
    k_ptr,  # [B, H_kv, S, D] (strides stride_kb, stride_kh, stride_ks, 1)
    v_ptr,  # [B, H_kv, S, D] (strides stride_vb, stride_vh, stride_vs, 1)
    bias_ptr,  # [B, S] additive fp32, or bool (True = attend); strides (stride_bb, stride_bs); unused without HAS_BIAS
    part_o_ptr,  # [B, H_q, SPLITS, D] fp32, contiguous
    part_m_ptr,  # [B, H_q, SPLITS] fp32 (running max of the scores), contiguous
    part_l_ptr,  # [B, H_q, SPLITS] fp32 (running sum), contiguous
    H_KV, S, blocks_per_split, scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, stride_bb, stride_bs,
    N_REP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BOOL_BIAS: tl.constexpr,
    FP32_DOTS: tl.constexpr,  # the Triton interpreter: its bf16 tl.dot returns garbage (triton 3.9), so fp32 there
):  # fmt: skip
    pid = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    b = pid // H_KV
    kvh = pid % H_KV
    rows = tl.arange(0, 16)  # the n_rep heads of the group, padded: tl.dot needs M >= 16
    row_ok = rows < N_REP
    heads = kvh * N_REP + rows
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    if FP32_DOTS:
        q = _upcast_fp32(q)
    k_base = k_ptr + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + b.to(tl.int64) * stride_vb + kvh.to(tl.int64) * stride_vh
    m = tl.full([16], float("-inf"), tl.float32)
    l = tl.zeros([16], tl.float32)
    acc = tl.zeros([16, D], tl.float32)
    blk_lo = split * blocks_per_split  # this split's key blocks (whole BLOCK_S blocks; the last may be ragged)
    blk_hi = tl.minimum(blk_lo + blocks_per_split, tl.cdiv(S, BLOCK_S))
    for blk in range(blk_lo, blk_hi):
        offs_s = blk * BLOCK_S + tl.arange(0, BLOCK_S)
        ok = offs_s < S
        offs_s64 = offs_s.to(tl.int64)  # offs_s * stride may pass 2**31 in a long cache
        k = tl.load(k_base + offs_s64[:, None] * stride_ks + offs_d[None, :], mask=ok[:, None], other=0.0)
        if FP32_DOTS:
            k = _upcast_fp32(k)
        # [16, BLOCK_S] fp32 scores in natural units: an additive mask's finfo.min stays finite (scaled
        # to log2 units first it would overflow to -inf, and a row masked that way would lose SDPA's value)
        s = tl.dot(q, tl.trans(k)) * scale
        if HAS_BIAS:
            bias = tl.load(bias_ptr + b * stride_bb + offs_s * stride_bs, mask=ok, other=0)
            if BOOL_BIAS:
                s = tl.where((bias != 0)[None, :], s, float("-inf"))
            else:
                s += bias.to(tl.float32)[None, :]
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: no NaN from -inf - -inf
        alpha = tl.exp2((m - m_safe) * _LOG2E)
        p = tl.exp2((s - m_safe[:, None]) * _LOG2E)
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_s64[:, None] * stride_vs + offs_d[None, :], mask=ok[:, None], other=0.0)
        if FP32_DOTS:
            v = _upcast_fp32(v)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    part = (b * (H_KV * N_REP) + heads) * splits + split  # [16] row index into [B, H_q, SPLITS]
    tl.store(part_m_ptr + part, m, mask=row_ok)
    tl.store(part_l_ptr + part, l, mask=row_ok)
    tl.store(part_o_ptr + part[:, None].to(tl.int64) * D + offs_d[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _gqa_decode_combine_kernel(
    part_o_ptr,  # [B * H_q, SPLITS, D] fp32
    part_m_ptr,  # [B * H_q, SPLITS] fp32
    part_l_ptr,  # [B * H_q, SPLITS] fp32
    out_ptr,  # [B * H_q, D] in the query's dtype, contiguous
    SPLITS: tl.constexpr,
    SPLITS_P2: tl.constexpr,
    D: tl.constexpr,
):
    row = tl.program_id(0)
    sp = tl.arange(0, SPLITS_P2)
    sp_ok = sp < SPLITS
    m = tl.load(part_m_ptr + row * SPLITS + sp, mask=sp_ok, other=float("-inf"))
    l = tl.load(part_l_ptr + row * SPLITS + sp, mask=sp_ok, other=0.0)
    m_all = tl.max(m, 0)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    w = tl.exp2((m - m_safe) * _LOG2E)  # 0 for splits with every key masked
    offs_d = tl.arange(0, D)
    o = tl.load(part_o_ptr + (row * SPLITS + sp)[:, None].to(tl.int64) * D + offs_d[None, :], mask=sp_ok[:, None],
                other=0.0)  # fmt: skip
    den = tl.sum(w * l, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(den == 0.0, 1.0, den)  # every key masked: zeros (as SDPA)
    tl.store(out_ptr + row.to(tl.int64) * D + offs_d, out.to(out_ptr.dtype.element_ty))


def check_gqa_decode_args(q, k, v, mask) -> None:
    if q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"gqa_decode_attention: q must be [B, H_q, 1, D], got {tuple(q.shape)}")
    if k.dim() != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"gqa_decode_attention: k, v must both be [B, H_kv, S, D] for q {tuple(q.shape)}, "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"gqa_decode_attention: {q.shape[1]} query heads are no multiple of {k.shape[1]} KV heads")
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"gqa_decode_attention: q, k, v must share bf16 or fp16, got {q.dtype}, {k.dtype}, {v.dtype}")
    d = q.shape[3]
    if d < 16 or d & (d - 1):
        raise ValueError(f"gqa_decode_attention: head dim must be a power of two >= 16, got {d}")
    if q.shape[1] // k.shape[1] > 16:
        raise ValueError(f"gqa_decode_attention: at most 16 query heads per KV head, got {q.shape[1] // k.shape[1]}")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[0] not in (1, q.shape[0]):
            raise ValueError(f"gqa_decode_attention: mask must be [B or 1, 1, 1, S], got {tuple(mask.shape)}")
        if mask.shape[3] != k.shape[2]:
            raise ValueError(f"gqa_decode_attention: mask covers {mask.shape[3]} keys, the cache {k.shape[2]}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(f"gqa_decode_attention: mask must be bool or floating, got {mask.dtype}")
    devices = {t.device for t in (q, k, v, mask) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"gqa_decode_attention: q, k, v and the mask must be on one device, got {devices}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(3) != 1:
            raise ValueError(f"gqa_decode_attention: {name} needs a contiguous last dim, got strides {t.stride()}")


def gqa_decode_attention(
    q: torch.Tensor,  # [B, H_q, 1, D] bf16/fp16, last dim contiguous
    k: torch.Tensor,  # [B, H_kv, S, D], H_q % H_kv == 0, last dim contiguous
    v: torch.Tensor,  # [B, H_kv, S, D]
    mask: torch.Tensor | None = None,  # [B or 1, 1, 1, S]: bool (True = attend) or additive float
    scale: float | None = None,  # default 1 / sqrt(D)
    block_s: int = 64,
    splits: int | None = None,
) -> torch.Tensor:
    """[B, H_q, 1, D] in q's dtype: the attention of the module docstring (Triton; the interpreter on
    CPU). Reference: ``fp8inductor.reference.gqa_decode_attention_ref``."""
    check_gqa_decode_args(q, k, v, mask)
    if block_s < 16 or block_s & (block_s - 1):
        raise ValueError(f"gqa_decode_attention: block_s must be a power of two >= 16, got {block_s}")
    if splits is not None and splits < 1:
        raise ValueError(f"gqa_decode_attention: splits must be >= 1, got {splits}")
    b, h_q, _, d = q.shape
    h_kv, s = k.shape[1], k.shape[2]
    out = torch.empty(b, h_q, d, device=q.device, dtype=q.dtype)
    if b == 0 or s == 0:
        return out.zero_().unsqueeze(2)
    blocks = triton.cdiv(s, block_s)
    if splits is None:  # about two programs per SM, whole blocks per split
        splits = max(1, min(blocks, triton.cdiv(2 * _num_sms(q.device), b * h_kv)))
    blocks_per_split = triton.cdiv(blocks, splits)
    splits = triton.cdiv(blocks, blocks_per_split)  # none empty
    part_o = torch.empty(b, h_q, splits, d, device=q.device, dtype=torch.float32)
    part_m = torch.empty(b, h_q, splits, device=q.device, dtype=torch.float32)
    part_l = torch.empty_like(part_m)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    has_bias = mask is not None
    bias = mask[:, 0, 0, :] if has_bias else q  # [B or 1, S]; a dummy pointer without a mask
    stride_bb = (bias.stride(0) if bias.shape[0] > 1 else 0) if has_bias else 0
    _gqa_decode_split_kernel[(b * h_kv, splits)](
        q, k, v, bias, part_o, part_m, part_l,
        h_kv, s, blocks_per_split, scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        stride_bb, bias.stride(-1) if has_bias else 0,
        N_REP=h_q // h_kv, D=d, BLOCK_S=block_s, HAS_BIAS=has_bias,
        BOOL_BIAS=has_bias and mask.dtype == torch.bool, FP32_DOTS=triton_interpreting(), num_warps=4,
    )  # fmt: skip
    _gqa_decode_combine_kernel[(b * h_q,)](
        part_o, part_m, part_l, out, SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits), D=d, num_warps=4
    )
    return out.unsqueeze(2)
