"""The RMSNorm forms whose output ``fp8inductor.norm_fusion`` quantizes in one kernel with the norm.

transformers' ``LlamaRMSNorm`` (also Mistral, Qwen2/2.5/3, DeepSeek-V3, Phi-3 and most decoders
since) on the joint graph, for a bf16/fp16 model:

    hf  = convert_element_type(h, float32)                      # 2 users: pow and mul
    out = mul(weight, convert_element_type(mul(hf, rsqrt(add(mean(pow(hf, 2), [-1], True), eps))), h.dtype))

and for an fp32 model the same without the two conversions. (That form also matches a norm a
bf16/fp16 model computes without upcasting; the fused kernel then takes its statistics in fp32, as
Inductor's own kernel for it does, where eager would work, and for fp16 above |h| ~ 256 overflow, in
the model's dtype.) Both operand orders of each ``mul`` are
listed (``x * w`` or ``w * x`` in the model's code). Norms that weigh in fp32 or add 1 to the weight
(Gemma) are other forms and are left to Inductor.

Keyword args of a match: ``h`` (the normalized activation [..., K]), ``weight`` ([K]), ``dim``
(mean's dims: [-1] or [h.dim() - 1], checked by the caller) and ``eps``.
"""

from __future__ import annotations

import itertools

import torch
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, PatternExpr

aten = torch.ops.aten
prims = torch.ops.prims


def _mul(a: PatternExpr, b: PatternExpr, swap: bool, users: int = 1) -> CallFunction:
    return CallFunction(aten.mul.Tensor, *((b, a) if swap else (a, b)), _users=users)


def _rms_norm(cast: bool, swap_rstd: bool, swap_weight: bool) -> PatternExpr:
    h = KeywordArg("h")
    # One pattern object for both uses of hf: the matcher then requires one node for both.
    hf = CallFunction(prims.convert_element_type.default, h, torch.float32, _users=2) if cast else h
    mean = CallFunction(aten.mean.dim, CallFunction(aten.pow.Tensor_Scalar, hf, 2), KeywordArg("dim"), True)
    rstd = CallFunction(aten.rsqrt.default, CallFunction(aten.add.Tensor, mean, KeywordArg("eps")))
    normed = _mul(hf, rstd, swap_rstd)
    if cast:
        normed = CallFunction(prims.convert_element_type.default, normed, KeywordArg("out_dtype"))
    return _mul(KeywordArg("weight"), normed, swap_weight)


RMS_NORM_PATTERNS: tuple[PatternExpr, ...] = tuple(
    _rms_norm(cast, swap_rstd, swap_weight)
    for cast, swap_rstd, swap_weight in itertools.product((True, False), repeat=3)
)
