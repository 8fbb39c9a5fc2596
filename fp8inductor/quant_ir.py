"""The 1x128 activation quantization written as Inductor IR, so Inductor fuses it into its producer.

``quantize_activation`` as an op is a FallbackKernel: it reads the activation that its producer
(an RMSNorm, SiLU(gate) * up, the attention output's transpose copy) wrote to memory. Written as
Inductor IR it is two loops Inductor can schedule like its own:

    amax[m, g] = max_r |x[m, 128 g + r]|                       # Reduction, ranges [M, G] x [128]
    s[m, g]    = div_rn(max(amax[m, g], 1e-4), 448)            # Pointwise (ue8m0: next power of two)
    q[m, g, r] = e4m3(clamp(div_rn(x[m, 128 g + r], s[m, g]), -448, 448))   # Pointwise [M, G, 128]
                                                               # (ue8m0 with s = 2**120: +-240)

Inductor inlines an unrealized producer (SiLU * mul, RMSNorm's normalization, a transpose copy) into
both loops and fuses the three into one kernel (the reduction's numel M * G and rnumel 128 match
the quant's [M, G, 128]), so the producer's bf16 output is never written or read back.

Numerics: the same operations as ``reference.quantize_activation_ref`` in the same order, with
IEEE divisions (``_div_rn``: the PTX ``div.rn.f32`` on the GPU, where Triton's ``/`` is the
approximate ``div.full.f32``; the CPU's C++ division is IEEE) and
NaN-propagating max (Inductor's ``max`` reduction and ``maximum`` propagate NaN, as ``torch.amax``
does). Given the same input values the codes and scales are bit-equal to the reference (tests:
``tests/test_quant_ir.py``, on the CPU and on the H100). What differs is
the input itself where a producer is fused: Inductor keeps the producer's value in fp32 instead of
rounding it to bf16 first (``config.emulate_precision_casts`` off), as it does for any fused bf16
chain; the quantization then sees the more precise value.

Only for K a multiple of 128 (every group full; else the op's kernel handles the ragged group),
on the CPU and on NVIDIA GPUs (inline PTX; not ROCm).

Why inline PTX: torch 2.13's Inductor has ``ops.div_rn`` (``tl.math.div_rn`` in Triton), 2.11's
has not (its Triton codegen emits ``/`` unless the graph-wide ``eager_numerics.division_rounding``
is set); ``ops.inline_asm_elementwise`` exists in both (Inductor's own ``cvt_e8m0_rceil`` lowering
uses it), so one code path serves every supported torch.
"""

from __future__ import annotations

import os

import torch
from torch._inductor import ir
from torch._inductor import lowering as L
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import ops

from .reference import FP8_DTYPE, TOP_SCALE, TOP_SCALE_CODE_MAX, _check_scale_fmt

GROUP = 128  # activation group along K
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_FLOOR = 1e-4  # amax floor: an all-zero group gets scale 1e-4 / 448, not 0 (reference.py)

aten = torch.ops.aten
_F32 = torch.float32


def enabled() -> bool:
    """The IR may stand in for the op's kernel unless ``FP8INDUCTOR_QUANT_IR=0`` (A/B runs; read on
    every call, and part of the fp8block pass's cache key)."""
    return os.environ.get("FP8INDUCTOR_QUANT_IR", "1") != "0"


def available(device: torch.device, k, scale_fmt: str) -> bool:
    """Whether ``quantize_1x128`` may stand in for the op's kernel: ``enabled``, K a static multiple
    of 128, a known scale format, and a device whose IEEE division ``_div_rn`` knows (CPU, NVIDIA
    GPU)."""
    if not enabled() or scale_fmt not in ("float", "ue8m0"):
        return False
    if not isinstance(k, int) or k <= 0 or k % GROUP:
        return False
    return device.type == "cpu" or (device.type == "cuda" and torch.version.hip is None)


def _div_rn(x, y, device: torch.device):
    """fp32 x / y, IEEE round-to-nearest-even: the PTX instruction on the GPU (Triton's ``/`` is
    ``div.full.f32``, off by up to 2 ulp), the C++ division on the CPU (IEEE already)."""
    if device.type == "cpu":
        return ops.truediv(x, y)
    return ops.inline_asm_elementwise(
        x, y, asm="div.rn.f32 $0, $1, $2;", constraints="=f,f,f", dtype=_F32, is_pure=True, pack=1
    )


def _fma_rn(a, b, c):
    """fp32 a * b + c with one rounding (PTX ``fma.rn.f32``; GPU only)."""
    return ops.inline_asm_elementwise(
        a, b, c, asm="fma.rn.f32 $0, $1, $2, $3;", constraints="=f,f,f,f", dtype=_F32, is_pure=True, pack=1
    )


def _div_by_scale(x, s, device: torch.device):
    """IEEE round-to-nearest x / s for a group scale s > 0, as ``kernels/norm_quant._div_by_scale``:
    on the GPU one correctly rounded reciprocal per group (s is loaded per group, so Inductor's
    kernel computes it once per [XBLOCK, 1] row of groups) and an fma correction per element
    instead of a ``div.rn.f32`` per element (a ~10-instruction sequence), bit for bit the same
    quotient (Markstein; v / s <= 448 never overflows; an Inf scale gives x * 0 as the division).
    The CPU's division is IEEE already."""
    if device.type == "cpu":
        return ops.truediv(x, s)
    rcp = _div_rn(ops.constant(1.0, _F32), s, device)
    q0 = ops.mul(x, rcp)
    q = _fma_rn(_fma_rn(ops.neg(q0), s, x), rcp, q0)
    q = ops.where(ops.eq(q0, ops.constant(0.0, _F32)), q0, q)  # a zero quotient keeps its sign
    return ops.where(ops.eq(s, ops.constant(float("inf"), _F32)), ops.mul(x, ops.constant(0.0, _F32)), q)


def _ue8m0(s):
    """fp32 s > 0 -> 2**ceil(log2 s), exactly, from the bits (as ``act_quant._amax_to_scale``):
    a non-zero mantissa bumps the exponent and is cleared; Inf and NaN pass through."""
    bits = ops.to_dtype_bitcast(s, torch.int32, _F32)
    exp_bits = ops.bitwise_and(bits, ops.constant(0x7F800000, torch.int32))
    mantissa = ops.bitwise_and(bits, ops.constant(0x007FFFFF, torch.int32))
    special = ops.eq(exp_bits, ops.constant(0x7F800000, torch.int32))
    # (the bump never sees Inf / NaN's exponent, which would overflow int32; those keep their bits)
    bumped = ops.add(ops.where(special, ops.constant(0, torch.int32), exp_bits), ops.constant(0x00800000, torch.int32))
    up = ops.where(ops.ne(mantissa, ops.constant(0, torch.int32)), bumped, bits)
    return ops.to_dtype_bitcast(ops.where(special, bits, up), _F32, torch.int32)


def quantize_1x128(x, m, k: int, scale_fmt: str = "float", col_major_scales: bool = False):
    """Quantize x per row in groups of 128 along K, as Inductor IR.

    Args:
        x: TensorBox [*lead, K] of bf16/fp16/fp32 with prod(lead) == m (m may be symbolic); any
            layout, realized or not (an unrealized producer is inlined).
        k: K, a multiple of 128 (``available``).
        col_major_scales: lay s out with strides (1, M), as cuBLAS blockwise reads it.
    Returns:
        q: TensorBox [M, K] float8_e4m3fn, contiguous.
        s: TensorBox [M, K / 128] float32, contiguous or (``col_major_scales``) strides (1, M).
    """
    _check_scale_fmt(scale_fmt)
    groups = k // GROUP
    device = x.get_device()
    x2 = L.lowerings[aten.view.default](x, [m, k])
    load_x = x2.make_loader()

    def x_fp32(row, g, r):
        return ops.to_dtype(load_x([row, g * GROUP + r]), _F32)

    def abs_x(index, rindex):
        (row, g), (r,) = index, rindex
        return ops.abs(x_fp32(row, g, r))

    amax = ir.Reduction.create(
        device=device,
        dst_dtype=_F32,
        src_dtype=_F32,
        inner_fn=abs_x,
        ranges=[m, groups],
        reduction_ranges=[GROUP],
        reduction_type="max",
        # Each group is 128 contiguous elements: an inner reduction. Said explicitly because
        # Inductor's own guess gives up on large outputs (M * K/128 >= 64 * SMs: DEFAULT), and a
        # DEFAULT-hinted 128-wide reduction is looped, not persistent: x read twice (the amax pass,
        # then the quant pass). On the H100 (2026-11-25, Llama-3-8B prefill 1 x 2048) the looped
        # SiLU * up -> quant took 117 us per layer, 60 us as a persistent kernel (quant_fusion_lab).
        # The hint alone was not enough: see ``quant`` below (tests/test_quant_ir.py plans it).
        reduction_hint=ReductionHint.INNER,
    )
    amax.realize()  # a reduction is read through its buffer (removed again when all readers fuse)
    load_amax = amax.make_loader()

    def scale(index):
        s = _div_rn(ops.maximum(load_amax(index), ops.constant(SCALE_FLOOR, _F32)), ops.constant(FP8_MAX, _F32), device)
        s = _ue8m0(s) if scale_fmt == "ue8m0" else s
        return ops.where(ops.ne(s, s), ops.constant(float("nan"), _F32), s)  # the positive NaN, as below

    s = ir.Pointwise.create(device=device, dtype=_F32, inner_fn=scale, ranges=[m, groups])
    s.realize()
    s = ir.ExternKernel.require_stride_order(s, [0, 1] if col_major_scales else [1, 0])

    def quant(index):
        row, g, r = index
        # s recomputed from amax, not loaded from the scale buffer: a read of the column-major
        # scales here would make this node "non-contiguous" to Inductor, which then drops the inner
        # reduction hint and loops the reduction (x read twice). Same operations, same bits.
        sc = scale([row, g])
        v = _div_by_scale(x_fp32(row, g, r), sc, device)
        lo, hi = ops.constant(-FP8_MAX, _F32), ops.constant(FP8_MAX, _F32)
        if scale_fmt == "ue8m0":  # s == 2**120: codes saturate at +-240 (reference.code_bound)
            top = ops.eq(sc, ops.constant(TOP_SCALE, _F32))
            hi = ops.where(top, ops.constant(TOP_SCALE_CODE_MAX, _F32), hi)
            lo = ops.neg(hi)
        v = ops.minimum(ops.maximum(v, lo), hi)
        # NaN -> the positive NaN, code 0x7F, as the Triton kernel writes (x86 makes Inf / Inf a
        # negative NaN, 0xFF; the sign of a NaN carries nothing)
        v = ops.where(ops.ne(v, v), ops.constant(float("nan"), _F32), v)
        return ops.to_dtype(v, FP8_DTYPE, src_dtype=_F32)

    q = ir.Pointwise.create(device=device, dtype=FP8_DTYPE, inner_fn=quant, ranges=[m, groups, GROUP])
    q.realize()
    q = ir.ExternKernel.require_contiguous(q)
    return L.lowerings[aten.view.default](q, [m, k]), s
