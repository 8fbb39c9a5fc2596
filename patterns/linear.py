"""The matmul forms that become FP8 block linears.

| pattern | source | joint-graph form |
|---|---|---|
| ``mm_nk`` | ``nn.Linear``/``F.linear`` without bias, ``x @ W.T`` | ``mm(x, permute(W, [1, 0]))`` |
| ``addmm_nk`` | ``nn.Linear``/``F.linear`` with bias | ``addmm(b, x, permute(W, [1, 0]))`` |
| ``mm_kn`` | ``x @ W`` with W stored [K, N] | ``mm(x, W)`` |
| ``addmm_kn`` | GPT-2 ``Conv1D`` (W stored [K, N]) | ``addmm(b, x, W)`` |

Whether the weight is really a frozen parameter (and every other eligibility rule) is decided by
``fp8inductor.passes``, which records a reason for each match it leaves alone.
"""

from __future__ import annotations

import torch
from torch._inductor.pattern_matcher import CallFunction, KeywordArg

from .base import MatmulPattern

aten = torch.ops.aten


def _permuted(w: KeywordArg) -> CallFunction:
    return CallFunction(aten.permute.default, w, [1, 0])


MM_NK = MatmulPattern("mm_nk", CallFunction(aten.mm.default, KeywordArg("x"), _permuted(KeywordArg("w"))), "NK")
ADDMM_NK = MatmulPattern(
    "addmm_nk",
    CallFunction(aten.addmm.default, KeywordArg("bias"), KeywordArg("x"), _permuted(KeywordArg("w"))),
    "NK",
)
MM_KN = MatmulPattern("mm_kn", CallFunction(aten.mm.default, KeywordArg("x"), KeywordArg("w")), "KN")
ADDMM_KN = MatmulPattern(
    "addmm_kn", CallFunction(aten.addmm.default, KeywordArg("bias"), KeywordArg("x"), KeywordArg("w")), "KN"
)

# Order matters: the permuted (NK) forms are tried first, so ``mm(x, permute(W))`` is never taken
# for ``mm_kn`` with the permute as its "weight".
ALL_PATTERNS: tuple[MatmulPattern, ...] = (MM_NK, ADDMM_NK, MM_KN, ADDMM_KN)
