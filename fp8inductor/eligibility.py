"""Which linears become FP8: one pure predicate shared by the graph pass and ``quantize_``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import FP8BlockConfig
from .reference import FLOAT_DTYPES


def skip_reason(
    config: FP8BlockConfig,
    module_paths: Iterable[str | None],
    out_features: int,
    in_features: int,
    weight_dtype: torch.dtype,
    weight: torch.Tensor | None = None,
) -> str | None:
    """Why a linear with weight [out_features, in_features] stays in high precision, or None.

    module_paths: every path the linear is known by (its own module, and for tied or shared
    weights the module whose forward runs the matmul); any match in ``modules_to_not_convert``
    skips it. ``weight``, when given, is checked for NaN/Inf (a NaN weight would poison every
    output of its block row; better to leave it alone and say so).
    """
    for path in module_paths:
        if path is not None:
            entry = config.skips_module(path)
            if entry is not None:
                return f"modules_to_not_convert entry {entry!r}"
    if weight_dtype not in FLOAT_DTYPES:
        return f"weight dtype {weight_dtype} is not float32/float16/bfloat16"
    if in_features < config.min_in_features:
        return f"in_features {in_features} < min_in_features {config.min_in_features}"
    if out_features < config.min_out_features:
        return f"out_features {out_features} < min_out_features {config.min_out_features}"
    if weight is not None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():  # the graph pass runs under the compile's fake mode
            finite = bool(torch.isfinite(weight).all())
        if not finite:
            return "weight contains NaN or Inf"
    return None
