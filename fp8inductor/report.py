"""The structured rewrite report: which linears became FP8, which were skipped and why, bytes."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LinearDecision:
    """What happened to one matmul against a weight.

    Attributes:
        module: module path of the linear (e.g. ``model.layers.0.mlp.up_proj``), or of the module
            whose forward holds the matmul for ``x @ W`` forms.
        weight: fully qualified name of the weight parameter.
        pattern: which pattern matched (``mm_nk``, ``addmm_nk``, ``mm_kn``, ``addmm_kn``) or
            ``unmatched`` for a matmul against a parameter in a form no pattern covers.
        out_features / in_features: N and K.
        converted: True if it now runs as an FP8 block linear.
        reason: why it was skipped (None when converted).
        bytes_before / bytes_after: weight storage in the compiled graph (after: FP8 + fp32 scales).
        weight_layout: how the matmul reads the weight: "NK" (``x @ W.T``, Linear), "KN" (``x @ W``,
            Conv1D), "" for an unmatched form. A weight read both ways has one FP8 copy per layout.
        weight_shape: the parameter's shape, for unmatched forms (whose N and K are unknown, 0:
            e.g. an MoE's 3-D experts [E, 2I, H]); empty otherwise.
    """

    module: str
    weight: str
    pattern: str
    out_features: int
    in_features: int
    has_bias: bool
    converted: bool
    reason: str | None
    bytes_before: int
    bytes_after: int
    weight_layout: str = ""
    weight_shape: tuple[int, ...] = ()


@dataclasses.dataclass
class RewriteReport:
    """All decisions of one compiled graph. ``str(report)`` is a readable table."""

    graph_id: int = -1  # numbered when published (a compile attempt that Dynamo restarts is not)
    decisions: list[LinearDecision] = dataclasses.field(default_factory=list)
    note: str | None = None

    @property
    def converted(self) -> list[LinearDecision]:
        return [d for d in self.decisions if d.converted]

    @property
    def skipped(self) -> list[LinearDecision]:
        return [d for d in self.decisions if not d.converted]

    @property
    def weight_bytes_before(self) -> int:
        """Bytes of the converted weights in their original dtype (a weight shared by several
        matmuls counts once)."""
        unique = {d.weight: d.bytes_before for d in self.converted}
        return sum(unique.values())

    @property
    def weight_bytes_after(self) -> int:
        """Bytes of the FP8 copies + fp32 block scales of the same weights: one copy per weight and
        layout (the pass quantizes each (weight, layout) once; a square weight read both as
        ``x @ W.T`` and ``x @ W`` has two, since each GEMM needs its own row-major [N, K] codes)."""
        unique = {(d.weight, d.weight_layout): d.bytes_after for d in self.converted}
        return sum(unique.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph_id": self.graph_id,
            "note": self.note,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "weight_bytes_before": self.weight_bytes_before,
            "weight_bytes_after": self.weight_bytes_after,
            "decisions": [dataclasses.asdict(d) for d in self.decisions],
        }

    def __str__(self) -> str:
        lines = [
            f"fp8block graph {self.graph_id}: {len(self.converted)} linear(s) converted to FP8, "
            f"{len(self.skipped)} skipped; converted weights "
            f"{_mib(self.weight_bytes_before)} -> {_mib(self.weight_bytes_after)}"
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        for d in self.decisions:
            status = "fp8 " if d.converted else "skip"
            why = "" if d.converted else f"  ({d.reason})"
            bias = "+bias" if d.has_bias else ""
            if d.weight_shape:  # unmatched: the parameter itself (a module may hold several), its whole shape
                name, dims = d.weight, d.weight_shape
            else:
                name, dims = d.module or d.weight, (d.out_features, d.in_features)
            shape = "x".join(map(str, dims))
            lines.append(f"  [{status}] {name:<48} {d.pattern:<9} [{shape}]{bias}{why}")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
