"""Pattern definitions of the fp8block rewrite (installed as ``fp8inductor.patterns``)."""

from .base import LinearMatch, MatmulPattern
from .linear import ADDMM_KN, ADDMM_NK, ALL_PATTERNS, MM_KN, MM_NK
from .rms_norm import RMS_NORM_PATTERNS

__all__ = [
    "ADDMM_KN",
    "ADDMM_NK",
    "ALL_PATTERNS",
    "MM_KN",
    "MM_NK",
    "RMS_NORM_PATTERNS",
    "LinearMatch",
    "MatmulPattern",
]
