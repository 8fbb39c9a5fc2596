"""Test helpers shared by the test suites: exact FP8 / scale comparison and GEMM tolerances.

Importing this module imports torch only (no Triton), so any test can use it.
"""

from __future__ import annotations

import torch

from .reference import FP8_DTYPE


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error ``|actual - expected| / |expected|``, computed in fp32."""
    a, e = actual.float(), expected.float()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (Triton kernels then need TRITON_INTERPRET=1)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def fp8_canonical_bits(t: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn -> uint8 codes with -0 (0x80) mapped to +0 and both NaN codes (0x7F, 0xFF) to 0x7F.

    The contract allows the sign of a zero code to differ (``-v / s`` may give -0 one way and +0
    the other) and says nothing about the sign of a NaN; everything else must match bit for bit.
    """
    if t.dtype != FP8_DTYPE:
        raise TypeError(f"expected {FP8_DTYPE}, got {t.dtype}")
    bits = t.view(torch.uint8).to(torch.int16)  # int16: no unsigned-compare surprises
    bits = torch.where(bits == 0x80, torch.zeros_like(bits), bits)
    bits = torch.where((bits & 0x7F) == 0x7F, torch.full_like(bits, 0x7F), bits)
    return bits.to(torch.uint8)


def _first_mismatches(mask: torch.Tensor, limit: int = 8) -> list[tuple[int, ...]]:
    return [tuple(i) for i in mask.nonzero()[:limit].tolist()]


def assert_fp8_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "fp8 codes") -> None:
    """Bit-exact equality of two float8_e4m3fn tensors, up to the sign of zeros and of NaNs."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = fp8_canonical_bits(actual).cpu(), fp8_canonical_bits(expected).cpu()
    bad = a != e
    if bad.any():
        where = _first_mismatches(bad)
        detail = ", ".join(
            f"{i}: {actual.cpu()[i].float().item()!r} (0x{a[i].item():02x}) != "
            f"{expected.cpu()[i].float().item()!r} (0x{e[i].item():02x})"
            for i in where
        )
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} differ; first: {detail}")


def assert_scales_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "scales") -> None:
    """Bit-exact equality of fp32 scales; NaN must sit at the same positions (payload may differ)."""
    if actual.dtype != torch.float32 or expected.dtype != torch.float32:
        raise AssertionError(f"{what}: dtypes {actual.dtype}, {expected.dtype}; both must be float32")
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.cpu(), expected.cpu()
    a_nan, e_nan = a.isnan(), e.isnan()
    same_bits = a.view(torch.int32) == e.view(torch.int32)
    bad = (a_nan != e_nan) | (~a_nan & ~same_bits)
    if bad.any():
        where = _first_mismatches(bad)
        detail = ", ".join(f"{i}: {a[i].item()!r} != {e[i].item()!r}" for i in where)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} differ; first: {detail}")


# Relative part of the GEMM tolerance, per output dtype, with the reason.
#   bfloat16: 8 significant bits, so one unit in the last place is at most 2**-7 of the value.
#     A full ulp rather than half: the kernel's fp32 sum differs from the reference's in the last
#     bits (summation order), which can put the two on either side of a rounding boundary, and
#     Triton's interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest even).
#   float16: 11 significant bits, one ulp is at most 2**-10 of the value (same reasoning).
#   float32: no output rounding to speak of; only the fp32 summation order differs. Measured
#     (K <= 7168, H100 and interpreter): at most ~1e-5 relative on outputs above 1% of the largest,
#     ~4e-6 for K <= 1000; smaller outputs, where the sum cancels, are covered by atol.
_GEMM_RTOL = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 1e-5}


# Hopper fp8 wgmma (BLOCK_M >= 64 on sm_90) keeps ~14 bits while it accumulates within a K block.
# Measured on the H100 (benchmarks/kernel_lab.py, 2026-11-25): max |y - ref| beyond the bf16 output
# rounding = 2**-15.8 of abs_sum_max, for our kernels and for cuBLAS blockwise alike. 2**-13 leaves 7x.
HOPPER_FP8_ACC_ATOL = 2.0**-13


def gemm_tolerance(out_dtype: torch.dtype, abs_sum_max: float, hopper_fp8_mma: bool = False) -> dict[str, float]:
    """``rtol``/``atol`` for ``torch.testing.assert_close(kernel_y.float(), ref_y.float(), **tol)``.

    ``kernel_y`` and ``ref_y`` (``block_gemm_ref``) come from the *same* quantized inputs, so they
    differ only by the accumulation inside each K block and the final rounding to ``out_dtype``:

    * ``rtol``: one ulp of ``out_dtype`` (see ``_GEMM_RTOL`` for why a full ulp);
    * ``atol``: accumulation noise, which scales with the sum of the magnitudes of the terms, not
      with the (possibly cancelled) result: ``2**-18 * abs_sum_max`` for exact fp32 accumulation
      (fp16 operands, mma.sync, the interpreter; measured 2**-24.7 .. 2**-26), and
      ``2**-13 * abs_sum_max`` when the GPU multiplies with fp8 wgmma (``hopper_fp8_mma``; see
      ``HOPPER_FP8_ACC_ATOL``). ``abs_sum_max`` is the largest ``sum_k |xq * xs| * |wq * ws|``
      of an output (``gemm_abs_sum_max``).
    """
    if out_dtype not in _GEMM_RTOL:
        raise ValueError(f"no GEMM tolerance for {out_dtype}")
    atol = HOPPER_FP8_ACC_ATOL if hopper_fp8_mma else 2.0**-18
    return {"rtol": _GEMM_RTOL[out_dtype], "atol": atol * float(abs_sum_max)}


def gemm_abs_sum_max(xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor) -> float:
    """``max_{m,n} sum_k |xq[m,k] xs[m,k//128]| |wq[n,k] ws[n//128,k//128]|``: the scale of the fp32 noise."""
    from .reference import block_gemm_ref  # block_gemm_ref upcasts its inputs, so fp32 |codes| work

    bound = block_gemm_ref(xq.float().abs(), xs.abs(), wq.float().abs(), ws.abs(), out_dtype=torch.float32)
    return float(bound.max()) if bound.numel() else 0.0
