"""fp8inductor: the ``fp8block`` torch.compile backend (DeepSeek-V3 fine-grained FP8 on Inductor).

    fast = torch.compile(model, backend="fp8block")      # no import needed (entry point)

Public API (SPEC section 1):

* ``quantize_weight(w, block=(128, 128), scale_fmt="float") -> (q, scale_inv)``
* ``quantize_activation(x, group=128, scale_fmt="float") -> (q, scale)``
* ``dequantize_weight(q, scale_inv, block=(128, 128), dtype=torch.bfloat16)``
* ``block_fp8_linear(x, q, scale_inv, bias=None) -> y``
* ``FP8BlockConfig``; ``fp8block`` (the backend); ``reports()`` / ``last_report()``.
* Eager modules: ``FP8BlockLinear``, ``quantize_(model)``, ``convert_transformers_fp8_(model)``
  (transformers' ``FP8Linear`` -> ``FP8BlockLinear``, tensors shared), ``release_bf16_weights(model)``
  (after a backend-only compile: convert in place and drop the compiled graphs' FP8 copies),
  ``reset()`` (drop every compiled graph and its FP8 constants: after changing weights in place).
  Checkpoints: ``fp8inductor.checkpoint`` (see docs/checkpoints.md).

Importing this package does not import the backend (which turns Inductor freezing on) nor Triton.
"""

from __future__ import annotations

from typing import Any

import torch

from . import ops as _ops
from .config import FP8BlockConfig
from .modules import FP8BlockLinear, convert_transformers_fp8_, quantize_, release_bf16_weights, reset
from .reference import FP8_DTYPE, FP8_E4M3_MAX, check_block_size, check_weight_block, dequantize_weight_ref

__version__ = "0.1.0"

__all__ = [
    "FP8BlockConfig",
    "FP8BlockLinear",
    "FP8_DTYPE",
    "FP8_E4M3_MAX",
    "block_fp8_linear",
    "convert_transformers_fp8_",
    "dequantize_weight",
    "fp8block",
    "last_report",
    "quantize_",
    "quantize_activation",
    "quantize_weight",
    "release_bf16_weights",
    "reports",
    "reset",
]


def quantize_weight(
    w: torch.Tensor, block: tuple[int, int] = (128, 128), scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q [N, K] float8_e4m3fn, scale_inv [ceil(N/bn), ceil(K/bk)] float32); w ~= q * scale_inv."""
    bn, bk = check_weight_block(block)
    return _ops.quantize_weight(w, bn, bk, scale_fmt)


def quantize_activation(
    x: torch.Tensor, group: int = 128, scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (q [..., K] float8_e4m3fn, scale [..., ceil(K/group)] float32); x ~= q * scale."""
    return _ops.quantize_activation(x, check_block_size(group, "activation group"), scale_fmt)


def dequantize_weight(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """q [N, K] fp8, scale_inv [ceil(N/bn), ceil(K/bk)] fp32 (or float8_e8m0fnu) -> [N, K] ``dtype``."""
    return dequantize_weight_ref(q, scale_inv, block, dtype)  # checks the block itself



def block_fp8_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale_fmt: str = "float",
) -> torch.Tensor:
    """Quantize x [..., K] per 1x128 group, block-scaled GEMM with (q [N, K], scale_inv), + bias [N].

    Returns y [..., N] in x.dtype.
    """
    return _ops.block_linear(x, q, scale_inv, bias, 128, scale_fmt)


def __getattr__(name: str) -> Any:
    if name in ("fp8block", "reports", "last_report"):
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'fp8inductor' has no attribute {name!r}")
