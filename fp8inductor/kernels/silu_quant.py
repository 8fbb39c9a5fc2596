"""SiLU(gate) * up + 1x128 activation quantization in one kernel: ``silu_mul_quant``.

down_proj's activation in a Llama-style MLP is ``silu(gate_proj(x)) * up_proj(x)``, read only to be
quantized. Inductor fuses the product into its IR quantization (``fp8inductor.quant_ir``) as a
persistent reduction; at Llama-3-8B prefill 1 x 2048 on the H100 that kernel took 64.6 us per layer
(2.3 TB/s of the 147 MB it moves; docs/benchmarks.md, 2026-12-05) where bf16's SiLU * up alone
takes 53.5. Here each program owns a BLOCK_M x 128 tile (one 128-group of BLOCK_M rows), the group
index fastest so neighbouring programs read neighbouring 256-byte chunks of the same rows, and
writes its BLOCK_M scales as one run of the column-major scale buffer (what the GEMM reads) instead
of one 4-byte store per row.

Numerics, per element (``reference.silu_mul_quant_ref``), all in fp32 with no rounding to the
activation dtype in between (as Inductor's fused chain, ``config.emulate_precision_casts`` off):

    y = gate / (exp(-gate) + 1) * up        SiLU as Inductor writes it; libdevice ``exp`` on the GPU
    q, s = 1x128 quantization of y          exactly as ``act_quant`` (IEEE division, RNE cast)

Up to ``pdl.PDL_MAX_M`` rows (decode sizes in a dynamic-M graph: a static decode graph keeps the IR
quantization in front of its split-K down_proj) the kernel is launched with programmatic dependent
launch, as ``rms_norm_quant``: it waits for its producer, then lets the GEMM launch.

The GPU's ``exp`` and the division differ from the CPU's in the last fp32 bit now and then, which
can move a code by one step (tests state the rate); the quantization of a given y is bit-exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference import FP8_DTYPE, _check_scale_fmt, ceil_div, check_silu_mul_args
from .act_quant import GROUP_K, _amax_to_scale, _fp32_to_e4m3, _upcast_fp32, native_fp8_cast
from .norm_quant import _div_by_scale, _rows
from .pdl import launch_options, pdl_enabled


@triton.jit
def _silu_mul_quant_kernel(
    gate_ptr,  # [M, N] bf16/fp16/fp32, strides (stride_gm, 1)
    up_ptr,  # [M, N] gate's dtype, strides (stride_um, 1)
    q_ptr,  # [M, N] float8e4nv codes (out), contiguous
    s_ptr,  # [M, ceil(N/128)] fp32 scales (out), strides (1, M): column-major, as the GEMM reads them
    M,
    N,
    stride_gm,
    stride_um,
    BLOCK_M: tl.constexpr,
    GROUP: tl.constexpr,  # 128
    UE8M0: tl.constexpr,  # scale_fmt == "ue8m0"
    NATIVE_CAST: tl.constexpr,  # the GPU (hardware e4m3 cast, libdevice exp), else the interpreter
    PDL: tl.constexpr = False,  # launched with PDL (kernels/pdl.py)
):
    if PDL:
        tl.extra.cuda.gdc_wait()  # before any load or store: the previous kernel is done and visible
        tl.extra.cuda.gdc_launch_dependents()  # the GEMM may launch now (it waits for us before reading)
    g = tl.program_id(0)  # the 128-column group: fastest, so neighbours read neighbouring chunks
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = g * GROUP + tl.arange(0, GROUP)
    mask = (rows < M)[:, None] & (cols < N)[None, :]  # [BLOCK_M, GROUP]; lanes past N read 0
    gate = _upcast_fp32(tl.load(gate_ptr + rows[:, None] * stride_gm + cols[None, :], mask=mask, other=0.0))
    up = _upcast_fp32(tl.load(up_ptr + rows[:, None] * stride_um + cols[None, :], mask=mask, other=0.0))
    if NATIVE_CAST:
        e = tl.extra.cuda.libdevice.exp(-gate)  # what Inductor's generated code calls
    else:
        e = tl.exp(-gate)  # the interpreter has no libdevice (numpy's exp)
    y = gate / (e + 1.0) * up
    amax = tl.max(tl.abs(y), axis=1)  # [BLOCK_M]
    has_nan = tl.max((y != y).to(tl.int32), axis=1) > 0
    s = _amax_to_scale(amax, has_nan, UE8M0)
    q = _fp32_to_e4m3(_div_by_scale(y, s), NATIVE_CAST)
    tl.store(q_ptr + rows[:, None] * N + cols[None, :], q, mask=mask)
    tl.store(s_ptr + g.to(tl.int64) * M + rows, s, mask=rows < M)  # column-major: BLOCK_M floats in a run


# BLOCK_M x num_warps: benchmarks/lab/silu_quant_lab.py's sweep (H100, 2026-12-06; see its JSON).
BLOCK_M = 32
NUM_WARPS = 8


def silu_mul_quant(
    gate: torch.Tensor,
    up: torch.Tensor,
    scale_fmt: str = "float",
    block_m: int = BLOCK_M,
    num_warps: int = NUM_WARPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.silu_mul_quant_ref`` in one Triton kernel.

    Args:
        gate, up: [..., N] of one float dtype and shape; rows may be strided (e.g. the two halves of
            a fused gate/up GEMM's output), N must be unit-stride (else copied).
        block_m, num_warps: the tile (the lab's sweep).
    Returns:
        q: [..., N] float8_e4m3fn, contiguous.
        s: [..., ceil(N/128)] float32, column-major over the flattened rows: strides (1, M) as [M, G].
    """
    _check_scale_fmt(scale_fmt)
    check_silu_mul_args(gate, up)
    *lead, n = gate.shape
    g2, u2 = _rows(gate, n), _rows(up, n)
    m = g2.shape[0]
    groups = ceil_div(n, GROUP_K)
    q = torch.empty((*lead, n), dtype=FP8_DTYPE, device=gate.device)
    s = torch.empty((groups, m), dtype=torch.float32, device=gate.device).t().view(*lead, groups)
    if m == 0 or n == 0:
        return q, s
    pdl = pdl_enabled(gate.device, m)
    _silu_mul_quant_kernel[(groups, triton.cdiv(m, block_m))](
        g2, u2, q, s, m, n, g2.stride(0), u2.stride(0),
        BLOCK_M=block_m, GROUP=GROUP_K, UE8M0=scale_fmt == "ue8m0",
        NATIVE_CAST=native_fp8_cast(gate.device), PDL=pdl, num_warps=num_warps, **launch_options(pdl),
    )  # fmt: skip
    return q, s

