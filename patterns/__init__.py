"""Pattern definitions of the fp8block rewrite (installed as ``fp8inductor.patterns``)."""

from .base import LinearMatch, MatmulPattern
from .linear import ADDMM_KN, ADDMM_NK, ALL_PATTERNS, MM_KN, MM_NK

__all__ = ["ALL_PATTERNS", "ADDMM_KN", "ADDMM_NK", "MM_KN", "MM_NK", "LinearMatch", "MatmulPattern"]
