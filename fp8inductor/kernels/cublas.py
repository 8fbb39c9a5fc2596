"""cuBLAS blockwise FP8 GEMM (``torch._scaled_mm``), and where it may be called.

cuBLAS (>= 12.9, compute capability 9.x) runs the same 1x128 x 128x128 block-scaled GEMM as the
Triton kernels of ``block_gemm``, with the same fp32 promotion per 128-wide K block: it is a GEMM
choice next to them (``GemmConfig("cublas", ...)``), picked by the tuned tables or the heuristic
where it is faster (M >= 128 on the H100: ``kernels/config.py``).

Where it may be called is measured, not assumed (``benchmarks/lab/cublas_blockwise_lab.py``, H100,
torch 2.11.0+cu130, 2026-11-25, 320 shapes x 6 variants against the float32 reference):

| condition | if broken |
|---|---|
| ``ceil(K / 128) % 4 == 0`` | **silently wrong** (relative error 0.06 to inf, NaN) at K/128 = 3, 5, 9, 33: cuBLAS reads the 128x128 scales with a leading dimension rounded up to 4, torch's check passes the unrounded one (torch's ``_scaled_mm_v2`` asks for the padded layout) |
| ``M % 4 == 0`` | CUBLAS_STATUS_NOT_SUPPORTED (M = 1, 2, 5, 17, 33, 127, 129, 2047): ``block_gemm`` pads the rows |
| ``N % 16 == 0``, ``K % 16 == 0`` | rejected by torch |
| bias only with a bf16/fp16 output, in that dtype | rejected by torch ("Bias is not supported when out_dtype is set to Float32") |
| compute capability 9.x | torch raises NotImplementedError elsewhere |

Every other case of the sweep (M in {4, 8, 12, 16, 24, 32, 64, 100, 128, 256, 1000, 2048}; K not a
multiple of 128 with ceil(K/128) % 4 == 0, e.g. 4000; bf16, fp16 and fp32 outputs; bf16/fp16 bias)
agreed with the reference to 1.7e-3 or better (the output rounding). ``usable`` admits only those, on
a torch built with CUDA >= 12.9 (torch raises NotImplementedError on older cuBLAS); should cuBLAS still
raise, ``block_gemm._gemm`` falls back to the Triton kernels with one warning.

Rows. cuBLAS takes M % 4 == 0 only; any other M (a prompt of 2047 tokens) is run as the next
multiple of 4 (``padded_rows``) and the first M rows of the product are returned (rows of a GEMM are
independent, so they are those of an M-row product). Who writes the up to 3 zero rows: the Inductor
lowering's quantization, over x padded by a masked load (``lowering._cublas_linear``); the quant
kernel in ``fp8_block_linear`` (``act_quant_1x128(rows=...)``); else ``block_gemm`` copies the
operand (``pad_rows``: 2 x M x K bytes moved, 11 us at 2047 x 4096 on the H100, 2026-12-07; the
norm-fused linears, whose quantization is the norm kernel's, take this path). ``admits`` and
``usable`` judge the padded call. Before, such M ran the Triton kernels, 0.70x cuBLAS blockwise at
M >= 2048: a 2047-token prefill of 8 Llama-3-8B layers went from 1.09x to 1.36x of ``torch.compile``
bf16 with the padding (docs/benchmarks.md). ``FP8INDUCTOR_CUBLAS_PAD_ROWS=0`` turns it off.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

from ..reference import FP8_DTYPE, ceil_div
from .config import QBLOCK

log = logging.getLogger("fp8inductor")

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def enabled() -> bool:
    """cuBLAS may be chosen unless ``FP8INDUCTOR_CUBLAS=0`` (read on every call: tests and A/B runs)."""
    return os.environ.get("FP8INDUCTOR_CUBLAS", "1") != "0"


def cuda_build_ok(version: str | None = None) -> bool:
    """torch was built with CUDA >= 12.9 (cuBLASLt's blockwise scaling; ``version``: torch.version.cuda)."""
    version = torch.version.cuda if version is None else version
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except (AttributeError, ValueError):  # None (a CPU or ROCm build) or an unparsable string
        return False
    return (major, minor) >= (12, 9)


@functools.cache
def device_supported(device: torch.device) -> bool:
    """A CUDA device of compute capability 9.x (Hopper), the only one torch routes this recipe to,
    with a torch built for CUDA >= 12.9."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm") or not cuda_build_ok():
        return False
    return torch.cuda.get_device_capability(device)[0] == 9


ROW_ALIGN = 4  # cuBLAS blockwise takes M % 4 == 0 only


def padded_rows(m: int) -> int:
    """The rows cuBLAS is called with for an M-row product: M rounded up to a multiple of 4."""
    return ceil_div(m, ROW_ALIGN) * ROW_ALIGN


def pad_rows_enabled() -> bool:
    """M % 4 != 0 may run on cuBLAS, padded, unless ``FP8INDUCTOR_CUBLAS_PAD_ROWS=0`` (A/B runs: then
    such M run the Triton kernels, as before the padding; read on every call, part of the pass's
    cache key)."""
    return os.environ.get("FP8INDUCTOR_CUBLAS_PAD_ROWS", "1") != "0"


def shape_ok(m: int, n: int, k: int, out_dtype: torch.dtype, bias_dtype: torch.dtype | None) -> bool:
    """The measured conditions of the module docstring for a call of M rows as cuBLAS gets it, on
    sizes and dtypes alone (M % 4 included: callers pass ``padded_rows(m)`` where they pad)."""
    if m <= 0 or n <= 0 or k <= 0:
        return False
    if m % 4 or n % 16 or k % 16 or ceil_div(k, QBLOCK) % 4:
        return False
    if out_dtype not in OUT_DTYPES:
        return False
    return bias_dtype is None or (out_dtype != torch.float32 and bias_dtype == out_dtype)


def admits(
    device: torch.device, m: int, n: int, k: int, out_dtype: torch.dtype, bias_dtype: torch.dtype | None
) -> bool:
    """cuBLAS is on, the device and build support it, and ``shape_ok`` for the padded call (``m``
    rounded up to a multiple of 4, as ``block_gemm`` runs it): the part of ``usable`` that sizes and
    dtypes decide (what compile-time decisions can know; ``block_gemm.static_choice``)."""
    if m <= 0:
        return False
    rows = padded_rows(m) if pad_rows_enabled() else m
    return enabled() and device_supported(device) and shape_ok(rows, n, k, out_dtype, bias_dtype)


def _aligned_rows(t: torch.Tensor) -> bool:
    """Row-major contiguous with a 16-byte aligned base (cuBLAS operands and scale matrices)."""
    return t.is_contiguous() and t.data_ptr() % 16 == 0


def usable_weight(
    m: int, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> bool:
    """Whether cuBLAS may run ``y [M, N] = x @ (wq, ws).T + bias`` once x is freshly quantized
    (contiguous, aligned): the weight's and the output's part of ``usable``.

    wq: [N, K] fp8; ws: [ceil(N/128), ceil(K/128)] fp32; bias: [N] or None (aligned like the others:
    the sweep only saw fresh biases).
    """
    n, k = wq.shape
    if not admits(wq.device, m, n, k, out_dtype, None if bias is None else bias.dtype):
        return False
    return _aligned_rows(wq) and _aligned_rows(ws) and (bias is None or _aligned_rows(bias))


def usable(
    xq: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype
) -> bool:
    """Whether ``block_gemm(xq, xs, wq, ws, bias, out_dtype)`` may run here (any xs layout: it is
    copied to the column-major layout cuBLAS reads if it is not in it already).

    xq: [M, K] fp8.
    """
    return xq.dtype == FP8_DTYPE and _aligned_rows(xq) and usable_weight(xq.shape[0], wq, ws, bias, out_dtype)


def block_gemm(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``y = (xq * xs) @ (wq * ws).T + bias`` by cuBLAS; the caller has checked ``usable``.

    Args:
        xq: [M, K] float8_e4m3fn, contiguous.
        xs: [M, ceil(K/128)] float32; read in place when its strides are (1, M) (``act_quant_1x128``
            with ``col_major_scales=True`` writes it so), else copied into that layout.
        wq: [N, K] float8_e4m3fn, contiguous (passed as the column-major [K, N] view ``wq.t()``).
        ws: [ceil(N/128), ceil(K/128)] float32, contiguous (passed as the view ``ws.t()``; a
            contiguous copy of the transpose is rejected by torch).
        bias: [N] in ``out_dtype`` (bf16/fp16) or None.
        out_dtype: bfloat16, float16 or float32.
    Returns:
        y: [M, N] ``out_dtype``, contiguous (with M % 4 != 0: the first M rows of the padded
        product, a view at offset 0 of a [padded_rows(M), N] buffer).
    """
    m = xq.shape[0]
    mp = padded_rows(m)
    if mp != m:
        xq, xs = pad_rows(xq, xs, mp)
    elif xs.stride() != (1, m):
        xs = xs.t().contiguous().t()  # [M, K/128], strides (1, M)
    y = torch._scaled_mm(xq, wq.t(), xs, ws.t(), bias=bias, out_dtype=out_dtype)
    return y[:m] if mp != m else y


def pad_rows(xq: torch.Tensor, xs: torch.Tensor, mp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq [M, K] fp8, xs [M, G] fp32 any strides) -> (xq [Mp, K] contiguous, rows M.. zero codes;
    xs [Mp, G] strides (1, Mp), rows M.. scale 0): one copy kernel each."""
    pad = mp - xq.shape[0]
    xq_p = F.pad(xq.view(torch.uint8), (0, 0, 0, pad)).view(xq.dtype)  # fp8 zero = byte 0
    xs_p = F.pad(xs.t(), (0, pad)).t()  # [G, Mp] contiguous, seen as [Mp, G]
    return xq_p, xs_p


@functools.cache
def warn_failure(reason: str) -> None:
    log.warning("fp8inductor: cuBLAS blockwise GEMM failed (%s); using the Triton kernels", reason)
